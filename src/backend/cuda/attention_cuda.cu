// attention_cuda.cu: decode attention over per-head page lists (see ops_cuda.cuh): one block per
// (KV head, sequence, split) whose warps take tiles of 32 tokens in turn. In a tile each lane
// scores one token against every query head of the GQA group (its whole K row, no shuffles), the
// warp takes the tile's maximum, and then every lane adds the tile's 32 V rows, weighted, into the
// output dimensions it owns; each warp keeps an online softmax per query head, the warps merge
// through shared memory, and split-K partials are combined by a second kernel.
// bf16 KV at head_dim 64/128 with groups up to 8 takes a variant that stages each warp's tiles in
// shared memory by cp.async (attention_pages_staged_kernel), which can also merge the split-K
// partials in the last block of each (sequence, KV head) when given counters (the engine's
// --attn-fused-combine, off by default: it measured slower; otherwise the combine kernel).
// Invariants: K/V rows start on 16-byte boundaries (checked); a tile's tokens past the list weigh 0;
// split counters are zero between calls.
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdlib>
#include <string_view>
#include <type_traits>

#include "backend/cuda/bf16_device.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernel_smem.cuh"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/ptx_ops.cuh"
#include "backend/cuda/ops_cuda.cuh"

namespace freekv::cuda {

namespace {

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

constexpr int kMaxGroup = 16;       // GQA group sizes 1..16, chosen at run time
constexpr int kMaxDimsPerLane = 4;  // head_dim <= 128
constexpr int kWarps = 4;
constexpr int kTile = 32;           // tokens per warp tile: one per lane while scoring
constexpr int kVInFlight = 8;       // V rows loaded before they are used

// 8 consecutive elements at p (16-byte aligned) widened to fp32.
__device__ __forceinline__ void load8(const uint16_t* p, float out[8]) { unpack_bf16x8(*reinterpret_cast<const uint4*>(p), out); }
__device__ __forceinline__ void load8(const float* p, float out[8]) {
    const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w, out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}

// q[0, 8) . k[0, 8) (q in shared memory, 16-byte aligned).
__device__ __forceinline__ float dot8(const float* q, const float k[8]) {
    const float4 a = *reinterpret_cast<const float4*>(q), b = *reinterpret_cast<const float4*>(q + 4);
    return a.x * k[0] + a.y * k[1] + a.z * k[2] + a.w * k[3] + b.x * k[4] + b.y * k[5] + b.z * k[6] + b.w * k[7];
}

// One tile's step of a warp's online softmax, per head g < group: the tile's maximum over kWidth
// lanes (each lane scores one token, s[g] already scaled or not valid), the rescale of the running
// state (m uniform over the lanes; l this lane's share, to which `counts` lanes add their weight;
// acc the lane's D output dimensions) and the token's weight into p[g * p_stride] when `writes`.
template <int G, int D, int kWidth>
__device__ __forceinline__ void softmax_tile_step(const float (&s)[G], bool valid, int group, float (&m)[G], float (&l)[G],
                                                  float (&acc)[G][kMaxDimsPerLane], float* p, int p_stride, bool counts,
                                                  bool writes) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
        if (g >= group) break;
        const float sg = valid ? s[g] : -INFINITY;
        float mx = sg;
        for (int o = kWidth / 2; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        const float m_new = fmaxf(m[g], mx);  // finite: the tile's first token is valid
        const float correction = expf(m[g] - m_new);
        const float pg = valid ? expf(sg - m_new) : 0.0f;
        l[g] = l[g] * correction + (counts ? pg : 0.0f);
#pragma unroll
        for (int d = 0; d < D; ++d) acc[g][d] *= correction;
        m[g] = m_new;
        if (writes) p[g * p_stride] = pg;
    }
}

// The block's end: its warps' partial softmax states (m, l, acc per head; acc holds the lane's
// `dims` output dimensions) merged through shared memory (smem: at least kWarps * G * 128 floats,
// free once the caller's barrier has passed), then the output, or the split's partial state.
template <int G>
__device__ void merge_warps(const PagesAttentionArgs& a, const float (&m)[G], const float (&l)[G],
                            const float (&acc)[G][kMaxDimsPerLane], float* smem, int seq, int ikv, int group, int hd) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, dims = hd / 32;
    __shared__ float m_shared[kWarps][G], l_shared[kWarps][G];
    auto acc_shared = reinterpret_cast<float(*)[G * 128]>(smem);
#pragma unroll
    for (int g = 0; g < G; ++g) {
        if (g >= group) break;
        if (lane == 0) {
            m_shared[warp][g] = m[g];
            l_shared[warp][g] = l[g];
        }
#pragma unroll
        for (int d = 0; d < kMaxDimsPerLane; ++d)
            if (d < dims) acc_shared[warp][g * hd + lane * dims + d] = acc[g][d];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < group * hd; i += blockDim.x) {
        const int g = i / hd;
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
            const int64_t at = (static_cast<int64_t>(seq) * a.n_head + ikv * group) * hd + i;
            a.out[at] = o / l_all;
            if (a.out_bf16 != nullptr) a.out_bf16[at] = float_to_bf16(o / l_all);
        } else {  // partial state of this split: [acc (G x d)][m (G)][l (G)]
            float* part = a.partial + ((static_cast<int64_t>(seq) * a.n_head_kv + ikv) * gridDim.z + blockIdx.z) *
                                          group * (hd + 2);
            part[i] = o;
            if (i % hd == 0) {
                part[group * hd + g] = m_all;
                part[group * hd + group + g] = l_all;
            }
        }
    }
}

