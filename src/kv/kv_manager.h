// kv_manager.h: owns every byte of KV state of the retrieval modes, laid out as the CUDA backend
// will lay it out (design doc 4.1, 4.2), in host memory (fp32 on the CPU backend):
//   budget cache  [L][batch][n_slots][2 (K, V)][page_size][n_head_kv][head_dim]   NHD slots
//   CPU store     per CPU page [L][n_head_kv][2][page_size][head_dim]             HND blocks
//                 (fp32, or with store_code 8-bit codes plus per-channel K / per-token V scales)
//   summaries     [L][batch][n_head_kv][max_pages][2 (U, L)][head_dim]
//   slot maps     page_of_slot [L][batch][n_head_kv][n_slots], slot_of_page [L][batch][n_head_kv][max_pages]
//   query ring    [L][batch][2][n_head][head_dim]  post-RoPE queries of steps t and t-1
// It decides nothing: policies choose pages, the transfer engine moves bytes; both go through the
// accessors here.
// Invariants:
//   - a sequence's CPU pages are reserved at admission (can_admit/admit) and freed by release();
//   - in the sparse regime the middle slots of each (layer, seq, KV head) hold n_select distinct
//     candidate pages and page_of_slot / slot_of_page are inverse on them (check_invariants());
//   - block(seq, page, il, ikv) is valid once page has been offloaded.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "backend/ops.h"
#include "kv/kv_budget.h"
#include "kv/recall_plan.h"

namespace freekv {

struct KvManagerShape {
    int64_t n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
    int64_t max_batch = 1;
    int64_t max_tokens = 0;       // per sequence (context length)
    int64_t cpu_store_pages = 0;  // CPU pages in the store (0 = max_batch * max_pages)
    std::optional<KvCode> store_code;  // 8-bit store (int8 or fp8 codes with scales); fp32 when unset
};

class KvManager {
public:
    KvManager(const KvManagerShape& shape, const KvBudget& budget);

    const KvBudget& budget() const { return budget_; }
    const KvManagerShape& shape() const { return shape_; }
    int64_t max_pages() const { return max_pages_; }

    // ---- admission ----
    /// Whether a sequence of up to n_tokens fits in a free batch slot and the CPU store.
    bool can_admit(int64_t n_tokens) const;
    /// Reserves CPU pages for up to n_tokens and returns the batch index.
    int32_t admit(int64_t n_tokens);
    void release(int32_t seq);

    // ---- per-sequence state ----
    int64_t n_tokens(int32_t seq) const { return seqs_[static_cast<size_t>(seq)].n_tokens; }
    void set_n_tokens(int32_t seq, int64_t n) { seqs_[static_cast<size_t>(seq)].n_tokens = n; }
    int64_t n_pages(int32_t seq) const { return (n_tokens(seq) + budget_.page_size - 1) / budget_.page_size; }

    // ---- budget cache ----
    float* slot_k(int64_t il, int32_t seq, int64_t slot) { return budget_cache_.data() + slot_offset(il, seq, slot); }
    float* slot_v(int64_t il, int32_t seq, int64_t slot) { return slot_k(il, seq, slot) + page_floats(); }
    const float* slot_k(int64_t il, int32_t seq, int64_t slot) const { return budget_cache_.data() + slot_offset(il, seq, slot); }
    const float* slot_v(int64_t il, int32_t seq, int64_t slot) const { return slot_k(il, seq, slot) + page_floats(); }
    /// Slots of (il, seq) as a view; `slot_list` lists the slots to attend (shared by all KV heads).
    PagedKvView slot_view(int64_t il, int32_t seq, const int32_t* slot_list, int64_t n_list, int64_t last_len) const;
    /// Copies all of slot `from` to slot `to` (rotation).
    void copy_slot(int64_t il, int32_t seq, int64_t from, int64_t to);

    // ---- CPU store (HND) ----
    /// The block of (seq, logical page, layer, KV head) as fp32, [2][page_size][head_dim] (K rows,
    /// then V rows), into dst: a copy, or decoded from the 8-bit store. Thread-safe against writes
    /// of other blocks.
    void read_block(int32_t seq, int64_t page, int64_t il, int64_t ikv, float* dst) const;
    /// Stores an fp32 block (encoded when the store is 8-bit).
    void write_block(int32_t seq, int64_t page, int64_t il, int64_t ikv, const float* src);
    /// NHD slot -> HND blocks of every KV head of `page` (offload of a complete page).
    void offload(int64_t il, int32_t seq, int64_t slot, int64_t page);
    /// HND block -> the KV head's slice of a slot (one recall job, synchronously).
    void recall_now(int64_t il, const RecallJob& job);
    /// Writes an HND block ([2][page_size][head_dim] at src) into the job's slot, head ikv (NHD).
    void scatter_block(int64_t il, const RecallJob& job, const float* src);
    /// Floats of one block as fp32 (what read_block writes).
    int64_t block_floats() const { return 2 * budget_.page_size * shape_.head_dim; }
    /// Bytes of one block as fp32 (the unit the transfer counters count).
    int64_t block_bytes() const { return block_floats() * static_cast<int64_t>(sizeof(float)); }
    /// Bytes one block takes in the store: fp32, or 8-bit codes plus their fp32 scales.
    int64_t stored_block_bytes() const;

