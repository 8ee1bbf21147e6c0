// attention_cuda.cu: decode attention over per-head page lists (see ops_cuda.cuh): one block per
// (KV head, sequence, split) whose warps stride over the tokens, keep an online softmax per query
// head of the GQA group (all G heads share each K/V row read) and merge through shared memory;
// split-K partials are combined by a second kernel.
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdlib>
#include <string_view>

#include "backend/cuda/bf16_device.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops_cuda.cuh"

namespace freekv::cuda {

namespace {

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

constexpr int kMaxGroup = 16;    // GQA group sizes 1..16, chosen at run time
constexpr int kMaxDimsPerLane = 4;  // head_dim <= 128
constexpr int kWarps = 4;
constexpr int kTokensInFlight = 4;

// G: a compile-time bound on the GQA group (1, 2, 4, 8 or 16), so that the per-head softmax state
// lives in registers sized to it; T: the KV element type. (Forcing 64 registers per thread with
// __launch_bounds__(128, 8) raised occupancy 31% -> 47% but made it slower: full KV's attention at
// 32K went 6.9 -> 8.2 ms per step at batch 1 and 23.0 -> 29.7 ms at batch 4;
// bench/results/2026-11-24-h100-bench-llama8b-s6.md.)
template <int G, class T>
__global__ void __launch_bounds__(kWarps * 32) attention_pages_kernel(PagesAttentionArgs a) {
    const int ikv = blockIdx.x, seq = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int group = a.n_head / a.n_head_kv, dims = a.head_dim / 32;
    const float scale = rsqrtf(static_cast<float>(a.head_dim));
    __shared__ float q_shared[G * 128];
    const float* q = a.q + (static_cast<int64_t>(seq) * a.n_head + ikv * group) * a.head_dim;
    for (int i = threadIdx.x; i < group * a.head_dim; i += blockDim.x) q_shared[i] = q[i];
    __syncthreads();
    const int32_t* pages = a.page_ids + (static_cast<int64_t>(seq) * a.n_head_kv + ikv) * a.max_list;
    const int n_tokens = (a.n_pages[seq] - 1) * a.page_size + a.last_len[seq];
    // This block's token range (the whole list unless split-K).
    const int chunk = (n_tokens + static_cast<int>(gridDim.z) - 1) / static_cast<int>(gridDim.z);
    const int j_begin = static_cast<int>(blockIdx.z) * chunk, j_end = min(n_tokens, j_begin + chunk);
    float m[G], l[G], acc[G][kMaxDimsPerLane];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int d = 0; d < kMaxDimsPerLane; ++d) acc[g][d] = 0.0f;
    }
    const int64_t base = static_cast<int64_t>(seq) * a.stride_seq + static_cast<int64_t>(ikv) * a.head_dim;
    // Each warp takes kTokensInFlight consecutive tokens per round and issues all their K/V loads
    // before the first dot product: the loop is latency-bound, not bandwidth-bound, otherwise.
    for (int j0 = j_begin + warp * kTokensInFlight; j0 < j_end; j0 += kWarps * kTokensInFlight) {
        float kr[kTokensInFlight][kMaxDimsPerLane], vr[kTokensInFlight][kMaxDimsPerLane];
#pragma unroll
        for (int u = 0; u < kTokensInFlight; ++u) {
            const int j = j0 + u;
            if (j >= j_end) break;
            const int page = pages[j / a.page_size];
            const int64_t off = base + static_cast<int64_t>(page) * a.stride_page + (j % a.page_size) * a.stride_tok + lane * dims;
            load_x4(static_cast<const T*>(a.k) + off, dims, kr[u]);
            load_x4(static_cast<const T*>(a.v) + off, dims, vr[u]);
        }
#pragma unroll
        for (int u = 0; u < kTokensInFlight; ++u) {
            if (j0 + u >= j_end) break;
#pragma unroll
            for (int g = 0; g < G; ++g) {
                if (g >= group) break;
                float s = 0.0f;
#pragma unroll
                for (int d = 0; d < kMaxDimsPerLane; ++d)
                    if (d < dims) s += q_shared[g * a.head_dim + lane * dims + d] * kr[u][d];
                for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                s *= scale;
                const float m_new = fmaxf(m[g], s);
                const float correction = expf(m[g] - m_new), p = expf(s - m_new);
                l[g] = l[g] * correction + p;
#pragma unroll
                for (int d = 0; d < kMaxDimsPerLane; ++d) acc[g][d] = acc[g][d] * correction + p * vr[u][d];
                m[g] = m_new;
            }
        }
    }
    // Merge the warps' partial softmax states.
    __shared__ float m_shared[kWarps][G], l_shared[kWarps][G];
    __shared__ float acc_shared[kWarps][G * 128];
#pragma unroll
    for (int g = 0; g < G; ++g) {
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

// Merges the n_split partial states of each (sequence, query head) into the output. One block per
// (KV head, sequence, group member): its first warp computes the split weights exp(m_z - m) / l
// with the lanes over the splits (independent loads, shuffle reductions), then every thread sums
// one output element's n_split partials. (One thread per head looping over the splits made a
// chain of dependent loads: ~22 us per layer at 32 splits.)
constexpr int kMaxSplit = 256;
constexpr int kCombineThreads = 128;  // >= head_dim
__global__ void __launch_bounds__(kCombineThreads) attention_combine_kernel(PagesAttentionArgs a) {
    const int ikv = blockIdx.x, seq = blockIdx.y, g = blockIdx.z, group = a.n_head / a.n_head_kv;
    const int stride = group * (a.head_dim + 2);
    const float* parts = a.partial + (static_cast<int64_t>(seq) * a.n_head_kv + ikv) * a.n_split * stride;
    __shared__ float weight[kMaxSplit];
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        float m_all = -INFINITY;
        for (int z = lane; z < a.n_split; z += 32) m_all = fmaxf(m_all, parts[z * stride + group * a.head_dim + g]);
        for (int o = 16; o > 0; o >>= 1) m_all = fmaxf(m_all, __shfl_xor_sync(0xffffffffu, m_all, o));
        float l_all = 0.0f;
        for (int z = lane; z < a.n_split; z += 32) {
            const float m = parts[z * stride + group * a.head_dim + g];
            const float f = m == -INFINITY ? 0.0f : expf(m - m_all);  // an empty split weighs nothing
            weight[z] = f;
            l_all += parts[z * stride + group * a.head_dim + group + g] * f;
        }
        for (int o = 16; o > 0; o >>= 1) l_all += __shfl_xor_sync(0xffffffffu, l_all, o);
        const float inv = 1.0f / l_all;
        for (int z = lane; z < a.n_split; z += 32) weight[z] *= inv;
    }
    __syncthreads();
    const int i = threadIdx.x;
    if (i >= a.head_dim) return;
    float o = 0.0f;
#pragma unroll 8
    for (int z = 0; z < a.n_split; ++z) o += parts[z * stride + g * a.head_dim + i] * weight[z];
    a.out[(static_cast<int64_t>(seq) * a.n_head + ikv * group + g) * a.head_dim + i] = o;
}

}  // namespace

