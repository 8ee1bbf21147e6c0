// top_k.cu: row-wise top-k by rounds of warp arg-max (see top_k.cuh). One warp holds a segment of
// 1024 entries in registers (32 per lane) and emits its k best in order: round r takes the best
// entry strictly below round r-1's winner in the (value desc, index asc) order, so no entry is
// marked or moved. Passes repeat over the segments' outputs (k per segment, k <= 256 < 1024, so
// each pass shrinks the row at least 4x) until one segment is left. A segment with fewer than k
// entries pads with a sentinel (-inf, INT32_MAX), which sorts after every real entry.
#include "backend/cuda/top_k.cuh"

#include <climits>
#include <cmath>

#include "backend/cuda/cuda_check.h"
#include "core/error.h"

namespace freekv::cuda {

namespace {

constexpr int kPerLane = 32;
constexpr int kSegment = 32 * kPerLane;
constexpr int kWarpsPerBlock = 4;

// a comes before b: larger value, or equal value and smaller index.
__device__ __forceinline__ bool before(float av, int ai, float bv, int bi) { return av > bv || (av == bv && ai < bi); }

// in_ids == nullptr: the entry's index in its row is its id.
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    top_k_segments_kernel(const float* in_values, const int32_t* in_ids, long long n, long long in_stride, int k,
                          float* out_values, int32_t* out_ids, long long out_stride) {
    const int lane = threadIdx.x % 32;
    const long long segment = static_cast<long long>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
    const long long begin = segment * kSegment;
    if (begin >= n) return;  // uniform per warp
    const float* vals = in_values + blockIdx.y * in_stride;
    const int32_t* ids = in_ids != nullptr ? in_ids + blockIdx.y * in_stride : nullptr;
    float v[kPerLane];
    int id[kPerLane];
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
        const long long i = begin + j * 32 + lane;
        v[j] = i < n ? vals[i] : -INFINITY;
        id[j] = i < n ? (ids != nullptr ? ids[i] : static_cast<int>(i)) : INT_MAX;
    }
    float* ov = out_values + blockIdx.y * out_stride + segment * k;
    int32_t* oi = out_ids + blockIdx.y * out_stride + segment * k;
    float pv = INFINITY;  // the previous round's winner: every entry is below (+inf, -1)
    int pi = -1;
    for (int r = 0; r < k; ++r) {
        float bv = -INFINITY;
        int bi = INT_MAX;
#pragma unroll
        for (int j = 0; j < kPerLane; ++j)
            if (before(pv, pi, v[j], id[j]) && before(v[j], id[j], bv, bi)) {
                bv = v[j];
                bi = id[j];
            }
#pragma unroll
        for (int off = 16; off > 0; off /= 2) {
            const float xv = __shfl_xor_sync(0xffffffffu, bv, off);
            const int xi = __shfl_xor_sync(0xffffffffu, bi, off);
            if (before(xv, xi, bv, bi)) {
                bv = xv;
                bi = xi;
            }
        }
        if (lane == 0) {
            ov[r] = bv;
            oi[r] = bi;
        }
        pv = bv;
        pi = bi;
    }
}

long long segments_of(long long n) { return (n + kSegment - 1) / kSegment; }

}  // namespace

int64_t top_k_scratch_elems(int32_t n_rows, int64_t n, int32_t k) { return 2 * static_cast<int64_t>(n_rows) * segments_of(n) * k; }

void top_k(const float* values, int32_t n_rows, int64_t n, int32_t k, float* scratch_values, int32_t* scratch_ids,
           int32_t* ids_out, float* values_out, cudaStream_t s) {
    FREEKV_CHECK(k >= 1 && k <= kMaxTopK && k <= n, "top-k: k = {} must be in [1, min({}, {})]", k, n, kMaxTopK);
    if (n_rows <= 0) return;
    const long long half = segments_of(n) * k;  // the first pass's output per row; later ones are smaller
    const float* in_v = values;
    const int32_t* in_i = nullptr;
    long long cur = n, in_stride = n;
    int parity = 0;
    for (;;) {
        const long long segs = segments_of(cur);
        const bool last = segs == 1;
        // Two regions per scratch buffer, [0, n_rows * half) for even passes and the next for odd
        // ones: a pass never writes where it reads.
        float* out_v = last ? values_out : scratch_values + static_cast<long long>(parity) * n_rows * half;
        int32_t* out_i = last ? ids_out : scratch_ids + static_cast<long long>(parity) * n_rows * half;
        const long long out_stride = last ? k : segs * k;
        const dim3 grid(static_cast<unsigned>((segs + kWarpsPerBlock - 1) / kWarpsPerBlock), static_cast<unsigned>(n_rows));
        top_k_segments_kernel<<<grid, kWarpsPerBlock * 32, 0, s>>>(in_v, in_i, cur, in_stride, k, out_v, out_i, out_stride);
        FREEKV_CUDA_CHECK(cudaGetLastError());
        if (last) return;
        in_v = out_v;
        in_i = out_i;
        cur = segs * k;
        in_stride = out_stride;
        parity ^= 1;
    }
}

}  // namespace freekv::cuda
