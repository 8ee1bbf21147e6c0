// rank_collective.h: what one tensor-parallel rank's forward needs from its peers (parallel/tp_plan.h
// says how the model is split): a sum of every rank's partial products and the concatenation of
// every rank's logit columns. The model knows only this seam; parallel/host_collective.h implements
// it for ranks that are threads of one process (the GPUs' will be NCCL's).
// Invariants: every rank calls the same collectives in the same order with the same sizes; each
// call returns the same bits on every rank; a call that cannot complete (a peer failed) throws.
#pragma once

#include <cstdint>

namespace freekv {

class RankCollective {
public:
    virtual ~RankCollective() = default;
    /// data[0, n) of every rank becomes the sum over the ranks, added in rank order.
    virtual void all_reduce_sum(float* data, int64_t n) = 0;
    /// out: [rows][total_cols], on every rank: columns [col0, col0 + cols) of each row from the rank
    /// whose part ([rows][cols]) they are; the ranks' column ranges tile total_cols.
    virtual void gather_columns(const float* part, int64_t rows, int64_t col0, int64_t cols, float* out,
                                int64_t total_cols) = 0;
};

/// A rank's place in a tensor-parallel forward: its peers and the vocabulary rows it holds.
struct TensorParallelRank {
    RankCollective* peers = nullptr;
    int64_t vocab_begin = 0;  // the rank's first row of the embedding table and LM head
    int64_t n_vocab = 0;      // the whole vocabulary (the logits' width)
};

}  // namespace freekv
