// tp_plan.h: how tensor parallelism (Megatron style) splits a Llama-family model over N ranks: each
// rank owns whole KV heads with the query heads of their groups (column-parallel q/k/v, row-parallel
// o), a range of the feed-forward width (column-parallel gate/up, row-parallel down) and a range of
// the vocabulary (the embedding and LM head rows).
// Invariants: every range list covers its dimension exactly once, in rank order; KV heads split
// evenly (n_head_kv % N == 0); the feed-forward width and the vocabulary split as evenly as units of
// kTpAlign allow (so a rank's row of a column slice stays 16-byte aligned in bf16), the last rank
// taking the remainder; N = 1 is one rank owning everything.
#pragma once

#include <cstdint>
#include <vector>

#include "model/model_config.h"

namespace freekv {

/// Elements per unit of the feed-forward and vocabulary splits.
inline constexpr int64_t kTpAlign = 8;

struct TpRange {
    int64_t begin = 0, count = 0;
    int64_t end() const { return begin + count; }
};

struct TpRank {
    int rank = 0;
    TpRange kv_heads, q_heads, ff, vocab;
};

struct TpPlan {
    int n_ranks = 1;
    std::vector<TpRank> ranks;
};

/// The split of `config` over n_ranks; throws Error (naming --tensor-parallel and what would work)
/// when the model's KV heads do not divide among the ranks or a rank would get too few
/// feed-forward or vocabulary rows.
TpPlan make_tp_plan(const ModelConfig& config, int n_ranks);

/// The config of one rank's shard: its heads, feed-forward width and vocabulary rows.
ModelConfig tp_rank_config(const ModelConfig& config, const TpRank& rank);

/// Bytes of the weights a rank holds on its GPU at elem_bytes per element (2: bf16, 4: f32): its
/// slices of every matrix and bias, the embedding and LM head rows of its vocabulary (both, tied or
/// not, as the GPU engine uploads them), and every norm whole. For one rank: the whole model's.
int64_t tp_weight_bytes(const ModelConfig& config, const TpRank& rank, int64_t elem_bytes);

}  // namespace freekv
