// matmul_cuda.cu: y = x . w^T on the GPU (see ops_cuda.cuh): the SIMT decode GEMV (and a slower
// tensor-core one) for a few rows of bf16 weights, the dispatch to the measured per-shape choice
// (gemv_choice.cu), cuBLAS for the rest (bf16 inputs rounded on the device, or fp32 throughout),
// and the SM target cuBLAS leaves to a concurrent gather.
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdlib>
#include <string_view>

#include "backend/cuda/bf16_device.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/gemv_chunk.cuh"
#include "backend/cuda/ops_cuda.cuh"

namespace freekv::cuda {

namespace {

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

__device__ float bf16_bits_to_float(uint16_t b) { return bf16_to_float(b); }

__global__ void to_bf16_kernel(const float* x, int64_t n, __nv_bfloat16* out) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16_rn(x[i]);
}

template <class W>
__global__ void add_bias_kernel(float* y, int64_t m, int64_t n, const W* bias) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i < m * n) y[i] += to_f32(bias[i % n]);
}

// Decode GEMV, y[m, n] = bf16(x[m, :]) . w[n, :] (+ bias) for m <= kGemvMaxRows: each warp owns
// kGemvRowsPerWarp output rows and walks k in 16-byte chunks of w (8 bf16 per lane, every row's
// loads issued before any math); x is read through L1 (all warps of a block share the k chunk) and
// rounded to bf16 as cuBLAS's input would be; fp32 accumulation, one warp reduction per row.
constexpr int kGemvMaxRows = 8;
// Rows the SIMT GEMV takes for a weight without a measured choice (GemvChoices): one; more go to
// cuBLAS (measured on the H100: batch 4 was faster through cuBLAS than through this kernel).
constexpr int kGemvDefaultRows = 1;
constexpr int kGemvRowsPerWarp = 4;
constexpr int kGemvWarps = 4;

// C: 16-byte chunks per lane and row in flight (2, 4 or 8: more bytes in flight per warp for the
// matrices whose few rows make few warps; the engine's measured choice runs 2).
template <int M, int C>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_bf16_kernel(const float* __restrict__ x, int m, const uint16_t* __restrict__ w,
                                                                    int64_t n, int64_t k, float* __restrict__ y,
                                                                    const uint16_t* __restrict__ bias, bool accumulate) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kGemvWarps + warp) * kGemvRowsPerWarp;
    if (row0 >= n) return;
    float acc[kGemvRowsPerWarp][M];
#pragma unroll
    for (int r = 0; r < kGemvRowsPerWarp; ++r)
#pragma unroll
        for (int i = 0; i < M; ++i) acc[r][i] = 0.0f;
    const int64_t chunks = k / 8;
    for (int64_t c0 = lane; c0 < chunks; c0 += 32 * C) {
        uint4 wv[C][kGemvRowsPerWarp];
#pragma unroll
        for (int h = 0; h < C; ++h)
#pragma unroll
            for (int r = 0; r < kGemvRowsPerWarp; ++r) {
                const int64_t c = c0 + 32 * h;
                wv[h][r] = row0 + r < n && c < chunks ? __ldg(reinterpret_cast<const uint4*>(w + (row0 + r) * k) + c)
                                                      : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
        for (int h = 0; h < C; ++h) {
            const int64_t c = c0 + 32 * h;
            if (c >= chunks) break;
            gemv_chunk<M, kGemvRowsPerWarp>(wv[h], x, m, k, c, acc);
        }
    }
#pragma unroll
    for (int r = 0; r < kGemvRowsPerWarp; ++r)
#pragma unroll
        for (int i = 0; i < M; ++i) {
            if (i >= m) break;
            float s = acc[r][i];
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane == 0 && row0 + r < n) {
                float& out = y[i * n + row0 + r];
                out = accumulate ? out + s : s + (bias != nullptr ? bf16_bits_to_float(bias[row0 + r]) : 0.0f);
            }
        }
}

bool gemv_fits(const float* x, int64_t m, const uint16_t* w, int64_t k) {
    return m >= 1 && m <= kGemvDefaultRows && k % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
           reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

}  // namespace