// G: a compile-time bound on the GQA group (1, 2, 4, 8 or 16), so that the per-head softmax state
// lives in registers sized to it; T: the KV element type.
template <int G, class T>
__global__ void __launch_bounds__(kWarps * 32) attention_pages_kernel(PagesAttentionArgs a) {
    const int ikv = blockIdx.x, seq = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int group = a.n_head / a.n_head_kv, hd = a.head_dim, dims = hd / 32;
    const float scale = rsqrtf(static_cast<float>(hd));
    // Shared memory: the group's queries and each warp's tile weights while the tiles run, then (after
    // a barrier) the warps' partial outputs for the merge.
    constexpr int kLoopFloats = G * 128 + kWarps * G * kTile, kMergeFloats = kWarps * G * 128;
    __shared__ __align__(16) float smem[kLoopFloats > kMergeFloats ? kLoopFloats : kMergeFloats];
    float* q_shared = smem;
    auto p_shared = reinterpret_cast<float(*)[G][kTile]>(smem + G * 128);
    const float* q = a.q + (static_cast<int64_t>(seq) * a.n_head + ikv * group) * hd;
    for (int i = threadIdx.x; i < group * hd; i += blockDim.x) q_shared[i] = q[i];
    __syncthreads();
    const int32_t* pages = a.page_ids + (static_cast<int64_t>(seq) * a.n_head_kv + ikv) * a.max_list;
    const int n_tokens = (a.n_pages[seq] - 1) * a.page_size + a.last_len[seq];
    // This block's token range (the whole list unless split-K).
    const int chunk = (n_tokens + static_cast<int>(gridDim.z) - 1) / static_cast<int>(gridDim.z);
    const int j_begin = static_cast<int>(blockIdx.z) * chunk, j_end = min(n_tokens, j_begin + chunk);
    const T* k_head = static_cast<const T*>(a.k) + static_cast<int64_t>(seq) * a.stride_seq + static_cast<int64_t>(ikv) * hd;
    const T* v_head = static_cast<const T*>(a.v) + static_cast<int64_t>(seq) * a.stride_seq + static_cast<int64_t>(ikv) * hd;
    auto row_of = [&](int j) { return static_cast<int64_t>(pages[j / a.page_size]) * a.stride_page + (j % a.page_size) * a.stride_tok; };
    // m: the warp's running maximum per head (uniform over lanes); l: this lane's share of the sum.
    float m[G], l[G], acc[G][kMaxDimsPerLane];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int d = 0; d < kMaxDimsPerLane; ++d) acc[g][d] = 0.0f;
    }
    for (int t0 = j_begin + warp * kTile; t0 < j_end; t0 += kWarps * kTile) {
        // Scores: lane i takes token t0 + i, its K row 8 elements at a time.
        const int j = t0 + lane;
        const bool valid = j < j_end;
        const int64_t my_row = valid ? row_of(j) : 0;  // the V pass takes each token's row from its lane
        float s[G];
#pragma unroll
        for (int g = 0; g < G; ++g) s[g] = 0.0f;
        if (valid) {
            const T* krow = k_head + my_row;
#pragma unroll 8
            for (int c = 0; c < hd; c += 8) {
                float kv[8];
                load8(krow + c, kv);
#pragma unroll
                for (int g = 0; g < G; ++g) {
                    if (g >= group) break;
                    s[g] += dot8(q_shared + g * hd + c, kv);
                }
            }
        }
        // The tile's maximum per head, the rescale of the running state, the weights.
#pragma unroll
        for (int g = 0; g < G; ++g) s[g] *= scale;
        softmax_tile_step<G, kMaxDimsPerLane, 32>(s, valid, group, m, l, acc, &p_shared[warp][0][lane], kTile, true, true);
        __syncwarp();
        // Weighted V rows: the lane's `dims` output dimensions of each head, kVInFlight rows at a time.
        const int n_valid = min(kTile, j_end - t0);
        for (int u = 0; u < n_valid; u += kVInFlight) {
            float vr[kVInFlight][kMaxDimsPerLane];
#pragma unroll
            for (int i = 0; i < kVInFlight; ++i) {
                const int64_t row = __shfl_sync(0xffffffffu, my_row, u + i);
                if (u + i < n_valid) {
                    load_x4(v_head + row + lane * dims, dims, vr[i]);
                } else {
#pragma unroll
                    for (int d = 0; d < kMaxDimsPerLane; ++d) vr[i][d] = 0.0f;
                }
            }
#pragma unroll
            for (int i = 0; i < kVInFlight; ++i) {
#pragma unroll
                for (int g = 0; g < G; ++g) {
                    if (g >= group) break;
                    const float p = p_shared[warp][g][u + i];  // 0 past the list
#pragma unroll
                    for (int d = 0; d < kMaxDimsPerLane; ++d) acc[g][d] += p * vr[i][d];
                }
            }
        }
        __syncwarp();  // every lane has read p_shared before the next tile writes it
    }