void attention_pages(const PagesAttentionArgs& a, void* stream) {
    FREEKV_CHECK(a.head_dim % 32 == 0 && a.head_dim <= 128, "attention_pages: head_dim {} must be 32, 64, 96 or 128",
                 a.head_dim);
    FREEKV_CHECK(a.n_head % a.n_head_kv == 0 && a.n_head / a.n_head_kv <= kMaxGroup,
                 "attention_pages: GQA group {} / {} must be 1..16", a.n_head, a.n_head_kv);
    FREEKV_CHECK(a.n_split >= 1 && a.n_split <= kMaxSplit && (a.n_split == 1 || a.partial != nullptr),
                 "attention_pages: split-K of {} (1..{}) needs scratch", a.n_split, kMaxSplit);
    const dim3 grid(static_cast<unsigned>(a.n_head_kv), static_cast<unsigned>(a.n_seq), static_cast<unsigned>(a.n_split));
    const int group = a.n_head / a.n_head_kv;
    cudaStream_t s = as_stream(stream);
    FREEKV_CHECK(a.elem_bytes == 2 || a.elem_bytes == 4, "attention_pages: element size {} must be 2 or 4", a.elem_bytes);
    by_elem(a.elem_bytes, [&](auto tag) {
        using T = decltype(tag);
        if (group == 1) attention_pages_kernel<1, T><<<grid, kWarps * 32, 0, s>>>(a);
        else if (group == 2) attention_pages_kernel<2, T><<<grid, kWarps * 32, 0, s>>>(a);
        else if (group <= 4) attention_pages_kernel<4, T><<<grid, kWarps * 32, 0, s>>>(a);
        else if (group <= 8) attention_pages_kernel<8, T><<<grid, kWarps * 32, 0, s>>>(a);
        else attention_pages_kernel<16, T><<<grid, kWarps * 32, 0, s>>>(a);
    });
    FREEKV_CUDA_CHECK(cudaGetLastError());
    if (a.n_split > 1) {
        attention_combine_kernel<<<dim3(grid.x, grid.y, static_cast<unsigned>(group)), kCombineThreads, 0, as_stream(stream)>>>(a);
        FREEKV_CUDA_CHECK(cudaGetLastError());
    }
}

}  // namespace freekv::cuda
