// kv_session.cpp: see kv_session.h.
#include "engine/kv_session.h"

#include "core/error.h"

namespace freekv {

KvSession::KvSession(const LoadedModel& model, const KvModeConfig& mode, int64_t max_tokens,
                     std::shared_ptr<const gpu::GpuWeights> gpu, int tensor_parallel, const GpuRanks& gpu_ranks)
    : runner_(make_model_runner(model, mode, 1, max_tokens, std::move(gpu), {}, {}, tensor_parallel, gpu_ranks)),
      full_mode_(mode.mode == KvMode::kFull) {
    seq_ = runner_->add_sequence();
}

SequenceSpan KvSession::next_span(int64_t n) const {
    FREEKV_CHECK(n > 0, "forward of no tokens");
    if (n_tokens_ + n > max_tokens())
        FREEKV_FAIL("the sequence would hold {} tokens, more than the context of {} (-c/--ctx-size)", n_tokens_ + n,
                    max_tokens());
    return {seq_, n_tokens_, n, 0};
}

void KvSession::forward(std::span<const int32_t> tokens, std::vector<float>& logits) {
    const auto n = static_cast<int64_t>(tokens.size());
    const SequenceSpan span = next_span(n);
    const int64_t last = n - 1;
    runner_->forward(tokens, std::span(&span, 1), std::span(&last, 1), logits);
    n_tokens_ += n;
}

void KvSession::forward_top(std::span<const int32_t> tokens, int32_t k, std::vector<int32_t>& ids,
                            std::vector<float>& values) {
    const auto n = static_cast<int64_t>(tokens.size());
    const SequenceSpan span = next_span(n);
    const int64_t last = n - 1;
    const std::vector<FailedSpan> failed = runner_->forward_top(tokens, std::span(&span, 1), std::span(&last, 1), k, ids, values);
    if (!failed.empty()) FREEKV_FAIL("{}", failed.front().error);
    n_tokens_ += n;
}

}  // namespace freekv