#pragma unroll
    for (int g = 0; g < G; ++g)
        for (int o = 16; o > 0; o >>= 1) l[g] += __shfl_xor_sync(0xffffffffu, l[g], o);
    __syncthreads();  // every warp is done with q_shared and p_shared
    merge_warps<G>(a, m, l, acc, smem, seq, ikv, group, hd);
}

// The split-K merge, shared by the combine kernel and the staged kernel's fused combine (the last
// block of a (sequence, KV head) merges its splits itself): the same arithmetic in the same order,
// so both give the same bits. Partials are read through L2 (__ldcg): other blocks wrote them.
constexpr int kMaxSplit = 256;
constexpr int kCombineThreads = 128;  // >= head_dim

__device__ __forceinline__ const float* split_parts(const PagesAttentionArgs& a, int seq, int ikv) {
    const int group = a.n_head / a.n_head_kv;
    return a.partial + (static_cast<int64_t>(seq) * a.n_head_kv + ikv) * a.n_split * group * (a.head_dim + 2);
}

// weight[z] = exp(m_z - m) / l of head g for every split z, by one warp (lane = this thread's lane).
__device__ __forceinline__ void split_weights(const PagesAttentionArgs& a, const float* parts, int g, float* weight, int lane) {
    const int group = a.n_head / a.n_head_kv, stride = group * (a.head_dim + 2);
    float m_all = -INFINITY;
    for (int z = lane; z < a.n_split; z += 32) m_all = fmaxf(m_all, __ldcg(parts + z * stride + group * a.head_dim + g));
    for (int o = 16; o > 0; o >>= 1) m_all = fmaxf(m_all, __shfl_xor_sync(0xffffffffu, m_all, o));
    float l_all = 0.0f;
    for (int z = lane; z < a.n_split; z += 32) {
        const float m = __ldcg(parts + z * stride + group * a.head_dim + g);
        const float f = m == -INFINITY ? 0.0f : expf(m - m_all);  // an empty split weighs nothing
        weight[z] = f;
        l_all += __ldcg(parts + z * stride + group * a.head_dim + group + g) * f;
    }
    for (int o = 16; o > 0; o >>= 1) l_all += __shfl_xor_sync(0xffffffffu, l_all, o);
    const float inv = 1.0f / l_all;
    for (int z = lane; z < a.n_split; z += 32) weight[z] *= inv;
}

