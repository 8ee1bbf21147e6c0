// page_boundary.cu: one block per (layer, boundary job, KV head); threads over the head dimension
// for the summary, then over the page's rows for the copies.
#include <cuda_runtime.h>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/page_boundary.cuh"

namespace freekv::cuda {

namespace {

__device__ float bf16_to_float(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }

__device__ uint16_t float_to_bf16(float f) {  // round to nearest even, as f32_to_bf16 on the host
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}

__global__ void page_boundary_kernel(BoundaryArgs a) {
    const int il = blockIdx.x, j = blockIdx.y, ikv = blockIdx.z;
    const BoundaryJob job = a.jobs[j];
    const int64_t token = static_cast<int64_t>(a.n_head_kv) * a.head_dim;
    const int64_t slot_elems = 2LL * a.page_size * token;
    uint16_t* layer_seq = a.budget_cache + (static_cast<int64_t>(il) * a.max_batch + job.seq) * a.n_slots * slot_elems;
    const uint16_t* src = layer_seq + job.src_slot * slot_elems;
    // ---- summary of the keys of this KV head (fp32 math, bf16 storage) ----
    uint16_t* summary = a.summaries +
                        (((static_cast<int64_t>(il) * a.max_batch + job.seq) * a.n_head_kv + ikv) * a.max_pages + job.page) *
                            2 * a.head_dim;
    for (int i = threadIdx.x; i < a.head_dim; i += blockDim.x) {
        float mx = -INFINITY, mn = INFINITY;
        for (int r = 0; r < a.page_size; ++r) {
            const float k = bf16_to_float(src[r * token + ikv * a.head_dim + i]);
            mx = fmaxf(mx, k);
            mn = fminf(mn, k);
        }
        float upper = mx, lower = mn;
        if (a.cuboid) {
            const float centre = (mx + mn) / 2.0f;
            float deviation = 0.0f;
            for (int r = 0; r < a.page_size; ++r) deviation += fabsf(bf16_to_float(src[r * token + ikv * a.head_dim + i]) - centre);
            deviation /= static_cast<float>(a.page_size);
            upper = centre + deviation;
            lower = centre - deviation;
        }
        summary[i] = float_to_bf16(upper);
        summary[a.head_dim + i] = float_to_bf16(lower);
    }
    // ---- offload: this head's 2 x page_size rows into its HND block ----
    uint16_t* block = a.cpu_chunks[job.cpu_page / a.pages_per_chunk] +
                      (static_cast<int64_t>(job.cpu_page % a.pages_per_chunk) * a.n_layer * a.n_head_kv +
                       static_cast<int64_t>(il) * a.n_head_kv + ikv) *
                          2 * a.page_size * a.head_dim;
    uint16_t* dst = job.dst_slot >= 0 ? layer_seq + job.dst_slot * slot_elems : nullptr;
    for (int e = threadIdx.x; e < 2 * a.page_size * a.head_dim; e += blockDim.x) {
        const int row = e / a.head_dim, i = e % a.head_dim;  // row: K rows 0..p-1, then V rows
        const int64_t nhd = (row / a.page_size) * a.page_size * token + (row % a.page_size) * token + ikv * a.head_dim + i;
        const uint16_t v = src[nhd];
        block[e] = v;
        if (dst != nullptr) dst[nhd] = v;  // rotation: this head's slice of the ring slot
    }
}

}  // namespace

void page_boundary(const BoundaryArgs& a, void* stream) {
    if (a.n_jobs == 0) return;
    page_boundary_kernel<<<dim3(static_cast<unsigned>(a.n_layer), static_cast<unsigned>(a.n_jobs),
                                static_cast<unsigned>(a.n_head_kv)),
                           128, 0, static_cast<cudaStream_t>(stream)>>>(a);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace freekv::cuda
