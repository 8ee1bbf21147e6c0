// retrieval_kv.h: the AttentionKv of every offloading KV mode (budget-only, streaming, quest,
// arkvale, freekv): the decode step of design doc 3.9 on the CPU backend.
// Who does what: KvManager owns the bytes and maps; retrieval/selection.h scores and plans; the
// TransferEngine moves blocks (corrective and ArkVale-style recall synchronously, FreeKV's
// speculative recall on its worker); this class orders those steps.
// Invariants:
//   - a span with one token on a sequence that already holds tokens is a decode step; any other
//     span is (a chunk of) prefill, with dense causal attention over the whole history;
//   - at step t, layer l, the background work of (t-1, l) has landed before the correction test
//     reads the maps and before attention reads the slots;
//   - attention sets follow design doc 3.6/3.7: flagged (or forced) heads attend to Sel_t, the
//     others to Sel_{t-1}; the page that left the window this step is not attended by unflagged
//     heads.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <random>
#include <vector>

#include "engine/kv_mode.h"
#include "engine/step_plan.h"
#include "engine/kv_stats.h"
#include "kv/kv_manager.h"
#include "model/attention_kv.h"
#include "model/model_config.h"
#include "transfer/transfer_engine.h"

namespace freekv {

/// What one KV head attended to at one sparse (step, layer, sequence); tests compare these
/// attention sets with an eager simulation of design doc 3.6/3.7.
struct AttendEvent {
    int64_t step = 0, il = 0;
    int32_t seq = 0;
    int64_t ikv = 0;
    int64_t n_pages = 0;                // pages of the sequence at this step
    bool flagged = false;               // selected with this step's query (corrected or forced)
    const float* q = nullptr;           // [group][head_dim]: this step's query heads of the KV head
    std::vector<int32_t> middle_pages;  // pages in its middle slots, ascending
};
using AttendObserver = std::function<void(const AttendEvent&)>;

class RetrievalKv : public AttentionKv {
public:
    RetrievalKv(const ModelConfig& model, const KvModeConfig& mode, int64_t max_batch, int64_t max_tokens);
    ~RetrievalKv() override;

    /// Admits a sequence of up to max_tokens (prompt + generation); returns its id.
    int32_t add_sequence(int64_t max_tokens);
    void remove_sequence(int32_t seq);

    void begin_forward(std::span<const SequenceSpan> spans) override;
    void attend(int64_t il, std::span<const SequenceSpan> spans, const float* q, const float* k, const float* v,
                float* out) override;
    void end_forward(std::span<const SequenceSpan> spans) override;

    /// Waits for background work and returns the counters.
    KvStats stats();
    void set_observer(AttendObserver observer) { observer_ = std::move(observer); }
    const KvManager& kv() const { return *kv_; }
    const KvModeConfig& mode() const { return mode_; }
    /// The plan of the last forward's decode spans, in span order (engine/step_plan.h).
    const std::vector<RowPlan>& last_decode_plan() const { return last_plan_; }

private:
    struct SeqState {
        bool live = false;
        int64_t n_tokens = 0;      // committed before the current forward
        int64_t n_queries = 0;     // forwards that stored a query (parity of the query ring)
        bool forced = false;       // the next decode step is forced-synchronous
        bool decoding = false;     // this forward is a decode step for it
        RowPlan plan;              // this decode step's plan (when decoding)
    };
    struct Background {            // unflagged heads of one sparse (seq, layer) to select after attention
        int32_t seq;
        int64_t n_pages;
        const float* q;            // [n_head][head_dim] in the query ring
        std::vector<int32_t> heads;
    };

    void page_boundary(int32_t seq, const PlannedBoundary& b);
    void prefill_layer(int64_t il, const SequenceSpan& span, const float* q, const float* k, const float* v, float* out);
    void decode_layer(int64_t il, const SequenceSpan& span, const float* q, const float* k, const float* v, float* out,
                      std::vector<Background>& background);
    /// Selection of one KV head with query q ([n_head][head_dim]) over the candidates of n_pages,
    /// planned against its resident middle set.
    void select_head(int64_t il, int32_t seq, int64_t ikv, const float* q, int64_t n_pages, std::vector<RecallJob>& jobs) const;
    void record_mass_recall(int64_t il, int32_t seq, const float* q, int64_t n_tokens);
    bool speculative() const { return mode_.mode == KvMode::kFreekv && mode_.spec_retrieval; }

    ModelConfig model_;
    KvModeConfig mode_;
    KvBudget budget_;
    SummaryKind summary_kind_;
    GroupAgg aggregation_;
    std::unique_ptr<KvManager> kv_;
    std::unique_ptr<TransferEngine> transfer_;
    std::vector<SeqState> seqs_;
    std::vector<RowPlan> last_plan_;
    std::vector<int32_t> identity_slots_;       // 0 .. n_slots - 1
    std::vector<float> history_k_, history_v_;  // prefill scratch [T][n_head_kv][head_dim]
    // [n_layer][n_head_kv] recall counts; the background ones are written by the transfer worker.
    std::vector<int64_t> recalled_sync_;
    std::unique_ptr<std::atomic<int64_t>[]> recalled_background_;
    int64_t step_ = 0;
    KvStats stats_;
    std::mt19937_64 force_rng_{1234};  // --force-corr-rate draws
    AttendObserver observer_;
};

/// Creates the AttentionKv for a mode other than full (which uses FullAttentionKv).
std::unique_ptr<RetrievalKv> make_retrieval_kv(const ModelConfig& model, const KvModeConfig& mode, int64_t max_batch,
                                               int64_t max_tokens);

}  // namespace freekv