// Output element i (< head_dim) of head g: the splits' partial outputs weighted, in split order.
__device__ __forceinline__ void combine_output(const PagesAttentionArgs& a, const float* parts, int seq, int ikv, int g, int i,
                                               const float* weight) {
    const int group = a.n_head / a.n_head_kv, stride = group * (a.head_dim + 2);
    float o = 0.0f;
#pragma unroll 8
    for (int z = 0; z < a.n_split; ++z) o += __ldcg(parts + z * stride + g * a.head_dim + i) * weight[z];
    const int64_t at = (static_cast<int64_t>(seq) * a.n_head + ikv * group + g) * a.head_dim + i;
    a.out[at] = o;
    if (a.out_bf16 != nullptr) a.out_bf16[at] = float_to_bf16(o);
}

// The staged bf16 kernel (bf16 KV at head_dim 64/128, groups up to 8: every Llama-family shape):
// each warp takes tiles of 16 tokens and copies the next tile's K and V rows into its own
// shared-memory stage with cp.async (16 lanes per 256-byte row: every fetched byte used, no
// registers held by loads in flight) while it computes the current one. Two lanes score a token
// (half of its K row each, one shuffle); the block's page ids come to shared memory first when they
// fit. Same softmax and merge as the generic kernel.
constexpr int kStTile = 16;        // tokens per warp tile
constexpr int kStPages = 512;      // page ids held in shared memory (beyond: read from the list)
// VR (--attn-v-registers): V rows go to registers instead of the stage, halving each warp's shared
// memory, so that twice as many warps fit on an SM (the kernel is latency-bound at 3 blocks per SM).
template <int G, int HD, bool VR>
struct StagedLayout {  // dynamic shared memory, in bytes from its start
    static constexpr int kRowK = HD + 8;  // K rows padded by 16 bytes: the two lanes of a token and the 8 lanes of a phase hit distinct banks
    static constexpr int kStageBytes = kStTile * (kRowK + (VR ? 0 : HD)) * 2;
    static constexpr int q = 0;                                   // [G][HD] fp32
    static constexpr int p = q + G * HD * 4;                      // [kWarps][G][kStTile] fp32
    static constexpr int pages = p + kWarps * G * kStTile * 4;    // [kStPages] int32
    static constexpr int stages = pages + kStPages * 4;           // [kWarps][2] x (K [kStTile][kRowK], V [kStTile][HD]) bf16
    static constexpr int bytes = stages + kWarps * 2 * kStageBytes;
    static_assert(bytes >= kWarps * G * 128 * 4, "the merge reuses the same memory");
};


