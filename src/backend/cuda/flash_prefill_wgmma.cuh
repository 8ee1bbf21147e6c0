// flash_prefill_wgmma.cuh: the Hopper (sm_90a, wgmma) kernel behind flash_prefill; callers use
// flash_prefill (flash_prefill.cuh), which picks this one where it is available.
// Invariants: flash_prefill.cuh's; head_dim 128 only; launched only on a compute-capability 9.0
// device (the cubin is built for sm_90a, which no other device loads).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/flash_prefill.cuh"

namespace freekv::cuda {

/// Whether the current device can run the wgmma kernel for this head_dim.
bool flash_prefill_wgmma_available(int64_t head_dim);
void flash_prefill_wgmma(const FlashPrefillArgs& a, cudaStream_t s);

}  // namespace freekv::cuda
