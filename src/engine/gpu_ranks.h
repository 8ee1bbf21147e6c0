// gpu_ranks.h: where tensor-parallel ranks run when they run on GPUs: one GPU per rank and the dtype
// of the shards' weights (each rank makes its own shard there; engine/gpu_tensor_parallel_runner.h).
// Invariant: empty devices means the ranks, if several, are CPU threads; otherwise devices holds
// exactly one entry per rank (the same GPU may repeat: those ranks share it, sums via host memory).
#pragma once

#include <vector>

#include "gpu/gpu_engine.h"

namespace freekv {

struct GpuRanks {
    std::vector<int> devices;
    gpu::GpuDtype dtype = gpu::GpuDtype::kBF16;
};

}  // namespace freekv