template <int G, int HD, bool VR>
__global__ void __launch_bounds__(kWarps * 32) attention_pages_staged_kernel(PagesAttentionArgs a) {
    using L = StagedLayout<G, HD, VR>;
    constexpr int kDims = HD / 32, kRowChunks = HD / 8, kCopies = kStTile * kRowChunks / 32;
    extern __shared__ __align__(16) unsigned char st_smem[];
    float* q_shared = reinterpret_cast<float*>(st_smem + L::q);
    auto p_shared = reinterpret_cast<float(*)[G][kStTile]>(st_smem + L::p);
    int32_t* pages_shared = reinterpret_cast<int32_t*>(st_smem + L::pages);
    const int ikv = blockIdx.x, seq = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    uint16_t* stage_base = reinterpret_cast<uint16_t*>(st_smem + L::stages + warp * 2 * L::kStageBytes);
    auto k_stage = [&](int st) { return stage_base + st * (L::kStageBytes / 2); };
    auto v_stage = [&](int st) { return stage_base + st * (L::kStageBytes / 2) + kStTile * L::kRowK; };
    const int group = a.n_head / a.n_head_kv;
    const float scale = rsqrtf(static_cast<float>(HD));
    // Under PDL (a.pdl) everything this kernel reads may come from the kernel before it: q and the
    // appended K/V from RoPE + append, page lists from a selection; the combine may launch early.
    grid_dependency_wait();
    if (a.pdl) launch_dependents();
    const float* q = a.q + (static_cast<int64_t>(seq) * a.n_head + ikv * group) * HD;
    for (int i = threadIdx.x; i < group * HD; i += blockDim.x) q_shared[i] = q[i];
    const int32_t* pages = a.page_ids + (static_cast<int64_t>(seq) * a.n_head_kv + ikv) * a.max_list;
    const int n_tokens = (a.n_pages[seq] - 1) * a.page_size + a.last_len[seq];
    const int chunk = (n_tokens + static_cast<int>(gridDim.z) - 1) / static_cast<int>(gridDim.z);
    const int j_begin = static_cast<int>(blockIdx.z) * chunk, j_end = min(n_tokens, j_begin + chunk);
    // The block's page ids: from shared memory when they fit, else straight from the list.
    const int first_page = j_begin / a.page_size;
    const int n_block_pages = j_end > j_begin ? (j_end - 1) / a.page_size - first_page + 1 : 0;
    const bool ids_shared = n_block_pages <= kStPages;
    if (ids_shared)
        for (int i = threadIdx.x; i < n_block_pages; i += blockDim.x) pages_shared[i] = pages[first_page + i];
    auto page_of = [&](int j) { return ids_shared ? pages_shared[j / a.page_size - first_page] : pages[j / a.page_size]; };
    __syncthreads();
    const uint16_t* k_head = static_cast<const uint16_t*>(a.k) + static_cast<int64_t>(seq) * a.stride_seq + static_cast<int64_t>(ikv) * HD;
    const uint16_t* v_head = static_cast<const uint16_t*>(a.v) + static_cast<int64_t>(seq) * a.stride_seq + static_cast<int64_t>(ikv) * HD;
    // Copies the tile at t0 into stage st: lane r < kStTile finds token t0 + r's row; the rows go
    // over the lanes 16 bytes each, row by row; tokens past the range are zero-filled.
    auto issue = [&](int t0, int st) {
        const int nv = min(kStTile, j_end - t0);
        int64_t my_row = 0;
        if (lane < nv) {
            const int j = t0 + lane;
            my_row = static_cast<int64_t>(page_of(j)) * a.stride_page + (j % a.page_size) * a.stride_tok;
        }
        uint16_t* ks = k_stage(st);
        uint16_t* vs = v_stage(st);
#pragma unroll
        for (int i = 0; i < kCopies; ++i) {
            const int ci = i * 32 + lane, r = ci / kRowChunks, cc = ci % kRowChunks;
            const int64_t row = __shfl_sync(0xffffffffu, my_row, r);
            cp_async_16(ks + r * L::kRowK + cc * 8, k_head + row + cc * 8, r < nv);
            if constexpr (!VR) cp_async_16(vs + r * HD + cc * 8, v_head + row + cc * 8, r < nv);
        }
        cp_async_commit();
    };
    // VR: the tile's V rows straight into registers, this lane's kDims elements of each (a warp reads
    // each 256-byte row whole), through L2 (the newest row may be the predecessor's write, pdl.cuh).
    using VWord = std::conditional_t<kDims == 4, uint2, uint32_t>;
    VWord v_regs[VR ? kStTile : 1];
    auto load_v = [&](int t0) {
        if constexpr (VR) {
            const int nv = min(kStTile, j_end - t0);
            int64_t my_row = 0;
            if (lane < nv) {
                const int j = t0 + lane;
                my_row = static_cast<int64_t>(page_of(j)) * a.stride_page + (j % a.page_size) * a.stride_tok;
            }
#pragma unroll
            for (int t = 0; t < kStTile; ++t) {
                const int64_t row = __shfl_sync(0xffffffffu, my_row, t);
                const VWord* src = reinterpret_cast<const VWord*>(v_head + row + lane * kDims);
                if constexpr (kDims == 4) v_regs[t] = t < nv ? __ldcg(src) : make_uint2(0, 0);
                else v_regs[t] = t < nv ? __ldcg(src) : 0u;
            }
        }
    };
    float m[G], l[G], acc[G][kMaxDimsPerLane];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int d = 0; d < kMaxDimsPerLane; ++d) acc[g][d] = 0.0f;
    }
    const int t_first = j_begin + warp * kStTile, t_step = kWarps * kStTile;
    if (t_first < j_end) issue(t_first, 0);
    const int tok = lane % kStTile, half = lane / kStTile;  // scoring: token tok, dims [half * HD / 2, +HD / 2)
    int st = 0;
    for (int t0 = t_first; t0 < j_end; t0 += t_step, st ^= 1) {
        if (t0 + t_step < j_end) issue(t0 + t_step, st ^ 1);
        else cp_async_commit();  // an empty group, so that "all but the newest" is this tile
        load_v(t0);  // VR: in flight while this tile is scored
        cp_async_wait<1>();
        __syncwarp();  // every lane's copies of this tile are visible to the warp
        const bool valid = t0 + tok < j_end;
        float s[G];
#pragma unroll
        for (int g = 0; g < G; ++g) s[g] = 0.0f;
        const uint16_t* krow = k_stage(st) + tok * L::kRowK + half * (HD / 2);
#pragma unroll
        for (int c = 0; c < HD / 16; ++c) {
            float kv[8];
            unpack_bf16x8(*reinterpret_cast<const uint4*>(krow + c * 8), kv);
#pragma unroll
            for (int g = 0; g < G; ++g) {
                if (g >= group) break;
                s[g] += dot8(q_shared + g * HD + half * (HD / 2) + c * 8, kv);
            }
        }
#pragma unroll
        for (int g = 0; g < G; ++g) {
            if (g >= group) break;
            s[g] = (s[g] + __shfl_xor_sync(0xffffffffu, s[g], kStTile)) * scale;  // the token's two halves
        }
        // Both lanes of a token hold its score; the first counts its weight and writes it.
        softmax_tile_step<G, kDims, kStTile>(s, valid, group, m, l, acc, &p_shared[warp][0][tok], kStTile, half == 0, half == 0);
        __syncwarp();
        const uint16_t* vs = VR ? nullptr : v_stage(st) + lane * kDims;
#pragma unroll
        for (int t = 0; t < kStTile; ++t) {
            float vr[4];
            if constexpr (kDims == 4) {
                const uint2 w = VR ? reinterpret_cast<const uint2&>(v_regs[VR ? t : 0]) : *reinterpret_cast<const uint2*>(vs + t * HD);
                vr[0] = __uint_as_float(w.x << 16), vr[1] = __uint_as_float(w.x & 0xffff0000u);
                vr[2] = __uint_as_float(w.y << 16), vr[3] = __uint_as_float(w.y & 0xffff0000u);
            } else {
                const uint32_t w = VR ? reinterpret_cast<const uint32_t&>(v_regs[VR ? t : 0]) : *reinterpret_cast<const uint32_t*>(vs + t * HD);
                vr[0] = __uint_as_float(w << 16), vr[1] = __uint_as_float(w & 0xffff0000u);
            }
#pragma unroll
            for (int g = 0; g < G; ++g) {
                if (g >= group) break;
                const float p = p_shared[warp][g][t];  // 0 past the range (and its V row is zero-filled)
#pragma unroll
                for (int d = 0; d < kDims; ++d) acc[g][d] += p * vr[d];
            }
        }
        __syncwarp();  // every lane is done with this stage and p_shared before they are written again
    }
    cp_async_wait<0>();
