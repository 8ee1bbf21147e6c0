// gather_pages.cu: recall by one zero-copy gather kernel (design doc R1). A fixed number of thread
// blocks loops over the recall jobs, whose count is read from device memory; each block streams a
// job's HND block straight out of mapped pinned host memory with 16-byte loads, four in flight
// per thread, and writes the rows into the NHD head slice of the destination slot. No staging
// buffer, no conversion kernel, no host copy of the job list. With `staging` set the same kernel
// is the per-copy path's scatter: blocks come from a device staging buffer instead.
#include <cuda_runtime.h>

#include "backend/cuda/gather_pages.cuh"

namespace freekv::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

__global__ void __launch_bounds__(kThreads) gather_pages_kernel(GatherArgs a) {
    const int n_jobs = *a.n_jobs;
    // Everything in bytes: the element type only sets the sizes.
    const int row_bytes = a.head_dim * a.elem_bytes;
    const int row_vectors = row_bytes / 16;                  // 16-byte vectors per head row
    const int block_vectors = 2 * a.page_size * row_vectors;  // K rows then V rows
    const long long block_bytes = 2LL * a.page_size * row_bytes;
    const long long cpu_page_bytes = static_cast<long long>(a.n_layer) * a.n_head_kv * block_bytes;
    const long long token_bytes = static_cast<long long>(a.n_head_kv) * row_bytes;
    const long long slot_bytes = 2LL * a.page_size * token_bytes;
    for (int j = blockIdx.x; j < n_jobs; j += gridDim.x) {
        const GatherJob job = a.jobs[j];
        if (a.per_head != nullptr && threadIdx.x == 0) atomicAdd(a.per_head + job.ikv, 1ULL);
        const int4* src = nullptr;
        if (a.staging != nullptr) {
            src = reinterpret_cast<const int4*>(static_cast<const char*>(a.staging) + j * block_bytes);
        } else {
            const int cpu_page = a.cpu_page_of[static_cast<long long>(job.seq) * a.max_pages + job.page];
            const char* chunk = static_cast<const char*>(a.cpu_chunks[cpu_page / a.pages_per_chunk]);
            src = reinterpret_cast<const int4*>(chunk + static_cast<long long>(cpu_page % a.pages_per_chunk) * cpu_page_bytes +
                                                (static_cast<long long>(a.il) * a.n_head_kv + job.ikv) * block_bytes);
        }
        char* slot = static_cast<char*>(a.budget_cache) +
                     ((static_cast<long long>(a.il) * a.max_batch + job.seq) * a.n_slots + job.slot) * slot_bytes +
                     static_cast<long long>(job.ikv) * row_bytes;
        for (int base = threadIdx.x; base < block_vectors; base += kThreads * kUnroll) {
            int4 v[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {  // issue every load before the first store
                const int i = base + u * kThreads;
                if (i < block_vectors) v[u] = src[i];
            }
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                const int i = base + u * kThreads;
                if (i >= block_vectors) break;
                const int row = i / row_vectors;                  // 0 .. 2p-1: K rows, then V rows
                const int kv = row / a.page_size, r = row % a.page_size;
                int4* dst = reinterpret_cast<int4*>(slot + kv * a.page_size * token_bytes + r * token_bytes);
                dst[i % row_vectors] = v[u];
            }
        }
    }
}

}  // namespace

std::string gather_pages(const GatherArgs& a, void* stream) {
    if (a.elem_bytes != 2 && a.elem_bytes != 4) return "gather_pages: element size must be 2 or 4 bytes";
    if (a.head_dim * a.elem_bytes % 16 != 0) return "gather_pages needs head rows of a multiple of 16 bytes";
    gather_pages_kernel<<<a.ctas, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(a);
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? std::string() : std::string(cudaGetErrorString(e));
}

}  // namespace freekv::cuda
