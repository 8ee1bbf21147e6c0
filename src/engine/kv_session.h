// kv_session.h: one sequence decoded under one KV mode, for the tools that drive a sequence token
// by token themselves (perplexity and needle feed known tokens; tests compare backends): a
// ModelRunner of one slot and the sequence in it, on the GPU when GPU weights are given.
// Invariant: forward() feeds tokens at positions n_tokens() .. n_tokens() + size - 1; on the GPU
// the first forward is the whole prompt and later ones one token each.
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "engine/model_runner.h"

namespace freekv {

class KvSession {
public:
    /// tensor_parallel > 1: the model split over that many ranks, on gpu_ranks' GPUs when it names
    /// them (make_model_runner).
    KvSession(const LoadedModel& model, const KvModeConfig& mode, int64_t max_tokens,
              std::shared_ptr<const gpu::GpuWeights> gpu = nullptr, int tensor_parallel = 1, const GpuRanks& gpu_ranks = {});

    /// Runs `tokens` through the model; logits: [n_vocab] of the last token.
    void forward(std::span<const int32_t> tokens, std::vector<float>& logits);
    /// Runs `tokens`; ids, values: the k largest logits of the last token in Sampler::top_candidates'
    /// order (on the GPU chosen on the device when k <= gpu::kMaxDeviceTopK).
    void forward_top(std::span<const int32_t> tokens, int32_t k, std::vector<int32_t>& ids, std::vector<float>& values);
    int64_t n_tokens() const { return n_tokens_; }
    int64_t max_tokens() const { return runner_->max_tokens(); }
    /// Counters of the retrieval modes (empty for full).
    KvStats stats() { return runner_->stats(); }
    bool on_gpu() const { return runner_->on_gpu(); }
    /// Whether stats() carries retrieval counters (any mode but full).
    bool has_stats() const { return !full_mode_; }

private:
    /// The span of the next n tokens; Error when they do not fit the context.
    SequenceSpan next_span(int64_t n) const;
    std::unique_ptr<ModelRunner> runner_;
    bool full_mode_ = false;
    int32_t seq_ = 0;
    int64_t n_tokens_ = 0;
};

}  // namespace freekv