#pragma unroll
    for (int g = 0; g < G; ++g)
        for (int o = 16; o > 0; o >>= 1) l[g] += __shfl_xor_sync(0xffffffffu, l[g], o);
    __syncthreads();  // every warp is done with its stages
    merge_warps<G>(a, m, l, acc, reinterpret_cast<float*>(st_smem), seq, ikv, group, HD);
    if (gridDim.z == 1 || a.split_counters == nullptr) return;
    // Fused combine: the block that completes a (sequence, KV head) merges its splits.
    __threadfence();  // this thread's partials are visible device-wide before the block counts as done
    __syncthreads();
    __shared__ bool last;
    if (threadIdx.x == 0) {
        int32_t* counter = a.split_counters + static_cast<int64_t>(seq) * a.n_head_kv + ikv;
        last = atomicAdd(counter, 1) == static_cast<int>(gridDim.z) - 1;
        if (last) *counter = 0;  // no other block of this launch touches it again: zero for the next call
    }
    __syncthreads();
    launch_dependents();  // the o GEMV may start streaming its weights (pdl.cuh)
    if (!last) return;
    __threadfence();
    float* weight = reinterpret_cast<float*>(st_smem);  // [group][n_split], free after the merge
    const float* parts = split_parts(a, seq, ikv);
    for (int g = warp; g < group; g += kWarps) split_weights(a, parts, g, weight + g * a.n_split, lane);
    __syncthreads();
    for (int i = threadIdx.x; i < group * HD; i += blockDim.x) combine_output(a, parts, seq, ikv, i / HD, i % HD, weight + (i / HD) * a.n_split);
}