    // ---- summaries ----
    float* summary(int64_t il, int32_t seq, int64_t ikv, int64_t page) {
        return summaries_.data() + summary_offset(il, seq, ikv, page);
    }
    const float* summary(int64_t il, int32_t seq, int64_t ikv, int64_t page) const {
        return summaries_.data() + summary_offset(il, seq, ikv, page);
    }
    /// [n_pages][2][head_dim] of one (il, seq, ikv), contiguous.
    const float* summaries_of(int64_t il, int32_t seq, int64_t ikv) const { return summary(il, seq, ikv, 0); }

    // ---- residency maps ----
    int32_t& page_of_slot(int64_t il, int32_t seq, int64_t ikv, int64_t slot) {
        return page_of_slot_[static_cast<size_t>(((il * shape_.max_batch + seq) * shape_.n_head_kv + ikv) * budget_.n_budget_page + slot)];
    }
    int32_t& slot_of_page(int64_t il, int32_t seq, int64_t ikv, int64_t page) {
        return slot_of_page_[static_cast<size_t>(((il * shape_.max_batch + seq) * shape_.n_head_kv + ikv) * max_pages_ + page)];
    }
    int32_t page_of_slot(int64_t il, int32_t seq, int64_t ikv, int64_t slot) const {
        return const_cast<KvManager*>(this)->page_of_slot(il, seq, ikv, slot);
    }
    int32_t slot_of_page(int64_t il, int32_t seq, int64_t ikv, int64_t page) const {
        return const_cast<KvManager*>(this)->slot_of_page(il, seq, ikv, page);
    }
    /// Marks `page` resident in middle `slot` for KV head ikv (or, ikv < 0, for every head).
    void place(int64_t il, int32_t seq, int64_t ikv, int64_t page, int64_t slot);
    /// Commits a plan's map updates: each job's page becomes resident in its slot and the page that
    /// slot held becomes non-resident. Data moves separately.
    void apply_maps(const RecallPlan& plan);

    // ---- query ring ----
    float* query(int64_t il, int32_t seq, int64_t parity) {
        return queries_.data() + ((il * shape_.max_batch + seq) * 2 + parity) * shape_.n_head * shape_.head_dim;
    }

    /// Throws Error describing the first violated invariant of a sparse (il, seq) (design doc T6),
    /// including middle slots whose data differs from the CPU block of the page the maps name
    /// (a stale or missing recall).
    void check_invariants(int64_t il, int32_t seq) const;

private:
    struct Sequence {
        bool live = false;
        int64_t n_tokens = 0;
        std::vector<int32_t> cpu_pages;  // logical page -> CPU page id
    };
    int64_t page_floats() const { return budget_.page_size * shape_.n_head_kv * shape_.head_dim; }
    int64_t slot_offset(int64_t il, int32_t seq, int64_t slot) const {
        return ((il * shape_.max_batch + seq) * budget_.n_budget_page + slot) * 2 * page_floats();
    }
    int64_t summary_offset(int64_t il, int32_t seq, int64_t ikv, int64_t page) const {
        return (((il * shape_.max_batch + seq) * shape_.n_head_kv + ikv) * max_pages_ + page) * 2 * shape_.head_dim;
    }
    int64_t cpu_page_floats() const { return shape_.n_layer * 2 * page_floats(); }  // [L][n_kv][2][p][d]
    // Index of a block among all blocks of the store: (cpu page, layer, KV head).
    int64_t block_index(int32_t seq, int64_t page, int64_t il, int64_t ikv) const;

    KvManagerShape shape_;
    KvBudget budget_;
    int64_t max_pages_;
    std::vector<float> budget_cache_;
    std::vector<float> cpu_store_;        // fp32 store: [cpu page][L][n_kv][2][p][d]
    std::vector<uint8_t> store_codes_;    // 8-bit store: the same order, one byte per element
    std::vector<float> store_scales_;     // 8-bit store: [block][kv_block_scales] beside the codes
    std::vector<int32_t> free_cpu_pages_;
    std::vector<float> summaries_;
    std::vector<int32_t> page_of_slot_, slot_of_page_;
    std::vector<float> queries_;
    std::vector<Sequence> seqs_;
};

}  // namespace freekv
