// flash_prefill_device.cuh: device helpers both flash prefill kernels (flash_prefill.cu, mma.sync;
// flash_prefill_wgmma.cu, wgmma) share beside ptx_ops.cuh: 2^x on the special-function unit and
// the store of one output pair in the output's dtype.
// Invariant: the output store rounds exactly as to_bf16 does (round to nearest even), so out_bf16
// is the fp32 output rounded once.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/flash_prefill.cuh"
#include "backend/cuda/ptx_ops.cuh"

namespace freekv::cuda::flash {

// 2^x on the special-function unit (one instruction; exp2f adds range fix-ups around it). -inf -> 0.
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Output elements at, at + 1 (an even element offset): bf16 into out_bf16 when set, else fp32 into out.
__device__ __forceinline__ void store_output_pair(const FlashPrefillArgs& a, int64_t at, float lo, float hi) {
    if (a.out_bf16 != nullptr)
        *reinterpret_cast<uint32_t*>(a.out_bf16 + at) = pack_bf16x2(lo, hi);
    else
        *reinterpret_cast<float2*>(a.out + at) = make_float2(lo, hi);
}

}  // namespace freekv::cuda::flash
