// tp_shard.h: one rank's weights under a TpPlan: row slices of q/k/v (and their biases), gate/up,
// the embedding table and the LM head; column slices of o and down; the norms whole.
// Invariants: row slices are views into the source (no copy); column slices are copied into the
// shard's own buffers in the source dtype (block-quantized sources are converted to f32 first);
// the shard's weights have exactly the shapes LlamaWeights::bind checks for tp_rank_config.
#pragma once

#include <cstdint>
#include <vector>

#include "model/llama_weights.h"
#include "parallel/tp_plan.h"

namespace freekv {

struct TpShard {
    ModelConfig config;    // tp_rank_config of the rank
    LlamaWeights weights;  // views into the source or into `owned`
    std::vector<std::vector<uint8_t>> owned;
};

/// The shard of `weights` (of `config`) that `rank` holds. The source must outlive the shard.
TpShard shard_llama_weights(const LlamaWeights& weights, const ModelConfig& config, const TpRank& rank);

}  // namespace freekv