template <int G, int HD, bool VR>
int staged_blocks_per_sm() {
    constexpr int bytes = StagedLayout<G, HD, VR>::bytes;
    allow_dynamic_smem(attention_pages_staged_kernel<G, HD, VR>, bytes);
    int blocks = 0;
    FREEKV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, attention_pages_staged_kernel<G, HD, VR>, kWarps * 32, bytes));
    return blocks;
}

template <int G, int HD, bool VR>
void launch_staged_as(const PagesAttentionArgs& a, dim3 grid, cudaStream_t s) {
    constexpr int bytes = StagedLayout<G, HD, VR>::bytes;
    allow_dynamic_smem(attention_pages_staged_kernel<G, HD, VR>, bytes);
    launch_maybe_dependent_smem(attention_pages_staged_kernel<G, HD, VR>, grid, dim3(kWarps * 32), bytes, s, a.pdl, a);
}
template <int G, int HD>
void launch_staged(const PagesAttentionArgs& a, dim3 grid, cudaStream_t s) {
    if (a.v_registers) launch_staged_as<G, HD, true>(a, grid, s);
    else launch_staged_as<G, HD, false>(a, grid, s);
}
template <int G, int HD>
int staged_blocks_per_sm(bool v_registers) {
    return v_registers ? staged_blocks_per_sm<G, HD, true>() : staged_blocks_per_sm<G, HD, false>();
}

// Merges the n_split partial states of each (sequence, query head) into the output. One block per
// (KV head, sequence, group member): its first warp computes the split weights exp(m_z - m) / l
// with the lanes over the splits (independent loads, shuffle reductions), then every thread sums
// one output element's n_split partials. (One thread per head looping over the splits made a
// chain of dependent loads: ~22 us per layer at 32 splits.)
__global__ void __launch_bounds__(kCombineThreads) attention_combine_kernel(PagesAttentionArgs a) {
    launch_dependents();  // the o GEMV may start streaming its weights (pdl.cuh)
    grid_dependency_wait();  // launched as a dependent (a.pdl): the partials are the attention's
    __shared__ float weight[kMaxSplit];
    const int ikv = blockIdx.x, seq = blockIdx.y, g = blockIdx.z;
    const float* parts = split_parts(a, seq, ikv);
    if (threadIdx.x < 32) split_weights(a, parts, g, weight, threadIdx.x);
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < a.head_dim) combine_output(a, parts, seq, ikv, g, threadIdx.x, weight);
}

}  // namespace