// Up to kGemvChoiceRows rows a forward is decode-sized: each product takes its weight's measured
// choice for that many rows (cuBLAS among them); beyond, the prefill's GEMM path.
bool matmul_rows_use_gemm(int64_t m) { return m > kGemvChoiceRows; }

namespace {

template <int C>
void launch_gemv_simt(const float* x, int m, const uint16_t* w, int64_t n, int64_t k, float* y, const uint16_t* bias,
                      bool acc, cudaStream_t s) {
    const auto blocks = static_cast<unsigned>((n + kGemvWarps * kGemvRowsPerWarp - 1) / (kGemvWarps * kGemvRowsPerWarp));
    if (m == 1)
        gemv_bf16_kernel<1, C><<<blocks, kGemvWarps * 32, 0, s>>>(x, m, w, n, k, y, bias, acc);
    else if (m == 2)
        gemv_bf16_kernel<2, C><<<blocks, kGemvWarps * 32, 0, s>>>(x, m, w, n, k, y, bias, acc);
    else if (m <= 4)
        gemv_bf16_kernel<4, C><<<blocks, kGemvWarps * 32, 0, s>>>(x, m, w, n, k, y, bias, acc);
    else
        gemv_bf16_kernel<8, C><<<blocks, kGemvWarps * 32, 0, s>>>(x, m, w, n, k, y, bias, acc);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

// A weight without a measured choice (one matmul_bf16 is given directly): the SIMT GEMV, 2 chunks in flight.
void gemv_bf16(const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k, float* y, const uint16_t* bias,
               bool accumulate, cudaStream_t s) {
    gemv_simt(x, m, w, n, k, y, bias, 2, s, accumulate);
}

}  // namespace

void gemv_simt(const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k, float* y, const uint16_t* bias, int chunks,
               void* stream, bool accumulate) {
    FREEKV_CHECK(!accumulate || bias == nullptr, "gemv_simt: a product added into y takes no bias");
    FREEKV_CHECK(m >= 1 && m <= kGemvMaxRows && k % 8 == 0 && (chunks == 2 || chunks == 4 || chunks == 8),
                 "gemv_simt: m = {} must be in [1, {}], k = {} a multiple of 8 and chunks = {} one of 2, 4, 8", m, kGemvMaxRows, k, chunks);
    const int mi = static_cast<int>(m);
    cudaStream_t s = as_stream(stream);
    if (chunks == 2) launch_gemv_simt<2>(x, mi, w, n, k, y, bias, accumulate, s);
    else if (chunks == 4) launch_gemv_simt<4>(x, mi, w, n, k, y, bias, accumulate, s);
    else launch_gemv_simt<8>(x, mi, w, n, k, y, bias, accumulate, s);
}

namespace {

// One cuBLAS handle per host thread, created on first use (creation costs milliseconds).
cublasHandle_t cublas_handle() {
    thread_local cublasHandle_t handle = [] {
        cublasHandle_t h = nullptr;
        const cublasStatus_t status = cublasCreate(&h);
        FREEKV_CHECK(status == CUBLAS_STATUS_SUCCESS, "cublasCreate failed with status {}", static_cast<int>(status));
        return h;
    }();
    return handle;
}

}  // namespace

void set_gemm_sm_target(int sms) {
    thread_local int current = 0;
    if (sms == current) return;
    FREEKV_CHECK(cublasSetSmCountTarget(cublas_handle(), sms) == CUBLAS_STATUS_SUCCESS, "cublasSetSmCountTarget({}) failed", sms);
    current = sms;
}

void to_bf16(const float* x, int64_t n, uint16_t* out, void* stream) {
    to_bf16_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, as_stream(stream)>>>(x, n, reinterpret_cast<__nv_bfloat16*>(out));
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void matmul_bf16(const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k, float* y, const uint16_t* bias,
                 uint16_t* x_bf16, void* stream, const GemvChoices* choices, bool accumulate, bool x_bf16_ready) {
    FREEKV_CHECK(!accumulate || bias == nullptr, "matmul: a product added into y takes no bias");
    if (choices != nullptr && m >= 1 && m <= choices->measured_rows && k % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
        reinterpret_cast<uintptr_t>(w) % 16 == 0) {
        FREEKV_CHECK(choices->n == n && choices->k == k, "matmul_bf16: the GEMV choice of a {} x {} weight given for {} x {}",
                     choices->n, choices->k, n, k);
        gemv_run(choices->kernel[m - 1], x, m, w, n, k, y, bias, x_bf16, stream, accumulate, x_bf16_ready);
        return;
    }
    if (gemv_fits(x, m, w, k)) {  // decode: one pass over w, no conversion kernel, no cuBLAS
        gemv_bf16(x, m, w, n, k, y, bias, accumulate, as_stream(stream));
        return;
    }
    if (!x_bf16_ready) to_bf16(x, m * k, x_bf16, stream);
    gemm_bf16(x_bf16, m, w, n, k, y, bias, accumulate, stream);
}

void gemm_bf16(const uint16_t* x_bf16, int64_t m, const uint16_t* w, int64_t n, int64_t k, float* y, const uint16_t* bias,
               bool accumulate, void* stream) {
    cublasHandle_t handle = cublas_handle();
    FREEKV_CHECK(cublasSetStream(handle, as_stream(stream)) == CUBLAS_STATUS_SUCCESS, "cublasSetStream failed");
    // Row-major y[m, n] is column-major y^T[n, m] = w (column-major [k, n], transposed) . x^T ([k, m]).
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    const cublasStatus_t status =
        cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha,
                     w, CUDA_R_16BF, static_cast<int>(k), x_bf16, CUDA_R_16BF, static_cast<int>(k), &beta, y, CUDA_R_32F,
                     static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    FREEKV_CHECK(status == CUBLAS_STATUS_SUCCESS, "cublasGemmEx ({} x {} x {}) failed with status {}", m, n, k,
                 static_cast<int>(status));
    if (bias != nullptr) {
        add_bias_kernel<<<static_cast<unsigned>((m * n + 255) / 256), 256, 0, as_stream(stream)>>>(y, m, n, bias);
        FREEKV_CUDA_CHECK(cudaGetLastError());
    }
}

void matmul(const float* x, int64_t m, WeightRef w, int64_t n, int64_t k, float* y, WeightRef bias, uint16_t* x_bf16,
            void* stream, bool accumulate, bool x_bf16_ready) {
    if (!w.f32) {
        FREEKV_CHECK(bias.p == nullptr || !bias.f32, "matmul: a bf16 weight takes a bf16 bias");
        matmul_bf16(x, m, static_cast<const uint16_t*>(w.p), n, k, y, static_cast<const uint16_t*>(bias.p), x_bf16, stream, w.gemv, accumulate, x_bf16_ready);
        return;
    }
    FREEKV_CHECK(bias.p == nullptr || bias.f32, "matmul: an fp32 weight takes an fp32 bias");
    FREEKV_CHECK(!accumulate || bias.p == nullptr, "matmul: a product added into y takes no bias");
    cublasHandle_t handle = cublas_handle();
    FREEKV_CHECK(cublasSetStream(handle, as_stream(stream)) == CUBLAS_STATUS_SUCCESS, "cublasSetStream failed");
    // fp32 inputs with CUBLAS_COMPUTE_32F: full fp32 products (the handle's default math mode
    // allows no TF32), the accuracy reference of --gpu-dtype f32.
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    const cublasStatus_t status =
        cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha,
                     w.p, CUDA_R_32F, static_cast<int>(k), x, CUDA_R_32F, static_cast<int>(k), &beta, y, CUDA_R_32F,
                     static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    FREEKV_CHECK(status == CUBLAS_STATUS_SUCCESS, "cublasGemmEx fp32 ({} x {} x {}) failed with status {}", m, n, k,
                 static_cast<int>(status));
    if (bias.p != nullptr) {
        add_bias_kernel<<<static_cast<unsigned>((m * n + 255) / 256), 256, 0, as_stream(stream)>>>(
            y, m, n, static_cast<const float*>(bias.p));
        FREEKV_CUDA_CHECK(cudaGetLastError());
    }
}

}  // namespace freekv::cuda
