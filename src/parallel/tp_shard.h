// tp_shard.h: one rank's weights under a TpPlan: row slices of q/k/v (and their biases), gate/up,
// the embedding table and the LM head; column slices of o and down; the norms whole.
// Invariants: row slices are views into the source (no copy); column slices are copied into the
// shard's own buffers in the source dtype (block-quantized sources are converted to f32 first); a
// synthetic model's shard is made directly, never the whole model;
// the shard's weights have exactly the shapes LlamaWeights::bind checks for tp_rank_config.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "model/llama_weights.h"
#include "parallel/tp_plan.h"

namespace freekv {

struct TpShard {
    ModelConfig config;    // tp_rank_config of the rank
    LlamaWeights weights;  // views into the source, into `owned` or into `tensors`
    std::vector<std::vector<uint8_t>> owned;
    std::unique_ptr<TensorSource> tensors;  // a synthetic shard's own tensors
};

/// The shard of `weights` (of `config`) that `rank` holds. The source must outlive the shard.
TpShard shard_llama_weights(const LlamaWeights& weights, const ModelConfig& config, const TpRank& rank);

/// The shard of the synthetic model (synthetic_model.h) of `config` and `seed` that `rank` holds,
/// made without the rest of the model (a 70B shape's rank needs only its own share of host memory):
/// bit-identical to shard_llama_weights of the whole synthetic model.
TpShard make_synthetic_shard(const ModelConfig& config, uint64_t seed, const TpRank& rank);

}  // namespace freekv
