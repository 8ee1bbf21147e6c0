// gemv_choice.cu: the decode GEMV kernels beside the engine's SIMT one, and the per-shape choice among
// them made once from a measurement on the weights themselves (see ops_cuda.cuh: GemvChoices).
// Invariants: every kernel computes y[m, n] = bf16(x[m, :]) . w[n, :] (+ bias) with fp32 accumulation
// (they differ only in summation order); a choice is measured over every matrix of its shape, in turn,
// so that the timed calls read HBM as the decode step does (a model whose weights fit the L2 is timed
// from the L2, as it runs); a kernel replaces the default only when it is at least kSwitchMargin faster.
#include <cuda_bf16.h>

#include <algorithm>
#include <random>
#include <vector>

#include "backend/cuda/bf16_device.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/gemv_chunk.cuh"
#include "backend/cuda/ops_cuda.cuh"
#include "backend/cuda/pdl.cuh"

namespace freekv::cuda {

namespace {

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

constexpr int kBlockKWarps = 8;
// A measured kernel must beat the default by this share to replace it: kernels within timing noise
// of each other would otherwise swap from one start to the next (and with them the summation order).
constexpr double kSwitchMargin = 0.03;

// The block's 8 warps share RPW rows and split their k: warp w takes 16-byte chunks w * 32 + lane,
// stepping 256 chunks, C of them in flight per lane and row; the warps' partial sums meet in shared
// memory and are added in warp order (deterministic).
template <int M, int RPW, int C, class X>
__global__ void __launch_bounds__(kBlockKWarps * 32) gemv_block_k_kernel(const X* __restrict__ x, int m,
                                                                         const uint16_t* __restrict__ w, int64_t n, int64_t k,
                                                                         float* __restrict__ y, const uint16_t* __restrict__ bias,
                                                                         bool accumulate) {
    __shared__ float partial[kBlockKWarps][RPW][M];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t row0 = static_cast<int64_t>(blockIdx.x) * RPW;
    const int64_t chunks = k / 8;
    float acc[RPW][M];
#pragma unroll
    for (int r = 0; r < RPW; ++r)
#pragma unroll
        for (int i = 0; i < M; ++i) acc[r][i] = 0.0f;
    // Under programmatic dependent launch the first weights are in flight before the wait for the
    // kernel that makes x (pdl.cuh); nothing before x and y is touched.
    bool waited = false;
    for (int64_t c0 = warp * 32 + lane; c0 < chunks; c0 += kBlockKWarps * 32 * C) {
        uint4 wv[C][RPW];
#pragma unroll
        for (int h = 0; h < C; ++h)
#pragma unroll
            for (int r = 0; r < RPW; ++r) {
                const int64_t c = c0 + kBlockKWarps * 32 * h;
                wv[h][r] = row0 + r < n && c < chunks ? __ldg(reinterpret_cast<const uint4*>(w + (row0 + r) * k) + c)
                                                      : make_uint4(0, 0, 0, 0);
            }
        if (!waited) {
            grid_dependency_wait();
            waited = true;
        }
#pragma unroll
        for (int h = 0; h < C; ++h) {
            const int64_t c = c0 + kBlockKWarps * 32 * h;
            if (c >= chunks) break;
            gemv_chunk<M, RPW>(wv[h], x, m, k, c, acc);
        }
    }
    if (!waited) grid_dependency_wait();  // a thread with no chunk still writes y after the predecessor
#pragma unroll
    for (int r = 0; r < RPW; ++r)
#pragma unroll
        for (int i = 0; i < M; ++i) {
            float s = acc[r][i];
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane == 0) partial[warp][r][i] = s;
        }
    __syncthreads();
    if (threadIdx.x < RPW * M) {
        const int r = threadIdx.x / M, i = threadIdx.x % M;
        const int64_t row = row0 + r;
        if (i < m && row < n) {
            float s = 0.0f;
            for (int q = 0; q < kBlockKWarps; ++q) s += partial[q][r][i];
            float& out = y[static_cast<int64_t>(i) * n + row];
            out = accumulate ? out + s : s + (bias != nullptr ? bf16_to_float(bias[row]) : 0.0f);
        }
    }
}

// X: float (x rounded to bf16 as it is read) or uint16_t (x already bf16).
template <int RPW, int C, class X>
void launch_block_k(const X* x, int m, const uint16_t* w, int64_t n, int64_t k, float* y, const uint16_t* bias, bool acc,
                    cudaStream_t s) {
    const dim3 grid(static_cast<unsigned>((n + RPW - 1) / RPW)), block(kBlockKWarps * 32);
    const bool pdl = gemv_pdl();
    if (m == 1) launch_maybe_dependent(gemv_block_k_kernel<1, RPW, C, X>, grid, block, s, pdl, x, m, w, n, k, y, bias, acc);
    else if (m == 2) launch_maybe_dependent(gemv_block_k_kernel<2, RPW, C, X>, grid, block, s, pdl, x, m, w, n, k, y, bias, acc);
    else if (m <= 4) launch_maybe_dependent(gemv_block_k_kernel<4, RPW, C, X>, grid, block, s, pdl, x, m, w, n, k, y, bias, acc);
    else launch_maybe_dependent(gemv_block_k_kernel<8, RPW, C, X>, grid, block, s, pdl, x, m, w, n, k, y, bias, acc);
}

template <int RPW, int C>
void launch_block_k_for(const float* x, const uint16_t* x_bf16, int m, const uint16_t* w, int64_t n, int64_t k, float* y,
                        const uint16_t* bias, bool acc, cudaStream_t s) {
    if (x_bf16 != nullptr) launch_block_k<RPW, C, uint16_t>(x_bf16, m, w, n, k, y, bias, acc, s);
    else launch_block_k<RPW, C, float>(x, m, w, n, k, y, bias, acc, s);
}

__global__ void fill_uniform_kernel(float* x, int64_t n, uint32_t seed) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= n) return;
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    x[i] = static_cast<float>(h & 0xffffu) / 65536.0f - 0.5f;
}

}  // namespace

