// ops_cuda.cu: the element-wise and row-wise CUDA ops (see ops_cuda.cuh): one block per row for
// norms, one thread per element for element-wise ops. The GEMMs and decode GEMVs are in
// matmul_cuda.cu, the decode attention in attention_cuda.cu.
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdlib>
#include <string_view>

#include "backend/cuda/bf16_device.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops_cuda.cuh"
#include "backend/cuda/pdl.cuh"

namespace freekv::cuda {

namespace {

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// One block of up to 1024 threads per row; rows whose length is a multiple of 4 move as float4 /
// 4 x bf16 so that a 4096-wide row is one load per thread (the kernel is latency-bound).
__device__ __forceinline__ void store_out(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_out(uint16_t* p, float v) {  // as matmul's to_bf16 rounds
    const __nv_bfloat16 b = __float2bfloat16_rn(v);
    *p = *reinterpret_cast<const uint16_t*>(&b);
}
__device__ __forceinline__ void store_out4(float* p, float4 r) { *reinterpret_cast<float4*>(p) = r; }
__device__ __forceinline__ void store_out4(uint16_t* p, float4 r) {
    const __nv_bfloat162 lo = __floats2bfloat162_rn(r.x, r.y), hi = __floats2bfloat162_rn(r.z, r.w);
    uint2 w;
    w.x = *reinterpret_cast<const uint32_t*>(&lo);
    w.y = *reinterpret_cast<const uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(p) = w;
}

template <class W, class O>
__global__ void rms_norm_kernel(const float* x, int64_t n, const W* w, float eps, O* y, uint16_t* y_bf16) {
    launch_dependents();  // a GEMV after it may start streaming its weights (pdl.cuh)
    const float* row = x + blockIdx.x * n;
    O* out = y + blockIdx.x * n;
    uint16_t* out_bf16 = y_bf16 != nullptr ? y_bf16 + blockIdx.x * n : nullptr;
    const bool vec = n % 4 == 0;
    float ss = 0.0f;
    if (vec) {
        for (int64_t i = threadIdx.x; i < n / 4; i += blockDim.x) {
            const float4 v = reinterpret_cast<const float4*>(row)[i];
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
    } else {
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss += row[i] * row[i];
    }
    __shared__ float partial[32];
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        ss = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
        if (threadIdx.x == 0) partial[0] = ss;
    }
    __syncthreads();
    const float inv = rsqrtf(partial[0] / static_cast<float>(n) + eps);
    if (vec) {
        for (int64_t i = threadIdx.x; i < n / 4; i += blockDim.x) {
            const float4 v = reinterpret_cast<const float4*>(row)[i];
            float wv[4];
            load_x4(w + 4 * i, 4, wv);
            float4 r;
            r.x = wv[0] * (v.x * inv);
            r.y = wv[1] * (v.y * inv);
            r.z = wv[2] * (v.z * inv);
            r.w = wv[3] * (v.w * inv);
            store_out4(out + 4 * i, r);
            if (out_bf16 != nullptr) store_out4(out_bf16 + 4 * i, r);
        }
    } else {
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            const float r = to_f32(w[i]) * (row[i] * inv);
            store_out(out + i, r);
            if (out_bf16 != nullptr) store_out(out_bf16 + i, r);
        }
    }
}

__global__ void rope_kernel(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim, const int32_t* positions,
                            const float* inv_freq, bool neox) {
    const int64_t half = head_dim / 2;
    const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (idx >= n_tok * n_heads * half) return;
    const int64_t i = idx % half, th = idx / half, t = th / n_heads;
    const float angle = static_cast<float>(positions[t]) * inv_freq[i];
    double s, c;
    sincos(static_cast<double>(angle), &s, &c);  // exact, as the reference takes them
    float* v = x + th * head_dim;
    const int64_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * static_cast<float>(c) - x1 * static_cast<float>(s);
    v[b] = x1 * static_cast<float>(c) + x0 * static_cast<float>(s);
}

__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// Element i of out is row i / width, column i % width; that row's gate and up elements lie
// in_stride apart (0: one row of n elements).
__global__ void silu_mul_kernel(const float* gate, const float* up, int64_t n, int64_t width, int64_t in_stride, float* out,
                                uint16_t* out_bf16) {
    launch_dependents();  // the down GEMV may start streaming its weights (pdl.cuh)
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= n) return;
    const int64_t r = i / width, at = r * in_stride + (i - r * width);
    const float v = silu_times(gate[at], up[at]);
    out[i] = v;
    if (out_bf16 != nullptr) store_out(out_bf16 + i, v);
}

__global__ void silu_mul_bf16_kernel(const float* gate, const float* up, int64_t n, uint16_t* out) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i < n) store_out(out + i, silu_times(gate[i], up[i]));
}

