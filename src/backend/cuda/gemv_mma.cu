// gemv_mma.cu: the decode GEMV on the tensor cores, y[m, n] = bf16(x[m, :]) . w[n, :] (+ bias) for
// 1 <= m <= 8 and k % 32 == 0, one of the kernels the measured per-shape choice takes from
// (gemv_choice.cu). One mma.m16n8k16 (bf16 in, fp32 accumulate) takes 16 weight rows as A and the m
// activation rows, padded to 8 columns, as B. A dot product may visit k in any order, so each lane
// loads 16 contiguous bytes of each of its weight rows and of its activation row per 32-k chunk and
// feeds them to two mma's as if they were the fragment's k positions: the same permutation for A and
// B, so the operands need no shuffles and no shared memory. A warp takes MT tiles of 16 rows (one
// activation load feeds them all) and the block's 8 warps split k, kChunksInFlight chunks per lane
// in flight; the warps' fp32 tiles are added in warp order in shared memory (deterministic).
// Invariants: w rows and x rows 16-byte aligned (k % 32 == 0 and aligned bases); x read as bf16
// (x_bf16, as the decode step's kernels write it) or rounded to bf16 in registers (the same bits);
// under programmatic dependent launch only weights are read before grid_dependency_wait (pdl.cuh).
#include <cuda_bf16.h>

#include "backend/cuda/bf16_device.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops_cuda.cuh"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/ptx_ops.cuh"

namespace freekv::cuda {

namespace {

constexpr int kMmaWarps = 8;
constexpr int kChunksInFlight = 4;

// The lane's 8 activations of a chunk as 4 bf16 pairs: read as they are, or rounded from fp32. Read
// through L2, not the read-only path: x is the output of the kernel this one may overlap (pdl.cuh).
__device__ __forceinline__ uint4 load_x8(const uint16_t* x) { return __ldcg(reinterpret_cast<const uint4*>(x)); }
__device__ __forceinline__ uint4 load_x8(const float* x) {
    const float4 a = __ldcg(reinterpret_cast<const float4*>(x)), b = __ldcg(reinterpret_cast<const float4*>(x) + 1);
    return make_uint4(pack_bf16x2(a.x, a.y), pack_bf16x2(a.z, a.w), pack_bf16x2(b.x, b.y), pack_bf16x2(b.z, b.w));
}

template <int MT, class X>
__global__ void __launch_bounds__(kMmaWarps * 32) gemv_mma_kernel(const X* __restrict__ x, int m, const uint16_t* __restrict__ w,
                                                                  int64_t n, int64_t k, float* __restrict__ y,
                                                                  const uint16_t* __restrict__ bias, bool accumulate) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const int64_t row0 = static_cast<int64_t>(blockIdx.x) * 16 * MT;
    // Lane (g, c): rows g and g + 8 of each tile (A), activation row g (B column g), elements 8c..8c+7 of a chunk.
    const uint16_t* wrow[MT][2];
    bool wvalid[MT][2];
#pragma unroll
    for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int64_t r = row0 + 16 * t + g + 8 * h;
            wvalid[t][h] = r < n;
            wrow[t][h] = w + (r < n ? r : 0) * k + 8 * c;
        }
    const bool xvalid = g < m;
    const X* xrow = x + (xvalid ? g : 0) * k + 8 * c;
    const int64_t chunks = k / 32;
    float acc[MT][4];
#pragma unroll
    for (int t = 0; t < MT; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.0f;
    bool waited = false;
    for (int64_t c0 = warp; c0 < chunks; c0 += kMmaWarps * kChunksInFlight) {
        uint4 wv[kChunksInFlight][MT][2];
#pragma unroll
        for (int u = 0; u < kChunksInFlight; ++u) {
            const int64_t ch = c0 + static_cast<int64_t>(u) * kMmaWarps;
#pragma unroll
            for (int t = 0; t < MT; ++t)
#pragma unroll
                for (int h = 0; h < 2; ++h)
                    wv[u][t][h] = ch < chunks && wvalid[t][h] ? __ldg(reinterpret_cast<const uint4*>(wrow[t][h] + ch * 32))
                                                              : make_uint4(0, 0, 0, 0);
        }
        if (!waited) {
            grid_dependency_wait();  // x is the predecessor's output
            waited = true;
        }
        uint4 xv[kChunksInFlight];
#pragma unroll
        for (int u = 0; u < kChunksInFlight; ++u) {
            const int64_t ch = c0 + static_cast<int64_t>(u) * kMmaWarps;
            xv[u] = ch < chunks && xvalid ? load_x8(xrow + ch * 32) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < kChunksInFlight; ++u)
#pragma unroll
            for (int t = 0; t < MT; ++t) {
                // The first mma reads elements 8c..8c+3 as its k positions (2c, 2c+1, 2c+8, 2c+9), the second 8c+4..8c+7.
                const uint32_t lo[4] = {wv[u][t][0].x, wv[u][t][1].x, wv[u][t][0].y, wv[u][t][1].y};
                const uint32_t hi[4] = {wv[u][t][0].z, wv[u][t][1].z, wv[u][t][0].w, wv[u][t][1].w};
                mma_bf16(acc[t], lo, xv[u].x, xv[u].y);
                mma_bf16(acc[t], hi, xv[u].z, xv[u].w);
            }
    }
    if (!waited) grid_dependency_wait();  // a warp with no chunk still writes y after the predecessor
    // acc[t]: (row g, columns 2c, 2c + 1), (row g + 8, columns 2c, 2c + 1) of tile t. Sum over the warps.
    __shared__ float part[kMmaWarps][MT][4][32];
#pragma unroll
    for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) part[warp][t][i][lane] = acc[t][i];
    __syncthreads();
    for (int e = threadIdx.x; e < MT * 4 * 32; e += blockDim.x) {
        const int t = e / 128, i = (e / 32) % 4, l = e % 32;
        float s = 0.0f;
#pragma unroll
        for (int wi = 0; wi < kMmaWarps; ++wi) s += part[wi][t][i][l];
        const int col = 2 * (l % 4) + (i & 1);
        const int64_t row = row0 + 16 * t + l / 4 + (i < 2 ? 0 : 8);
        if (col < m && row < n) {
            float& out = y[col * n + row];
            out = accumulate ? out + s : s + (bias != nullptr ? bf16_to_float(bias[row]) : 0.0f);
        }
    }
}

