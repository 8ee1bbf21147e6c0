// page_boundary.cu: one block per (layer, boundary job, KV head); threads over the head dimension
// for the summary, then over the page's rows for the copies.
#include <cuda_runtime.h>

#include "backend/cuda/bf16_device.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kv_block_code.cuh"
#include "backend/cuda/page_boundary.cuh"

namespace freekv::cuda {

namespace {


template <class T>
__global__ void page_boundary_kernel(BoundaryArgs a) {
    const int il = blockIdx.x, j = blockIdx.y, ikv = blockIdx.z;
    const BoundaryJob job = a.jobs[j];
    const int64_t token = static_cast<int64_t>(a.n_head_kv) * a.head_dim;
    const int64_t slot_elems = 2LL * a.page_size * token;
    T* layer_seq = static_cast<T*>(a.budget_cache) + (static_cast<int64_t>(il) * a.max_batch + job.seq) * a.n_slots * slot_elems;
    const T* src = layer_seq + job.src_slot * slot_elems;
    // ---- summary of the keys of this KV head (fp32 math, T storage) ----
    T* summary = static_cast<T*>(a.summaries) +
                        (((static_cast<int64_t>(il) * a.max_batch + job.seq) * a.n_head_kv + ikv) * a.max_pages + job.page) *
                            2 * a.head_dim;
    summarize_keys(src + ikv * a.head_dim, token, a.page_size, a.head_dim, a.cuboid, summary);
    // ---- offload: this head's 2 x page_size rows into its HND block ----
    char* block = static_cast<char*>(a.cpu_chunks[job.cpu_page / a.pages_per_chunk]) +
                  (static_cast<int64_t>(job.cpu_page % a.pages_per_chunk) * a.n_layer * a.n_head_kv +
                   static_cast<int64_t>(il) * a.n_head_kv + ikv) *
                      a.store_block_bytes;
    const bool coded = a.store_code != kStoreNative;
    if (coded) {
        __shared__ float scales[kMaxBlockScales];
        quantize_block(src + ikv * a.head_dim, src + a.page_size * token + ikv * a.head_dim, token, a.page_size, a.head_dim,
                       a.store_code, reinterpret_cast<uint8_t*>(block), scales);
    }
    T* dst = job.dst_slot >= 0 ? layer_seq + job.dst_slot * slot_elems : nullptr;
    if (coded && dst == nullptr) return;
    for (int e = threadIdx.x; e < 2 * a.page_size * a.head_dim; e += blockDim.x) {
        const int row = e / a.head_dim, i = e % a.head_dim;  // row: K rows 0..p-1, then V rows
        const int64_t nhd = (row / a.page_size) * a.page_size * token + (row % a.page_size) * token + ikv * a.head_dim + i;
        const T v = src[nhd];
        if (!coded) reinterpret_cast<T*>(block)[e] = v;
        if (dst != nullptr) dst[nhd] = v;  // rotation: this head's slice of the ring slot
    }
}

}  // namespace

void page_boundary(const BoundaryArgs& a, void* stream) {
    if (a.n_jobs == 0) return;
    FREEKV_CHECK(a.elem_bytes == 2 || a.elem_bytes == 4, "page_boundary: element size {} must be 2 or 4", a.elem_bytes);
    FREEKV_CHECK(a.store_code == kStoreNative || a.head_dim + a.page_size <= kMaxBlockScales,
                 "page_boundary: an 8-bit store needs head_dim + page_size <= {}", kMaxBlockScales);
    BoundaryArgs args = a;
    if (args.store_code == kStoreNative) args.store_block_bytes = 2LL * a.page_size * a.head_dim * a.elem_bytes;
    FREEKV_CHECK(args.store_block_bytes > 0, "page_boundary: store_block_bytes of an 8-bit store not set");
    const dim3 grid(static_cast<unsigned>(a.n_layer), static_cast<unsigned>(a.n_jobs), static_cast<unsigned>(a.n_head_kv));
    by_elem(a.elem_bytes, [&](auto tag) {
        page_boundary_kernel<decltype(tag)><<<grid, 128, 0, static_cast<cudaStream_t>(stream)>>>(args);
    });
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace freekv::cuda
