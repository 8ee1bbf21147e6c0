// llama_model.h: the Llama-family forward pass on the CPU (embeddings, RMSNorm, q/k/v with
// optional bias, RoPE, GQA attention over the paged KV cache, o_proj, SwiGLU MLP, final norm,
// output head). Prefill and decode are the same call with n_tok >= 1.
// As one rank of a tensor-parallel group (set_tensor_parallel) it holds a shard (tp_shard.h) and
// sums the embedding, o and down products with its peers and gathers the logits' columns.
// Invariants: forward() appends exactly n_tok tokens to `seq` in every layer before attention of
// that layer reads them; positions are consecutive from kv.n_tokens(seq) at entry; logits are
// n_logits() wide (the whole vocabulary, also on a rank).
#pragma once

#include <span>
#include <vector>

#include "kv/full_attention_kv.h"
#include "kv/paged_kv_cache.h"
#include "model/attention_kv.h"
#include "model/llama_weights.h"
#include "model/model_config.h"
#include "model/rank_collective.h"

namespace freekv {

class LlamaModel {
public:
    LlamaModel(ModelConfig config, LlamaWeights weights, OpsImpl impl = OpsImpl::kCpu);

    /// Runs n_tok tokens of sequence `seq` through the model with full attention over `kv`.
    /// logits: [n_out, n_vocab] for the last n_out tokens (n_out <= n_tok; 0 = none).
    void forward(std::span<const int32_t> tokens, int32_t seq, PagedKvCache& kv, int64_t n_out,
                 std::vector<float>& logits) const;

    /// Runs a batch of spans (one per sequence; tokens concatenated in span order) through the
    /// model; `kv` stores K/V and computes attention. out_rows: batch indices of the tokens whose
    /// logits are wanted; logits: [out_rows.size(), n_vocab].
    void forward_batch(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans, AttentionKv& kv,
                       std::span<const int64_t> out_rows, std::vector<float>& logits) const;

    /// Makes this model (built from a rank's shard) one rank of a tensor-parallel forward: every
    /// rank's forward must then run at the same time, on its own thread.
    void set_tensor_parallel(const TensorParallelRank& rank);
    /// The logits' width: the whole vocabulary.
    int64_t n_logits() const { return tp_.peers != nullptr ? tp_.n_vocab : config_.n_vocab; }

    const ModelConfig& config() const { return config_; }
    const LlamaWeights& weights() const { return weights_; }
    OpsImpl impl() const { return impl_; }

private:
    ModelConfig config_;
    LlamaWeights weights_;
    OpsImpl impl_;
    std::vector<float> inv_freq_;  // [head_dim / 2]
    TensorParallelRank tp_;        // peers == nullptr: the whole model
};

}  // namespace freekv
