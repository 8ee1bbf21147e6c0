// select_pages.cu: device scoring and selection (see select_pages.cuh). Scoring: one warp per
// candidate page, lanes over the head dimension (coalesced summary reads), the G query heads of the
// group reduced with shuffles. Selection: one block per (sequence, KV head): aggregation in shared
// memory, top-k by a radix select on the score bits (ties to the smaller page), then the plan
// against the resident middle slots by thread 0, which also updates both maps.
#include <cuda_runtime.h>

#include <algorithm>

#include "backend/cuda/bf16_device.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/select_pages.cuh"

namespace freekv::cuda {

namespace {

constexpr int kMaxGroup = 16;
constexpr int kMaxSelect = 128;
constexpr int kSelectThreads = 256;


// Shared memory of select_kernel: the aggregated scores of the candidates, max_pages floats (96 KiB
// at most: 24,576 pages, a 786K-token context at page 32).
constexpr int kSharedBytes = 96 * 1024;

// Order-preserving bits of a float score: a larger score gives a larger unsigned key.
__device__ __forceinline__ uint32_t ordered_bits(float f) {
    const uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// One warp per candidate page (two pages per round, all four 8-byte summary loads issued first),
// lanes over the head dimension, the group's queries in shared memory.
constexpr int kScoreWarps = 4;
template <class T>
__global__ void __launch_bounds__(kScoreWarps * 32) score_pages_kernel(SelectArgs a) {
    const int ikv = blockIdx.x, row = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int seq = a.batch_of != nullptr ? a.batch_of[row] : row;
    const int group = a.n_head / a.n_head_kv, dims = a.head_dim / 32;
    if (blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0 && threadIdx.x == 0) *a.n_jobs = 0;  // select appends after
    if (a.flags != nullptr && a.flags[row * a.n_head_kv + ikv] != a.want_flag) return;  // uniform per block
    const int first = a.n_sink_page, end = a.n_pages[row] - a.n_recent_page;
    __shared__ float q_shared[kMaxGroup * 128];
    const float* q = a.q + (static_cast<int64_t>(row) * a.n_head + ikv * group) * a.head_dim;
    for (int i = threadIdx.x; i < group * a.head_dim; i += blockDim.x) q_shared[i] = q[i];
    __syncthreads();
    const T* base = static_cast<const T*>(a.summaries) + (static_cast<int64_t>(seq) * a.n_head_kv + ikv) * a.max_pages * 2 * a.head_dim;
    float* scores = a.scores + (static_cast<int64_t>(seq) * a.n_head_kv + ikv) * group * a.max_pages;
    const int stride = static_cast<int>(gridDim.z) * kScoreWarps;
    for (int j0 = first + static_cast<int>(blockIdx.z) * kScoreWarps + warp; j0 < end; j0 += 2 * stride) {
        float up[2][4], lo[2][4];
#pragma unroll
        for (int u = 0; u < 2; ++u) {
            const int j = j0 + u * stride;
            if (j >= end) break;
            const T* upper = base + static_cast<int64_t>(j) * 2 * a.head_dim + lane * dims;
            load_x4(upper, dims, up[u]);
            load_x4(upper + a.head_dim, dims, lo[u]);
        }
#pragma unroll
        for (int u = 0; u < 2; ++u) {
            const int j = j0 + u * stride;
            if (j >= end) break;
            for (int g = 0; g < group; ++g) {
                float s = 0.0f;
#pragma unroll
                for (int d = 0; d < 4; ++d) {
                    if (d >= dims) break;
                    const float qi = q_shared[g * a.head_dim + lane * dims + d];
                    s += fmaxf(qi * up[u][d], qi * lo[u][d]);
                }
                for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                if (lane == 0) scores[g * a.max_pages + j] = s;
            }
        }
    }
}

// Block-wide arg-max of (value, -index): the larger value, ties to the smaller index.
__device__ void block_argmax(float& value, int& index) {
    __shared__ float values[32];
    __shared__ int indices[32];
    for (int o = 16; o > 0; o >>= 1) {
        const float v = __shfl_xor_sync(0xffffffffu, value, o);
        const int i = __shfl_xor_sync(0xffffffffu, index, o);
        if (v > value || (v == value && i < index)) value = v, index = i;
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) values[warp] = value, indices[warp] = index;
    __syncthreads();
    if (warp == 0) {
        value = lane < static_cast<int>(blockDim.x / 32) ? values[lane] : -INFINITY;
        index = lane < static_cast<int>(blockDim.x / 32) ? indices[lane] : 0x7fffffff;
        for (int o = 16; o > 0; o >>= 1) {
            const float v = __shfl_xor_sync(0xffffffffu, value, o);
            const int i = __shfl_xor_sync(0xffffffffu, index, o);
            if (v > value || (v == value && i < index)) value = v, index = i;
        }
        if (lane == 0) values[0] = value, indices[0] = index;
    }
    __syncthreads();
    value = values[0];
    index = indices[0];
}

__device__ float block_sum(float v) {
    __shared__ float partial[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += partial[w];
    return total;
}

__global__ void select_kernel(SelectArgs a) {
    extern __shared__ float aggregated[];  // [n candidates]
    __shared__ int selected[kMaxSelect];
    const int ikv = blockIdx.x, row = blockIdx.y, group = a.n_head / a.n_head_kv;
    const int seq = a.batch_of != nullptr ? a.batch_of[row] : row;
    if (a.flags != nullptr && a.flags[row * a.n_head_kv + ikv] != a.want_flag) return;
    const int first = a.n_sink_page, n = a.n_pages[row] - a.n_recent_page - first;
    const float* scores = a.scores + (static_cast<int64_t>(seq) * a.n_head_kv + ikv) * group * a.max_pages + first;
    for (int j = threadIdx.x; j < n; j += blockDim.x) aggregated[j] = a.agg == 2 ? -INFINITY : 0.0f;
    __syncthreads();
    for (int g = 0; g < group; ++g) {
        const float* s = scores + g * a.max_pages;
        if (a.agg == 0) {  // softmax over the candidates, then the mean over the group
            float mx = -INFINITY;
            int unused = 0;
            for (int j = threadIdx.x; j < n; j += blockDim.x) mx = fmaxf(mx, s[j]);
            block_argmax(mx, unused);
            float sum = 0.0f;
            for (int j = threadIdx.x; j < n; j += blockDim.x) sum += expf(s[j] - mx);
            sum = block_sum(sum);
            for (int j = threadIdx.x; j < n; j += blockDim.x) aggregated[j] += expf(s[j] - mx) / sum;
        } else {
            for (int j = threadIdx.x; j < n; j += blockDim.x)
                aggregated[j] = a.agg == 2 ? fmaxf(aggregated[j], s[j]) : aggregated[j] + s[j];
        }
        __syncthreads();
    }
    if (a.agg != 2)
        for (int j = threadIdx.x; j < n; j += blockDim.x) aggregated[j] /= static_cast<float>(group);
    __syncthreads();
    // Top-k by a radix select on the ordered score bits, 8 bits per pass from the top: each pass
    // counts the candidates that share the prefix found so far in 256 bins, and warp 0 finds the
    // bin where the k-th largest falls. Then every candidate above that key is selected, and of
    // those equal to it the ones with the smallest page index (the CPU policy's tie rule), taken
    // in index order with warp ballots. 4 passes over n scores instead of a bitonic sort.
    __shared__ unsigned hist[256];
    __shared__ uint32_t prefix, prefix_mask;
    __shared__ int need, n_above, n_taken;
    const int k = min(a.n_select, n);
    if (threadIdx.x == 0) {
        prefix = 0;
        prefix_mask = 0;
        need = k;  // how many of the keys matching the prefix still belong to the top k
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
        __syncthreads();
        const uint32_t want = prefix, mask = prefix_mask;
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            const uint32_t key = ordered_bits(aggregated[j]);
            if ((key & mask) == want) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x < 32) {  // bins from the top: lane l owns bins 255 - 8l .. 248 - 8l
            const int lane = threadIdx.x;
            unsigned own = 0;
            for (int b = 0; b < 8; ++b) own += hist[255 - 8 * lane - b];
            unsigned cum = own;  // inclusive prefix over lanes
            for (int o = 1; o < 32; o <<= 1) {
                const unsigned v = __shfl_up_sync(0xffffffffu, cum, o);
                if (lane >= o) cum += v;
            }
            const int target = need;
            __syncwarp();  // every lane has read `need` before one lane rewrites it below
            const unsigned found = __ballot_sync(0xffffffffu, cum >= static_cast<unsigned>(target));
            const int first_lane = __ffs(found) - 1;  // k <= n: some lane reaches it
            if (lane == first_lane) {
                unsigned before = cum - own;
                for (int b = 0; b < 8; ++b) {
                    const int bin = 255 - 8 * lane - b;
                    if (before + hist[bin] >= static_cast<unsigned>(target)) {
                        prefix = want | (static_cast<uint32_t>(bin) << shift);
                        prefix_mask = mask | (255u << shift);
                        need = target - static_cast<int>(before);
                        break;
                    }
                    before += hist[bin];
                }
            }
        }
        __syncthreads();
    }
    // prefix is now the k-th largest key; `need` of the keys equal to it complete the top k.
    const uint32_t kth = prefix;
    if (threadIdx.x == 0) {
        n_above = 0;
        n_taken = 0;
    }
    __syncthreads();
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        if (ordered_bits(aggregated[j]) > kth) selected[atomicAdd(&n_above, 1)] = first + j;
    __syncthreads();
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = static_cast<int>(blockDim.x / 32);
    for (int base = 0; base < n && n_taken < need; base += static_cast<int>(blockDim.x)) {
        const int j = base + static_cast<int>(threadIdx.x);
        const bool equal = j < n && ordered_bits(aggregated[j]) == kth;
        const unsigned votes = __ballot_sync(0xffffffffu, equal);
        __shared__ int warp_count[32];
        if (lane == 0) warp_count[warp] = __popc(votes);
        __syncthreads();
        int rank = n_taken + __popc(votes & ((1u << lane) - 1u));
        for (int w = 0; w < warp; ++w) rank += warp_count[w];
        if (equal && rank < need) selected[n_above + rank] = first + j;
        __syncthreads();
        if (threadIdx.x == 0) {
            int total = 0;
            for (int w = 0; w < n_warps; ++w) total += warp_count[w];
            n_taken += total;
        }
        __syncthreads();
    }
    // ---- plan against the resident set (design doc 3.5) ----
    // The maps are read once into shared memory by all threads; thread 0 pairs pages with slots
    // in shared memory only (no dependent global loads); the writes go out in parallel.
    __shared__ int sorted[kMaxSelect], current[kMaxSelect], keep[kMaxSelect], resident[kMaxSelect];
    __shared__ int new_page[kMaxSelect], new_slot[kMaxSelect], old_page[kMaxSelect];
    __shared__ int n_new, job_base;
    int32_t* slots = a.page_of_slot + (static_cast<int64_t>(seq) * a.n_head_kv + ikv) * a.n_slots;
    int32_t* where = a.slot_of_page + (static_cast<int64_t>(seq) * a.n_head_kv + ikv) * a.max_pages;
    for (int i = threadIdx.x; i < k; i += blockDim.x) {  // ascending pages (they are distinct)
        int rank = 0;
        for (int j = 0; j < k; ++j) rank += selected[j] < selected[i] ? 1 : 0;
        sorted[rank] = selected[i];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
        current[i] = slots[a.n_sink_page + i];
        resident[i] = where[sorted[i]] >= 0 ? 1 : 0;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
        int kept = 0;
        for (int j = 0; j < k && current[i] >= 0; ++j) kept |= sorted[j] == current[i] ? 1 : 0;
        keep[i] = kept;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int n = 0, next = 0;
        for (int i = 0; i < k; ++i) {
            if (resident[i]) continue;  // already in a middle slot
            while (keep[next]) ++next;
            new_page[n] = sorted[i];
            new_slot[n] = a.n_sink_page + next;
            old_page[n] = current[next];
            ++next;
            ++n;
        }
        n_new = n;
        job_base = n > 0 ? atomicAdd(a.n_jobs, n) : 0;
    }
    __syncthreads();
    for (int m = threadIdx.x; m < n_new; m += blockDim.x) {  // evicted and new pages are disjoint
        if (old_page[m] >= 0) where[old_page[m]] = -1;
        slots[new_slot[m]] = new_page[m];
        where[new_page[m]] = new_slot[m];
        a.jobs[job_base + m] = GatherJob{seq, ikv, new_page[m], new_slot[m]};
    }
}

}  // namespace

void select_pages(const SelectArgs& a, void* stream) {
    FREEKV_CHECK(a.n_head % a.n_head_kv == 0 && a.n_head / a.n_head_kv <= kMaxGroup, "select_pages: group {} / {} > 16",
                 a.n_head, a.n_head_kv);
    FREEKV_CHECK(a.head_dim % 32 == 0 && a.head_dim <= 128, "select_pages: head_dim {} must be 32, 64, 96 or 128", a.head_dim);
    FREEKV_CHECK(a.n_select <= kMaxSelect, "select_pages: n_select {} > {}", a.n_select, kMaxSelect);
    FREEKV_CHECK(static_cast<size_t>(a.max_pages) * sizeof(float) <= kSharedBytes,
                 "select_pages: {} pages exceed one block's shared memory", a.max_pages);
    const size_t shared = static_cast<size_t>(a.max_pages) * sizeof(float);
    static const cudaError_t opt_in =
        cudaFuncSetAttribute(select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes);
    FREEKV_CUDA_CHECK(opt_in);
    auto s = static_cast<cudaStream_t>(stream);
    // About 8 candidate pages per warp: blocks along z grow with the longest possible list.
    const auto z = static_cast<unsigned>(std::clamp((a.max_pages + kScoreWarps * 8 - 1) / (kScoreWarps * 8), 1, 64));
    FREEKV_CHECK(a.elem_bytes == 2 || a.elem_bytes == 4, "select_pages: summary element size {} must be 2 or 4", a.elem_bytes);
    const dim3 grid(static_cast<unsigned>(a.n_head_kv), static_cast<unsigned>(a.n_seq), z);
    by_elem(a.elem_bytes, [&](auto tag) { score_pages_kernel<decltype(tag)><<<grid, kScoreWarps * 32, 0, s>>>(a); });
    FREEKV_CUDA_CHECK(cudaGetLastError());
    select_kernel<<<dim3(static_cast<unsigned>(a.n_head_kv), static_cast<unsigned>(a.n_seq)), kSelectThreads, shared, s>>>(a);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace freekv::cuda
