// kv_session.cpp: see kv_session.h.
#include "engine/kv_session.h"

#include "core/error.h"
#include "engine/sampler.h"

namespace freekv {

KvSession::KvSession(const ModelConfig& c, const KvModeConfig& mode, int64_t max_tokens,
                     std::shared_ptr<const gpu::GpuWeights> gpu)
    : full_mode_(mode.mode == KvMode::kFull), max_tokens_(max_tokens) {
    if (gpu) {
        gpu_ = std::make_unique<gpu::GpuEngine>(std::move(gpu), mode, 1, max_tokens);
        seq_ = gpu_->add_sequence();
    } else if (mode.mode == KvMode::kFull) {
        cache_ = std::make_unique<PagedKvCache>(c.n_layer, c.n_head_kv, c.head_dim, mode.page_size,
                                                (max_tokens + mode.page_size - 1) / mode.page_size);
        full_ = std::make_unique<FullAttentionKv>(*cache_, c.n_head);
        seq_ = cache_->add_sequence();
    } else {
        retrieval_ = make_retrieval_kv(c, mode, 1, max_tokens);
        seq_ = retrieval_->add_sequence(max_tokens);
    }
}

SequenceSpan KvSession::next_span(int64_t n) const {
    FREEKV_CHECK(n > 0, "forward of no tokens");
    if (n_tokens_ + n > max_tokens_)
        FREEKV_FAIL("the sequence would hold {} tokens, more than the context of {} (-c/--ctx-size)", n_tokens_ + n,
                    max_tokens_);
    return {seq_, n_tokens_, n, 0};
}

void KvSession::forward(const LlamaModel& model, std::span<const int32_t> tokens, std::vector<float>& logits) {
    const auto n = static_cast<int64_t>(tokens.size());
    const SequenceSpan span = next_span(n);
    const int64_t last = n - 1;
    if (gpu_) {
        gpu_->forward(tokens, std::span(&span, 1), std::span(&last, 1), logits);
        n_tokens_ += n;
        return;
    }
    AttentionKv& kv = full_ ? static_cast<AttentionKv&>(*full_) : static_cast<AttentionKv&>(*retrieval_);
    model.forward_batch(tokens, std::span(&span, 1), kv, std::span(&last, 1), logits);
    n_tokens_ += n;
}

void KvSession::forward_top(const LlamaModel& model, std::span<const int32_t> tokens, int32_t k, std::vector<int32_t>& ids,
                            std::vector<float>& values) {
    if (gpu_ && k <= gpu::kMaxDeviceTopK) {
        const auto n = static_cast<int64_t>(tokens.size());
        const SequenceSpan span = next_span(n);
        const int64_t last = n - 1;
        gpu_->forward_top(tokens, std::span(&span, 1), std::span(&last, 1), k, ids, values);
        n_tokens_ += n;
        return;
    }
    forward(model, tokens, logits_);
    Sampler::top_candidates(logits_, k, ids, values);
}

KvStats KvSession::stats() {
    if (gpu_) return full_mode_ ? KvStats{} : gpu_->stats();
    return retrieval_ ? retrieval_->stats() : KvStats{};
}

}  // namespace freekv