template <int MT, class X>
void launch_mma(const X* x, int m, const uint16_t* w, int64_t n, int64_t k, float* y, const uint16_t* bias, bool acc, cudaStream_t s) {
    const dim3 grid(static_cast<unsigned>((n + 16 * MT - 1) / (16 * MT))), block(kMmaWarps * 32);
    launch_maybe_dependent(gemv_mma_kernel<MT, X>, grid, block, s, gemv_pdl(), x, m, w, n, k, y, bias, acc);
}

template <int MT>
void launch_mma_for(const float* x, const uint16_t* x_bf16, int m, const uint16_t* w, int64_t n, int64_t k, float* y,
                    const uint16_t* bias, bool acc, cudaStream_t s) {
    if (x_bf16 != nullptr) launch_mma<MT, uint16_t>(x_bf16, m, w, n, k, y, bias, acc, s);
    else launch_mma<MT, float>(x, m, w, n, k, y, bias, acc, s);
}

}  // namespace

void gemv_mma(const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k, float* y, const uint16_t* bias, void* stream,
              bool accumulate, int tiles, const uint16_t* x_bf16) {
    FREEKV_CHECK(m >= 1 && m <= 8 && k % 32 == 0, "gemv_mma: m = {} must be in [1, 8] and k = {} a multiple of 32", m, k);
    FREEKV_CHECK(!accumulate || bias == nullptr, "gemv_mma: a product added into y takes no bias");
    FREEKV_CHECK(tiles == 1 || tiles == 2, "gemv_mma: {} tiles of 16 rows per warp (1 and 2 are built)", tiles);
    FREEKV_CHECK(x_bf16 == nullptr || reinterpret_cast<uintptr_t>(x_bf16) % 16 == 0, "gemv_mma: x_bf16 must be 16-byte aligned");
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    const int mi = static_cast<int>(m);
    if (tiles == 1) launch_mma_for<1>(x, x_bf16, mi, w, n, k, y, bias, accumulate, s);
    else launch_mma_for<2>(x, x_bf16, mi, w, n, k, y, bias, accumulate, s);
}

}  // namespace freekv::cuda