namespace {
thread_local bool gemv_pdl_on = false;
}  // namespace

void set_gemv_pdl(bool on) { gemv_pdl_on = on; }
bool gemv_pdl() { return gemv_pdl_on; }

const char* gemv_kernel_name(GemvKernel kernel) {
    switch (kernel) {
        case GemvKernel::kSimt: return "simt";
        case GemvKernel::kBlockK2x2: return "block-k 2x2";
        case GemvKernel::kBlockK4x1: return "block-k 4x1";
        case GemvKernel::kBlockK8x1: return "block-k 8x1";
        case GemvKernel::kMma16: return "mma 16";
        case GemvKernel::kMma32: return "mma 32";
        case GemvKernel::kCublas: return "cublas";
    }
    return "?";
}

void gemv_block_k(const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k, float* y, const uint16_t* bias,
                  int rows_per_block, int chunks, void* stream, bool accumulate, const uint16_t* x_bf16) {
    FREEKV_CHECK(!accumulate || bias == nullptr, "gemv_block_k: a product added into y takes no bias");
    FREEKV_CHECK(m >= 1 && m <= kGemvChoiceRows && k % 8 == 0, "gemv_block_k: m = {} must be in [1, {}] and k = {} a multiple of 8",
                 m, kGemvChoiceRows, k);
    const int mi = static_cast<int>(m);
    cudaStream_t s = as_stream(stream);
    FREEKV_CHECK(x_bf16 == nullptr || reinterpret_cast<uintptr_t>(x_bf16) % 16 == 0, "gemv_block_k: x_bf16 must be 16-byte aligned");
    if (rows_per_block == 2 && chunks == 2) launch_block_k_for<2, 2>(x, x_bf16, mi, w, n, k, y, bias, accumulate, s);
    else if (rows_per_block == 4 && chunks == 1) launch_block_k_for<4, 1>(x, x_bf16, mi, w, n, k, y, bias, accumulate, s);
    else if (rows_per_block == 8 && chunks == 1) launch_block_k_for<8, 1>(x, x_bf16, mi, w, n, k, y, bias, accumulate, s);
    else FREEKV_FAIL("gemv_block_k: rows per block {} with {} chunks is not built (2x2, 4x1, 8x1 are)", rows_per_block, chunks);
}

void gemv_run(GemvKernel kernel, const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k, float* y,
              const uint16_t* bias, uint16_t* x_bf16, void* stream, bool accumulate, bool x_bf16_ready) {
    switch (kernel) {
        case GemvKernel::kSimt: gemv_simt(x, m, w, n, k, y, bias, 2, stream, accumulate); return;
        // Block-k reads bf16(x) where it is ready (the same products, one 16-byte load per chunk and row).
        case GemvKernel::kBlockK2x2: gemv_block_k(x, m, w, n, k, y, bias, 2, 2, stream, accumulate, x_bf16_ready ? x_bf16 : nullptr); return;
        case GemvKernel::kBlockK4x1: gemv_block_k(x, m, w, n, k, y, bias, 4, 1, stream, accumulate, x_bf16_ready ? x_bf16 : nullptr); return;
        case GemvKernel::kBlockK8x1: gemv_block_k(x, m, w, n, k, y, bias, 8, 1, stream, accumulate, x_bf16_ready ? x_bf16 : nullptr); return;
        case GemvKernel::kMma16: gemv_mma(x, m, w, n, k, y, bias, stream, accumulate, 1, x_bf16_ready ? x_bf16 : nullptr); return;
        case GemvKernel::kMma32: gemv_mma(x, m, w, n, k, y, bias, stream, accumulate, 2, x_bf16_ready ? x_bf16 : nullptr); return;
        case GemvKernel::kCublas:
            FREEKV_CHECK(x_bf16 != nullptr, "gemv_run: cuBLAS needs the bf16 scratch for x");
            if (!x_bf16_ready) to_bf16(x, m * k, x_bf16, stream);
            gemm_bf16(x_bf16, m, w, n, k, y, bias, accumulate, stream);
            return;
    }
}

