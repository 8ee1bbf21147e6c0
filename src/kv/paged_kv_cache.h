// paged_kv_cache.h: full-attention KV storage in pages of page_size tokens, for every layer and
// sequence, in host memory (fp32). The retrieval modes (budget cache + CPU store) build on the
// same page arithmetic later; this class is the `full` mode's storage.
// Layout: pages_[page_id] is [n_layer][2 (K, V)][page_size][n_head_kv][head_dim] f32 (NHD).
// Invariants:
//   - a sequence's logical page j (positions [j*page_size, (j+1)*page_size)) lives in
//     page_table(seq)[j]; a page id belongs to at most one sequence;
//   - positions [0, n_tokens(seq)) have been written in every layer once a forward pass ends;
//   - reserve() is the only allocator and fails (can_reserve() == false) without changing state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "backend/ops.h"

namespace freekv {

class PagedKvCache {
public:
    PagedKvCache(int64_t n_layer, int64_t n_head_kv, int64_t head_dim, int64_t page_size, int64_t n_page_capacity);

    /// Creates an empty sequence and returns its id.
    int32_t add_sequence();
    /// Frees a sequence's pages; its id may be reused.
    void remove_sequence(int32_t seq);

    /// Whether `n_new` more tokens fit for `seq`.
    bool can_reserve(int32_t seq, int64_t n_new) const;
    /// Makes room for `n_new` more tokens (allocating pages) and advances n_tokens(seq).
    void reserve(int32_t seq, int64_t n_new);

    /// Writes one token's K and V ([n_head_kv, head_dim] each) at `pos` of layer il.
    void write(int64_t il, int32_t seq, int64_t pos, const float* k, const float* v);
    /// Pointer to K (or V) of one token: [n_head_kv, head_dim] f32.
    const float* key(int64_t il, int32_t seq, int64_t pos) const { return token_ptr(il, seq, pos, 0); }
    const float* value(int64_t il, int32_t seq, int64_t pos) const { return token_ptr(il, seq, pos, 1); }

    int64_t n_tokens(int32_t seq) const { return seqs_.at(static_cast<size_t>(seq)).n_tokens; }
    int64_t page_size() const { return page_size_; }
    int64_t n_head_kv() const { return n_head_kv_; }
    int64_t head_dim() const { return head_dim_; }
    int64_t n_free_pages() const { return static_cast<int64_t>(free_pages_.size()); }
    int64_t capacity_tokens() const { return n_page_capacity_ * page_size_; }
    const std::vector<int32_t>& page_table(int32_t seq) const { return seqs_.at(static_cast<size_t>(seq)).pages; }
    /// The sequence's K/V in layer il as a view (valid until the next reserve()).
    PagedKvView view(int64_t il, int32_t seq) const;

private:
    struct Sequence {
        bool live = false;
        int64_t n_tokens = 0;
        std::vector<int32_t> pages;  // logical page -> page id
    };
    float* token_ptr(int64_t il, int32_t seq, int64_t pos, int kv) const;

    int64_t n_head_kv_, head_dim_, page_size_, n_page_capacity_;
    int64_t page_floats_;             // n_layer * 2 * page_size * n_head_kv * head_dim
    std::vector<float> storage_;      // [n_page_capacity][page_floats]
    std::vector<int32_t> free_pages_; // stack of free page ids
    std::vector<Sequence> seqs_;
};

}  // namespace freekv
