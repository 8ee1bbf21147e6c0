// gemv_chunk.cuh: the inner step of the decode GEMVs (matmul_cuda.cu's kernel and the variants
// bench_decode_gemv measures against it): one 16-byte chunk of k for R weight rows and up to M
// activation rows, x rounded to bf16 as cuBLAS's input would be, fp32 accumulation.
// Invariants: chunk c covers k elements [8c, 8c + 8); x rows are k apart and 16-byte aligned; x is
// read through L2 (ld.global.cg), never the read-only path (__ldg): under programmatic dependent
// launch (pdl.cuh) the kernel that writes x may still run when this one starts, and a read-only
// load may then be served stale data or be scheduled before the dependency wait.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/bf16_device.cuh"

namespace freekv::cuda {

/// acc[r][i] += xr . (the 8 bf16 of wv[r]) for every r < R, in element order.
template <int M, int R>
__device__ __forceinline__ void chunk_rows(const uint4 (&wv)[R], const float (&xr)[8], int i, float (&acc)[R][M]) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const uint32_t parts[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
        float sum = acc[r][i];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            sum = fmaf(__uint_as_float(parts[e] << 16), xr[2 * e], sum);
            sum = fmaf(__uint_as_float(parts[e] & 0xffff0000u), xr[2 * e + 1], sum);
        }
        acc[r][i] = sum;
    }
}

/// acc[r][i] += bf16(x[i, 8c .. 8c + 8)) . (the 8 bf16 of wv[r]) for r < R and i < m (<= M).
template <int M, int R>
__device__ __forceinline__ void gemv_chunk(const uint4 (&wv)[R], const float* __restrict__ x, int m, int64_t k, int64_t c,
                                           float (&acc)[R][M]) {
#pragma unroll
    for (int i = 0; i < M; ++i) {
        if (i >= m) break;
        const float4 a = __ldcg(reinterpret_cast<const float4*>(x + i * k) + 2 * c);
        const float4 b = __ldcg(reinterpret_cast<const float4*>(x + i * k) + 2 * c + 1);
        const float xs[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
        float xr[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) xr[e] = __bfloat162float(__float2bfloat16_rn(xs[e]));
        chunk_rows<M, R>(wv, xr, i, acc);
    }
}

/// The same with x already in bf16 (x_bf16[i, 8c .. 8c + 8) = bf16(x[i, ..]), as the decode step's
/// kernels write it): one 16-byte load per row and no rounding; the same products, bit for bit.
template <int M, int R>
__device__ __forceinline__ void gemv_chunk(const uint4 (&wv)[R], const uint16_t* __restrict__ x, int m, int64_t k, int64_t c,
                                           float (&acc)[R][M]) {
#pragma unroll
    for (int i = 0; i < M; ++i) {
        if (i >= m) break;
        float xr[8];
        unpack_bf16x8(__ldcg(reinterpret_cast<const uint4*>(x + i * k) + c), xr);
        chunk_rows<M, R>(wv, xr, i, acc);
    }
}

}  // namespace freekv::cuda
