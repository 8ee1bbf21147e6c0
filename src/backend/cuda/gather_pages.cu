// gather_pages.cu: recall by one zero-copy gather kernel (design doc R1). A fixed number of thread
// blocks loops over the recall jobs, whose count is read from device memory; each block streams a
// job's HND block straight out of mapped pinned host memory with 16-byte loads, four in flight
// per thread, and writes the rows into the NHD head slice of the destination slot. No staging
// buffer, no conversion kernel, no host copy of the job list. With `staging` set the same kernel
// is the per-copy path's scatter: blocks come from a device staging buffer instead. An 8-bit
// store has its own kernel: a block's scales go to shared memory, then 16 codes per 16-byte load
// are decoded into the slot's element type.
#include <cuda_runtime.h>

#include "backend/cuda/gather_pages.cuh"
#include "backend/cuda/kv_block_code.cuh"

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

// Where job j's block starts: in staging, or in the store through the chunk table.
__device__ __forceinline__ const char* block_source(const GatherArgs& a, int j, const GatherJob& job, long long block_bytes) {
    if (a.staging != nullptr) return static_cast<const char*>(a.staging) + j * block_bytes;
    const long long cpu_page_bytes = static_cast<long long>(a.n_layer) * a.n_head_kv * block_bytes;
    const int cpu_page = a.cpu_page_of[static_cast<long long>(job.seq) * a.max_pages + job.page];
    const char* chunk = static_cast<const char*>(a.cpu_chunks[cpu_page / a.pages_per_chunk]);
    return chunk + static_cast<long long>(cpu_page % a.pages_per_chunk) * cpu_page_bytes +
           (static_cast<long long>(a.il) * a.n_head_kv + job.ikv) * block_bytes;
}

__device__ __forceinline__ void store16(uint16_t* dst, const float* x) {  // 16 values as bf16: two 16-byte stores
    uint32_t w[8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
        w[i] = static_cast<uint32_t>(float_to_bf16(x[2 * i])) | (static_cast<uint32_t>(float_to_bf16(x[2 * i + 1])) << 16);
    reinterpret_cast<int4*>(dst)[0] = make_int4(static_cast<int>(w[0]), static_cast<int>(w[1]), static_cast<int>(w[2]),
                                                static_cast<int>(w[3]));
    reinterpret_cast<int4*>(dst)[1] = make_int4(static_cast<int>(w[4]), static_cast<int>(w[5]), static_cast<int>(w[6]),
                                                static_cast<int>(w[7]));
}
__device__ __forceinline__ void store16(float* dst, const float* x) {  // four 16-byte stores
#pragma unroll
    for (int i = 0; i < 4; ++i) reinterpret_cast<float4*>(dst)[i] = make_float4(x[4 * i], x[4 * i + 1], x[4 * i + 2], x[4 * i + 3]);
}

// One round trip per job: every thread issues its code loads and (the first n_scales / 4 threads)
// the scale loads together, the scales go to shared memory, then the codes are decoded.
template <class T>
__global__ void __launch_bounds__(kThreads) gather_coded_kernel(GatherArgs a) {
    __shared__ float4 scales4[kMaxBlockScales / 4];
    const float* scales = reinterpret_cast<const float*>(scales4);
    const int n_jobs = *a.n_jobs;
    const int row_vectors = a.head_dim / 16;  // 16 codes per vector
    const int block_vectors = 2 * a.page_size * row_vectors;
    const int scale_vectors = (a.head_dim + a.page_size) / 4;
    const long long token = static_cast<long long>(a.n_head_kv) * a.head_dim;  // elements of one slot row
    const long long slot_elems = 2LL * a.page_size * token;
    for (int j = blockIdx.x; j < n_jobs; j += gridDim.x) {
        const GatherJob job = a.jobs[j];
        if (a.per_head != nullptr && threadIdx.x == 0) atomicAdd(a.per_head + job.ikv, 1ULL);
        const char* src = block_source(a, j, job, a.store_block_bytes);
        const int4* codes = reinterpret_cast<const int4*>(src);
        const float4* src_scales = reinterpret_cast<const float4*>(src + 2LL * a.page_size * a.head_dim);
        T* slot = static_cast<T*>(a.budget_cache) +
                  ((static_cast<long long>(a.il) * a.max_batch + job.seq) * a.n_slots + job.slot) * slot_elems + job.ikv * a.head_dim;
        for (int base = threadIdx.x; base - static_cast<int>(threadIdx.x) < block_vectors; base += kThreads * kUnroll) {
            int4 c[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {  // every load before the first store
                const int i = base + u * kThreads;
                if (i < block_vectors) c[u] = codes[i];
            }
            if (base == static_cast<int>(threadIdx.x)) {  // the first pass also brings the scales
                float4 sc;
                if (threadIdx.x < scale_vectors) sc = src_scales[threadIdx.x];
                if (threadIdx.x < scale_vectors) scales4[threadIdx.x] = sc;
                __syncthreads();
            }
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                const int i = base + u * kThreads;
                if (i >= block_vectors) break;
                const int row = i / row_vectors, col = (i % row_vectors) * 16;  // row: K rows, then V rows
                const uint8_t* b = reinterpret_cast<const uint8_t*>(&c[u]);
                float x[16];
                if (row < a.page_size) {
#pragma unroll
                    for (int e = 0; e < 16; ++e) x[e] = code_value(b[e], a.store_code) * scales[col + e];
                } else {
                    const float s = scales[a.head_dim + row - a.page_size];
#pragma unroll
                    for (int e = 0; e < 16; ++e) x[e] = code_value(b[e], a.store_code) * s;
                }
                const int kv = row / a.page_size, r = row % a.page_size;
                store16(slot + kv * a.page_size * token + r * token + col, x);
            }
        }
        __syncthreads();  // scales are rewritten by the next job
    }
}

}  // namespace

std::string gather_pages(const GatherArgs& a, void* stream) {
    if (a.elem_bytes != 2 && a.elem_bytes != 4) return "gather_pages: element size must be 2 or 4 bytes";
    if (a.head_dim * a.elem_bytes % 16 != 0) return "gather_pages needs head rows of a multiple of 16 bytes";
    if (a.store_code != kStoreNative) {
        if (a.head_dim % 16 != 0 || a.page_size % 4 != 0 || a.head_dim + a.page_size > kMaxBlockScales ||
            a.store_block_bytes % 16 != 0)
            return "gather_pages: an 8-bit store needs head_dim a multiple of 16, page_size a multiple of 4, head_dim + "
                   "page_size <= 512 and 16-byte blocks";
        // A coded block brings about half the bytes of a native one per round trip to host memory:
        // twice the thread blocks keep as many bytes in flight as the native gather's `ctas`.
        const int ctas = 2 * a.ctas;
        if (a.elem_bytes == 4) gather_coded_kernel<float><<<ctas, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(a);
        else gather_coded_kernel<uint16_t><<<ctas, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(a);
    } else {
        gather_pages_kernel<<<a.ctas, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(a);
    }
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? std::string() : std::string(cudaGetErrorString(e));
}

}  // namespace freekv::cuda