GemvChoices measure_gemv_choices(std::span<const uint16_t* const> matrices, int64_t n, int64_t k, int64_t max_rows) {
    FREEKV_CHECK(!matrices.empty() && k % 8 == 0 && max_rows >= 1 && max_rows <= kGemvChoiceRows,
                 "measure_gemv_choices: {} matrices of {} x {} for up to {} rows", matrices.size(), n, k, max_rows);
    GemvChoices out;
    out.n = n;
    out.k = k;
    out.measured_rows = max_rows;
    float* x = nullptr;
    float* y = nullptr;
    uint16_t* x_bf16 = nullptr;
    FREEKV_CUDA_CHECK(cudaMalloc(&x, sizeof(float) * static_cast<size_t>(kGemvChoiceRows * k)));
    FREEKV_CUDA_CHECK(cudaMalloc(&y, sizeof(float) * static_cast<size_t>(kGemvChoiceRows * n)));
    FREEKV_CUDA_CHECK(cudaMalloc(&x_bf16, sizeof(uint16_t) * static_cast<size_t>(kGemvChoiceRows * k)));
    fill_uniform_kernel<<<static_cast<unsigned>((kGemvChoiceRows * k + 255) / 256), 256>>>(x, kGemvChoiceRows * k, 0x5eedu);
    FREEKV_CUDA_CHECK(cudaGetLastError());
    cudaEvent_t start = nullptr, stop = nullptr;
    FREEKV_CUDA_CHECK(cudaEventCreate(&start));
    FREEKV_CUDA_CHECK(cudaEventCreate(&stop));
    // At least 8 timed calls per kernel (a model with one matrix of the shape, like the LM head,
    // repeats it); one untimed pass first.
    const int64_t calls = std::max<int64_t>(8, static_cast<int64_t>(matrices.size()));
    // cuBLAS is timed as the decode step runs it: on bf16(x) that the kernel making x wrote beside
    // it (rms_norm's y_bf16, silu_mul's out_bf16, attention's out_bf16), so without a conversion.
    to_bf16(x, kGemvChoiceRows * k, x_bf16, nullptr);
    auto time_us = [&](GemvKernel kernel, int64_t m) {
        for (const uint16_t* w : matrices) gemv_run(kernel, x, m, w, n, k, y, nullptr, x_bf16, nullptr, false, true);
        FREEKV_CUDA_CHECK(cudaEventRecord(start));
        for (int64_t c = 0; c < calls; ++c)
            gemv_run(kernel, x, m, matrices[static_cast<size_t>(c) % matrices.size()], n, k, y, nullptr, x_bf16, nullptr, false,
                     true);
        FREEKV_CUDA_CHECK(cudaEventRecord(stop));
        FREEKV_CUDA_CHECK(cudaEventSynchronize(stop));
        float ms = 0;
        FREEKV_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        return 1000.0 * ms / static_cast<double>(calls);
    };
    const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0;
    for (int64_t m = 1; m <= max_rows; ++m) {
        const size_t i = static_cast<size_t>(m - 1);
        // The baseline a measured kernel must beat by kSwitchMargin: the SIMT GEMV for one row; for
        // more, the tensor-core GEMV where k allows it (it launches as a programmatic dependent, which
        // cuBLAS cannot, and matched or beat cuBLAS at 4 rows on every Llama-3.1-8B shape:
        // bench/results/2026-12-07-h100-decode-defaults-s18.md), else cuBLAS.
        const GemvKernel fallback = m == 1 ? GemvKernel::kSimt : k % 32 == 0 ? GemvKernel::kMma16 : GemvKernel::kCublas;
        out.kernel[i] = fallback;
        bool usable = aligned;
        for (const uint16_t* w : matrices) usable = usable && reinterpret_cast<uintptr_t>(w) % 16 == 0;
        // The GEMV kernels read 16-byte chunks: misaligned weights are not timed (matmul_bf16 sends
        // them to cuBLAS whatever the choice says).
        if (!usable) continue;
        double best_us = time_us(fallback, m);
        out.default_us[i] = static_cast<float>(best_us);
        out.us[i] = static_cast<float>(best_us);
        for (GemvKernel kernel : {GemvKernel::kSimt, GemvKernel::kBlockK2x2, GemvKernel::kBlockK4x1, GemvKernel::kBlockK8x1,
                                  GemvKernel::kMma16, GemvKernel::kMma32, GemvKernel::kCublas}) {
            if (kernel == fallback) continue;
            const bool mma = kernel == GemvKernel::kMma16 || kernel == GemvKernel::kMma32;
            if (mma && k % 32 != 0) continue;  // the tensor-core GEMV takes k in chunks of 32
            const double us = time_us(kernel, m);
            if (us < best_us && us < (1.0 - kSwitchMargin) * out.default_us[i]) {
                best_us = us;
                out.kernel[i] = kernel;
                out.us[i] = static_cast<float>(us);
            }
        }
    }
    FREEKV_CUDA_CHECK(cudaEventDestroy(start));
    FREEKV_CUDA_CHECK(cudaEventDestroy(stop));
    FREEKV_CUDA_CHECK(cudaFree(x));
    FREEKV_CUDA_CHECK(cudaFree(y));
    FREEKV_CUDA_CHECK(cudaFree(x_bf16));
    return out;
}

}  // namespace freekv::cuda
