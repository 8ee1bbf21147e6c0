// kv_session.h: one sequence decoded under one KV mode: the AttentionKv that mode needs (full:
// a PagedKvCache with FullAttentionKv; any other mode: a RetrievalKv) plus the sequence in it.
// Used by generate, perplexity and needle so that every tool runs every mode the same way. With
// GPU weights the session runs on the GPU engine instead (one sequence, same modes).
// Invariant: forward() feeds tokens at positions n_tokens() .. n_tokens() + size - 1; on the GPU
// the first forward is the whole prompt and later ones one token each.
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "engine/kv_mode.h"
#include "engine/retrieval_kv.h"
#include "gpu/gpu_engine.h"
#include "kv/full_attention_kv.h"
#include "model/llama_model.h"

namespace freekv {

class KvSession {
public:
    KvSession(const ModelConfig& config, const KvModeConfig& mode, int64_t max_tokens,
              std::shared_ptr<const gpu::GpuWeights> gpu = nullptr);

    /// Runs `tokens` through the model; logits: [n_vocab] of the last token.
    void forward(const LlamaModel& model, std::span<const int32_t> tokens, std::vector<float>& logits);
    /// Runs `tokens`; ids, values: the k largest logits of the last token in Sampler::top_candidates'
    /// order. On the GPU (k <= gpu::kMaxDeviceTopK) they are chosen on the device and only they
    /// come back; otherwise from the full logits on the host.
    void forward_top(const LlamaModel& model, std::span<const int32_t> tokens, int32_t k, std::vector<int32_t>& ids,
                     std::vector<float>& values);
    int64_t n_tokens() const { return n_tokens_; }
    int64_t max_tokens() const { return max_tokens_; }
    /// Counters of the retrieval modes (empty for full).
    KvStats stats();
    RetrievalKv* retrieval() { return retrieval_.get(); }
    bool on_gpu() const { return gpu_ != nullptr; }
    /// Whether stats() carries retrieval counters (any mode but full).
    bool has_stats() const { return retrieval_ != nullptr || (gpu_ != nullptr && !full_mode_); }

private:
    /// The span of the next n tokens; Error when they do not fit the context.
    SequenceSpan next_span(int64_t n) const;
    std::unique_ptr<PagedKvCache> cache_;
    std::unique_ptr<FullAttentionKv> full_;
    std::unique_ptr<RetrievalKv> retrieval_;
    std::unique_ptr<gpu::GpuEngine> gpu_;
    std::vector<float> logits_;  // forward_top on the host
    bool full_mode_ = false;
    int32_t seq_ = 0;
    int64_t n_tokens_ = 0, max_tokens_ = 0;
};

}  // namespace freekv
