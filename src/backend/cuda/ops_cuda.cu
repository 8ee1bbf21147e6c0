// ops_cuda.cu: first CUDA ops (see ops_cuda.cuh). Plain, correct versions: one block per row for
// norms, one thread per element for element-wise ops; decode attention is one block per
// (KV head, sequence) whose warps stride over the tokens, keep an online softmax per query head of
// the GQA group (all G heads share each K/V row read) and merge through shared memory.
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops_cuda.cuh"

namespace freekv::cuda {

namespace {

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

__device__ float bf16_bits_to_float(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }

__global__ void rms_norm_kernel(const float* x, int64_t n, const uint16_t* w, float eps, float* y) {
    const float* row = x + blockIdx.x * n;
    float* out = y + blockIdx.x * n;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss += row[i] * row[i];
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
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) out[i] = bf16_bits_to_float(w[i]) * (row[i] * inv);
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

__global__ void silu_mul_kernel(float* gate, const float* up, int64_t n) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i < n) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

__global__ void embedding_kernel(const uint16_t* table, const int32_t* ids, int64_t n_embd, float* out) {
    const uint16_t* row = table + static_cast<int64_t>(ids[blockIdx.x]) * n_embd;
    for (int64_t i = threadIdx.x; i < n_embd; i += blockDim.x) out[blockIdx.x * n_embd + i] = bf16_bits_to_float(row[i]);
}

__global__ void to_bf16_kernel(const float* x, int64_t n, __nv_bfloat16* out) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16_rn(x[i]);
}

__global__ void add_bias_kernel(float* y, int64_t m, int64_t n, const uint16_t* bias) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i < m * n) y[i] += bf16_bits_to_float(bias[i % n]);
}

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

constexpr int kMaxGroup = 16;    // GQA group sizes 1..16, chosen at run time
constexpr int kMaxDimsPerLane = 4;  // head_dim <= 128
constexpr int kWarps = 4;

__global__ void __launch_bounds__(kWarps * 32) attention_pages_kernel(PagesAttentionArgs a) {
    const int ikv = blockIdx.x, seq = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int group = a.n_head / a.n_head_kv, dims = a.head_dim / 32;
    const float scale = rsqrtf(static_cast<float>(a.head_dim));
    __shared__ float q_shared[kMaxGroup * 128];
    const float* q = a.q + (static_cast<int64_t>(seq) * a.n_head + ikv * group) * a.head_dim;
    for (int i = threadIdx.x; i < group * a.head_dim; i += blockDim.x) q_shared[i] = q[i];
    __syncthreads();
    const bool causal = a.page_ids == nullptr;
    const int32_t* pages = causal ? nullptr : a.page_ids + (static_cast<int64_t>(seq) * a.n_head_kv + ikv) * a.max_list;
    const int n_tokens = causal ? a.causal_pos0 + seq + 1 : (a.n_pages[seq] - 1) * a.page_size + a.last_len[seq];
    // This block's token range (the whole list unless split-K).
    const int chunk = (n_tokens + static_cast<int>(gridDim.z) - 1) / static_cast<int>(gridDim.z);
    const int j_begin = static_cast<int>(blockIdx.z) * chunk, j_end = min(n_tokens, j_begin + chunk);
    float m[kMaxGroup], l[kMaxGroup], acc[kMaxGroup][kMaxDimsPerLane];
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int d = 0; d < kMaxDimsPerLane; ++d) acc[g][d] = 0.0f;
    }
    const int64_t base = (causal ? 0 : static_cast<int64_t>(seq) * a.stride_seq) + static_cast<int64_t>(ikv) * a.head_dim;
    for (int j = j_begin + warp; j < j_end; j += kWarps) {
        const int page = causal ? j / a.page_size : pages[j / a.page_size];
        const int64_t off = base + static_cast<int64_t>(page) * a.stride_page + (j % a.page_size) * a.stride_tok;
        float kr[kMaxDimsPerLane], vr[kMaxDimsPerLane];
#pragma unroll
        for (int d = 0; d < kMaxDimsPerLane; ++d) {
            kr[d] = d < dims ? bf16_bits_to_float(a.k[off + lane * dims + d]) : 0.0f;
            vr[d] = d < dims ? bf16_bits_to_float(a.v[off + lane * dims + d]) : 0.0f;
        }
#pragma unroll
        for (int g = 0; g < kMaxGroup; ++g) {
            if (g >= group) break;
            float s = 0.0f;
#pragma unroll
            for (int d = 0; d < kMaxDimsPerLane; ++d)
                if (d < dims) s += q_shared[g * a.head_dim + lane * dims + d] * kr[d];
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            s *= scale;
            const float m_new = fmaxf(m[g], s);
            const float correction = expf(m[g] - m_new), p = expf(s - m_new);
            l[g] = l[g] * correction + p;
#pragma unroll
            for (int d = 0; d < kMaxDimsPerLane; ++d) acc[g][d] = acc[g][d] * correction + p * vr[d];
            m[g] = m_new;
        }
    }
    // Merge the warps' partial softmax states.
    __shared__ float m_shared[kWarps][kMaxGroup], l_shared[kWarps][kMaxGroup];
    __shared__ float acc_shared[kWarps][kMaxGroup * 128];
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
        if (g >= group) break;
        if (lane == 0) {
            m_shared[warp][g] = m[g];
            l_shared[warp][g] = l[g];
        }