int attention_pages_wave(int n_head, int n_head_kv, int head_dim, int elem_bytes, bool v_registers) {
    FREEKV_CHECK(n_head_kv > 0 && n_head % n_head_kv == 0, "attention_pages_wave: {} query heads on {} KV heads", n_head, n_head_kv);
    const int group = n_head / n_head_kv;
    int blocks = 0;
    if (elem_bytes == 2 && (head_dim == 64 || head_dim == 128) && group <= 8) {
        const auto per_sm = [&](auto hd_tag) {
            constexpr int HD = decltype(hd_tag)::value;
            return group == 1 ? staged_blocks_per_sm<1, HD>(v_registers) : group == 2 ? staged_blocks_per_sm<2, HD>(v_registers)
                 : group <= 4 ? staged_blocks_per_sm<4, HD>(v_registers) : staged_blocks_per_sm<8, HD>(v_registers);
        };
        blocks = head_dim == 64 ? per_sm(std::integral_constant<int, 64>{}) : per_sm(std::integral_constant<int, 128>{});
    } else {
        blocks = 8;  // the generic kernel (static shared memory, 128 threads): about eight blocks per SM
    }
    int device = 0, sms = 0;
    FREEKV_CUDA_CHECK(cudaGetDevice(&device));
    FREEKV_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    return std::max(1, blocks) * sms;
}

void attention_pages(const PagesAttentionArgs& a, void* stream) {
    FREEKV_CHECK(a.head_dim % 32 == 0 && a.head_dim <= 128, "attention_pages: head_dim {} must be 32, 64, 96 or 128",
                 a.head_dim);
    FREEKV_CHECK(a.n_head % a.n_head_kv == 0 && a.n_head / a.n_head_kv <= kMaxGroup,
                 "attention_pages: GQA group {} / {} must be 1..16", a.n_head, a.n_head_kv);
    FREEKV_CHECK(a.n_split >= 1 && a.n_split <= kMaxSplit && (a.n_split == 1 || a.partial != nullptr),
                 "attention_pages: split-K of {} (1..{}) needs scratch", a.n_split, kMaxSplit);
    const auto aligned16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    FREEKV_CHECK(aligned16(a.k) && aligned16(a.v) && a.stride_seq % 8 == 0 && a.stride_page % 8 == 0 && a.stride_tok % 8 == 0,
                 "attention_pages: K/V rows must start on 16-byte boundaries (base pointers aligned, strides multiples of 8 "
                 "elements; got strides {}, {}, {})", a.stride_seq, a.stride_page, a.stride_tok);
    const dim3 grid(static_cast<unsigned>(a.n_head_kv), static_cast<unsigned>(a.n_seq), static_cast<unsigned>(a.n_split));
    const int group = a.n_head / a.n_head_kv;
    cudaStream_t s = as_stream(stream);
    FREEKV_CHECK(a.elem_bytes == 2 || a.elem_bytes == 4, "attention_pages: element size {} must be 2 or 4", a.elem_bytes);
    const bool staged = a.elem_bytes == 2 && (a.head_dim == 64 || a.head_dim == 128) && group <= 8;
    if (staged) {
        const auto launch = [&](auto hd_tag) {
            constexpr int HD = decltype(hd_tag)::value;
            if (group == 1) launch_staged<1, HD>(a, grid, s);
            else if (group == 2) launch_staged<2, HD>(a, grid, s);
            else if (group <= 4) launch_staged<4, HD>(a, grid, s);
            else launch_staged<8, HD>(a, grid, s);
        };
        if (a.head_dim == 64) launch(std::integral_constant<int, 64>{});
        else launch(std::integral_constant<int, 128>{});
    } else {
        by_elem(a.elem_bytes, [&](auto tag) {
            using T = decltype(tag);
            if (group == 1) attention_pages_kernel<1, T><<<grid, kWarps * 32, 0, s>>>(a);
            else if (group == 2) attention_pages_kernel<2, T><<<grid, kWarps * 32, 0, s>>>(a);
            else if (group <= 4) attention_pages_kernel<4, T><<<grid, kWarps * 32, 0, s>>>(a);
            else if (group <= 8) attention_pages_kernel<8, T><<<grid, kWarps * 32, 0, s>>>(a);
            else attention_pages_kernel<16, T><<<grid, kWarps * 32, 0, s>>>(a);
        });
    }
    FREEKV_CUDA_CHECK(cudaGetLastError());
    if (a.n_split > 1 && !(staged && a.split_counters != nullptr)) {
        launch_maybe_dependent(attention_combine_kernel, dim3(grid.x, grid.y, static_cast<unsigned>(group)), dim3(kCombineThreads), s,
                               a.pdl, a);
        FREEKV_CUDA_CHECK(cudaGetLastError());
    }
}

}  // namespace freekv::cuda
