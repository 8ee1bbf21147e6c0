// gpu_rank.h: a GpuEngine as one rank of a tensor-parallel group (parallel/tp_plan.h), the GPU twin
// of model/rank_collective.h: the engine holds a shard's weights (its KV heads, feed-forward and
// vocabulary slices) and sums the embedding, o and down products with its peers on its main stream;
// its logits are its vocabulary slice's (the runner puts the slices together).
// Invariants: every rank calls all_reduce_sum in the same order with the same sizes; every rank
// gets the same bits; a sum that is not capturable keeps the engine's decode out of CUDA graphs.
#pragma once

#include <cstdint>

namespace freekv::gpu {

class DeviceCollective {
public:
    virtual ~DeviceCollective() = default;
    /// data[0, n) in this rank's device memory becomes the sum over the ranks, ordered on `stream`
    /// (a cudaStream_t of this rank's GPU).
    virtual void all_reduce_sum(float* data, int64_t n, void* stream) = 0;
    /// Whether all_reduce_sum may be captured into a CUDA graph (NCCL's can; one staged through
    /// host memory cannot).
    virtual bool capturable() const = 0;
};

struct GpuRank {
    DeviceCollective* peers = nullptr;  // null: the whole model
    int rank = 0;
    int64_t vocab_begin = 0;  // the rank's first row of the embedding table and LM head
    int64_t n_vocab = 0;      // the whole vocabulary (the ids the engine is given)
};

}  // namespace freekv::gpu