#pragma unroll
        for (int d = 0; d < kMaxDimsPerLane; ++d)
            if (d < dims) acc_shared[warp][g * a.head_dim + lane * dims + d] = acc[g][d];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < group * a.head_dim; i += blockDim.x) {
        const int g = i / a.head_dim;
        float m_all = -INFINITY;
        for (int w = 0; w < kWarps; ++w) m_all = fmaxf(m_all, m_shared[w][g]);
        float l_all = 0.0f, o = 0.0f;
        for (int w = 0; w < kWarps; ++w) {
            if (m_shared[w][g] == -INFINITY) continue;  // a warp that saw no token
            const float f = expf(m_shared[w][g] - m_all);
            l_all += l_shared[w][g] * f;
            o += acc_shared[w][i] * f;
        }
        if (gridDim.z == 1) {
            a.out[(static_cast<int64_t>(seq) * a.n_head + ikv * group) * a.head_dim + i] = o / l_all;
        } else {  // partial state of this split: [acc (G x d)][m (G)][l (G)]
            float* part = a.partial + ((static_cast<int64_t>(seq) * a.n_head_kv + ikv) * gridDim.z + blockIdx.z) *
                                          group * (a.head_dim + 2);
            part[i] = o;
            if (i % a.head_dim == 0) {
                part[group * a.head_dim + g] = m_all;
                part[group * a.head_dim + group + g] = l_all;
            }
        }
    }
}

// Merges the n_split partial states of each (sequence, KV head) into the output.
__global__ void attention_combine_kernel(PagesAttentionArgs a) {
    const int ikv = blockIdx.x, seq = blockIdx.y, group = a.n_head / a.n_head_kv;
    const int stride = group * (a.head_dim + 2);
    const float* parts = a.partial + (static_cast<int64_t>(seq) * a.n_head_kv + ikv) * a.n_split * stride;
    for (int i = threadIdx.x; i < group * a.head_dim; i += blockDim.x) {
        const int g = i / a.head_dim;
        float m_all = -INFINITY;
        for (int z = 0; z < a.n_split; ++z) m_all = fmaxf(m_all, parts[z * stride + group * a.head_dim + g]);
        float l_all = 0.0f, o = 0.0f;
        for (int z = 0; z < a.n_split; ++z) {
            const float m = parts[z * stride + group * a.head_dim + g];
            if (m == -INFINITY) continue;  // an empty split
            const float f = expf(m - m_all);
            l_all += parts[z * stride + group * a.head_dim + group + g] * f;
            o += parts[z * stride + i] * f;
        }
        a.out[(static_cast<int64_t>(seq) * a.n_head + ikv * group) * a.head_dim + i] = o / l_all;
    }
}

}  // namespace

void rms_norm(const float* x, int64_t m, int64_t n, const uint16_t* w, float eps, float* y, void* stream) {
    rms_norm_kernel<<<static_cast<unsigned>(m), 256, 0, as_stream(stream)>>>(x, n, w, eps, y);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void rope(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim, const int32_t* positions, const float* inv_freq,
          bool neox, void* stream) {
    const int64_t n = n_tok * n_heads * head_dim / 2;
    rope_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, as_stream(stream)>>>(x, n_tok, n_heads, head_dim,
                                                                                        positions, inv_freq, neox);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void silu_mul(float* gate, const float* up, int64_t n, void* stream) {
    silu_mul_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, as_stream(stream)>>>(gate, up, n);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void embedding(const uint16_t* table, const int32_t* ids, int64_t n_tok, int64_t n_embd, float* out, void* stream) {
    embedding_kernel<<<static_cast<unsigned>(n_tok), 256, 0, as_stream(stream)>>>(table, ids, n_embd, out);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void matmul_bf16(const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k, float* y, const uint16_t* bias,
                 uint16_t* x_bf16, void* stream) {
    const int64_t elems = m * k;
    to_bf16_kernel<<<static_cast<unsigned>((elems + 255) / 256), 256, 0, as_stream(stream)>>>(
        x, elems, reinterpret_cast<__nv_bfloat16*>(x_bf16));
    FREEKV_CUDA_CHECK(cudaGetLastError());
    cublasHandle_t handle = cublas_handle();
    FREEKV_CHECK(cublasSetStream(handle, as_stream(stream)) == CUBLAS_STATUS_SUCCESS, "cublasSetStream failed");
    // Row-major y[m, n] is column-major y^T[n, m] = w (column-major [k, n], transposed) . x^T ([k, m]).
    const float alpha = 1.0f, beta = 0.0f;
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

void attention_pages(const PagesAttentionArgs& a, void* stream) {
    FREEKV_CHECK(a.head_dim % 32 == 0 && a.head_dim <= 128, "attention_pages: head_dim {} must be 32, 64, 96 or 128",
                 a.head_dim);
    FREEKV_CHECK(a.n_head % a.n_head_kv == 0 && a.n_head / a.n_head_kv <= kMaxGroup,
                 "attention_pages: GQA group {} / {} must be 1..16", a.n_head, a.n_head_kv);
    FREEKV_CHECK(a.n_split >= 1 && (a.n_split == 1 || a.partial != nullptr), "attention_pages: split-K needs scratch");
    const dim3 grid(static_cast<unsigned>(a.n_head_kv), static_cast<unsigned>(a.n_seq), static_cast<unsigned>(a.n_split));
    attention_pages_kernel<<<grid, kWarps * 32, 0, as_stream(stream)>>>(a);
    FREEKV_CUDA_CHECK(cudaGetLastError());
    if (a.n_split > 1) {
        attention_combine_kernel<<<dim3(grid.x, grid.y), 128, 0, as_stream(stream)>>>(a);
        FREEKV_CUDA_CHECK(cudaGetLastError());
    }
}

}  // namespace freekv::cuda