// Four elements per thread (16-byte loads): the same values as silu_mul_bf16_kernel. n % 4 == 0.
__global__ void silu_mul_bf16_x4_kernel(const float* gate, const float* up, int64_t n4, uint16_t* out) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= n4) return;
    const float4 g = reinterpret_cast<const float4*>(gate)[i], u = reinterpret_cast<const float4*>(up)[i];
    store_out4(out + 4 * i, make_float4(silu_times(g.x, u.x), silu_times(g.y, u.y), silu_times(g.z, u.z), silu_times(g.w, u.w)));
}

template <class W>
__global__ void embedding_kernel(const W* table, const int32_t* ids, int64_t n_embd, float* out) {
    const int32_t id = ids[blockIdx.x];
    if (id < 0) {  // a token of another tensor-parallel rank's vocabulary rows
        for (int64_t i = threadIdx.x; i < n_embd; i += blockDim.x) out[blockIdx.x * n_embd + i] = 0.0f;
        return;
    }
    const W* row = table + static_cast<int64_t>(id) * n_embd;
    for (int64_t i = threadIdx.x; i < n_embd; i += blockDim.x) out[blockIdx.x * n_embd + i] = to_f32(row[i]);
}

}  // namespace

template <class O>
void rms_norm_to(const float* x, int64_t m, int64_t n, WeightRef w, float eps, O* y, void* stream, uint16_t* y_bf16 = nullptr) {
    const int64_t per_thread = n % 4 == 0 ? n / 4 : n;
    const unsigned threads = static_cast<unsigned>(std::clamp<int64_t>((per_thread + 31) / 32 * 32, 32, 1024));
    by_elem(w.f32 ? 4 : 2, [&](auto tag) {
        using W = decltype(tag);
        rms_norm_kernel<W, O><<<static_cast<unsigned>(m), threads, 0, as_stream(stream)>>>(x, n, static_cast<const W*>(w.p), eps, y, y_bf16);
    });
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void rms_norm(const float* x, int64_t m, int64_t n, WeightRef w, float eps, float* y, void* stream, uint16_t* y_bf16) {
    rms_norm_to(x, m, n, w, eps, y, stream, y_bf16);
}

void rms_norm_bf16(const float* x, int64_t m, int64_t n, WeightRef w, float eps, uint16_t* y, void* stream) {
    rms_norm_to(x, m, n, w, eps, y, stream);
}

void rms_norm(const float* x, int64_t m, int64_t n, const uint16_t* w, float eps, float* y, void* stream) {
    rms_norm(x, m, n, WeightRef{w, false}, eps, y, stream);
}

void rope(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim, const int32_t* positions, const float* inv_freq,
          bool neox, void* stream) {
    const int64_t n = n_tok * n_heads * head_dim / 2;
    rope_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, as_stream(stream)>>>(x, n_tok, n_heads, head_dim,
                                                                                        positions, inv_freq, neox);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void silu_mul(float* gate, const float* up, int64_t n, void* stream, uint16_t* out_bf16) {
    if (n == 0) return;
    silu_mul_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, as_stream(stream)>>>(gate, up, n, n, 0, gate, out_bf16);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void silu_mul_rows(const float* gate_up, int64_t rows, int64_t width, float* out, void* stream, uint16_t* out_bf16) {
    const int64_t n = rows * width;
    if (n == 0) return;
    silu_mul_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, as_stream(stream)>>>(gate_up, gate_up + width, n, width,
                                                                                           2 * width, out, out_bf16);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void silu_mul_bf16(const float* gate, const float* up, int64_t n, uint16_t* out, void* stream) {
    const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    if (n % 4 == 0 && aligned(gate) && aligned(up) && aligned(out)) {
        const int64_t n4 = n / 4;
        silu_mul_bf16_x4_kernel<<<static_cast<unsigned>((n4 + 255) / 256), 256, 0, as_stream(stream)>>>(gate, up, n4, out);
        FREEKV_CUDA_CHECK(cudaGetLastError());
        return;
    }
    silu_mul_bf16_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, as_stream(stream)>>>(gate, up, n, out);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void embedding(WeightRef table, const int32_t* ids, int64_t n_tok, int64_t n_embd, float* out, void* stream) {
    by_elem(table.f32 ? 4 : 2, [&](auto tag) {
        using W = decltype(tag);
        embedding_kernel<W><<<static_cast<unsigned>(n_tok), 256, 0, as_stream(stream)>>>(static_cast<const W*>(table.p), ids,
                                                                                          n_embd, out);
    });
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void embedding(const uint16_t* table, const int32_t* ids, int64_t n_tok, int64_t n_embd, float* out, void* stream) {
    embedding(WeightRef{table, false}, ids, n_tok, n_embd, out, stream);
}

}  // namespace freekv::cuda
