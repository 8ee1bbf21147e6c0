// kv_kernels.cu: see kv_kernels.cuh. Kernels that touch KV are templates over the element type
// (bf16_device.cuh), instantiated by the launchers for g.elem_bytes. Plain kernels: one thread per element for copies, one warp
// per (sequence, KV head) for the correction test, one block per (page, KV head) for installs and
// one block per (sequence, query head) for attention-mass recall.
#include <cuda_runtime.h>

#include "backend/cuda/bf16_device.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/gather_pages.cuh"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/kv_block_code.cuh"
#include "backend/cuda/kv_kernels.cuh"

namespace freekv::cuda {

namespace {

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
unsigned blocks(int64_t n) { return static_cast<unsigned>((n + 255) / 256); }


// One thread per rotated pair (a, b) of a q head or a k head; a k pair's thread also appends the
// same two elements of v.
template <class T>
__global__ void rope_append_kernel(RopeAppendArgs a, KvGeometry g) {
    launch_dependents();  // the decode attention may launch (--attn-pdl; it waits for this kernel, pdl.cuh)
    const int half = g.head_dim / 2, heads = g.n_head + g.n_head_kv;
    const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (idx >= static_cast<int64_t>(a.n_seq) * heads * half) return;
    const int i = static_cast<int>(idx % half);
    const int64_t th = idx / half;
    const int s = static_cast<int>(th / heads), h = static_cast<int>(th % heads);
    const float angle = static_cast<float>(a.positions[s]) * a.inv_freq[i];
    double sn, cs;
    sincos(static_cast<double>(angle), &sn, &cs);  // as rope_kernel
    const float c = static_cast<float>(cs), sf = static_cast<float>(sn);
    const int ea = a.neox ? i : 2 * i, eb = a.neox ? i + half : 2 * i + 1;
    const int64_t fused_row = static_cast<int64_t>(g.n_head + 2 * g.n_head_kv) * g.head_dim;  // a.qkv's row
    if (h < g.n_head) {
        float* x = a.q + (static_cast<int64_t>(s) * g.n_head + h) * g.head_dim;
        const float* src = a.qkv != nullptr ? a.qkv + s * fused_row + static_cast<int64_t>(h) * g.head_dim : x;
        const float x0 = src[ea], x1 = src[eb];
        const float r0 = x0 * c - x1 * sf, r1 = x1 * c + x0 * sf;
        x[ea] = r0;
        x[eb] = r1;
        if (a.q_dst != nullptr) {
            float* d = a.q_dst[s] + static_cast<int64_t>(h) * g.head_dim;
            d[ea] = r0;
            d[eb] = r1;
        }
        return;
    }
    const int64_t e = static_cast<int64_t>(h - g.n_head) * g.head_dim;  // the head's offset in the row
    float* x = a.k + s * g.row() + e;
    const float* src = a.qkv != nullptr ? a.qkv + s * fused_row + static_cast<int64_t>(g.n_head) * g.head_dim + e : x;
    const float x0 = src[ea], x1 = src[eb];
    const float r0 = x0 * c - x1 * sf, r1 = x1 * c + x0 * sf;
    x[ea] = r0;
    x[eb] = r1;
    T* dst = static_cast<T*>(a.layer_cache) + a.dst_offset[s] + e;
    const int64_t v_delta = g.page_size * g.row();
    const float* v = a.qkv != nullptr ? src + g.row() : a.v + s * g.row() + e;
    dst[ea] = from_f32<T>(r0);
    dst[eb] = from_f32<T>(r1);
    dst[v_delta + ea] = from_f32<T>(v[ea]);
    dst[v_delta + eb] = from_f32<T>(v[eb]);
}

__global__ void round_kernel(const float* x, int64_t n, uint16_t* out, float* rounded) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= n) return;
    const uint16_t b = float_to_bf16(x[i]);
    out[i] = b;
    if (rounded != nullptr) rounded[i] = bf16_to_float(b);
}

// Installs page `page` of KV head ikv: its summary, its block in the CPU store, its slot.
template <class T>
__device__ void install_page(const InstallArgs& a, const KvGeometry& g, int page, int ikv, int64_t row) {
    const int rows = min(g.page_size, a.n_tokens - page * g.page_size);
    const T* k = static_cast<const T*>(a.hist_k) + static_cast<int64_t>(page) * g.page_size * row + ikv * g.head_dim;
    const T* v = static_cast<const T*>(a.hist_v) + static_cast<int64_t>(page) * g.page_size * row + ikv * g.head_dim;
    const bool complete = page < a.n_complete;
    if (complete && a.layer_summaries != nullptr) {
        T* summary = static_cast<T*>(a.layer_summaries) +
                     ((static_cast<int64_t>(a.seq) * g.n_head_kv + ikv) * g.max_pages + page) * 2 * g.head_dim;
        summarize_keys(k, row, g.page_size, g.head_dim, a.cuboid, summary);
    }
    if (complete && a.cpu_chunks != nullptr) {
        const int cpu_page = a.cpu_page_of[static_cast<int64_t>(a.seq) * g.max_pages + page];
        char* bytes = static_cast<char*>(a.cpu_chunks[cpu_page / a.pages_per_chunk]) +
                      static_cast<int64_t>(cpu_page % a.pages_per_chunk) * g.cpu_page_bytes() +
                      (static_cast<int64_t>(a.il) * g.n_head_kv + ikv) * g.store_block_bytes();
        if (g.store_code != kStoreNative) {
            __shared__ float scales[kMaxBlockScales];
            quantize_block(k, v, row, g.page_size, g.head_dim, g.store_code, reinterpret_cast<uint8_t*>(bytes), scales);
        } else {
            T* block = reinterpret_cast<T*>(bytes);
            for (int e = threadIdx.x; e < 2 * g.page_size * g.head_dim; e += blockDim.x) {
                const int r = e / g.head_dim, i = e % g.head_dim;  // r: K rows, then V rows
                block[e] = r < g.page_size ? k[r * row + i] : v[(r - g.page_size) * row + i];
            }
        }
    }
    const int slot = a.slot_of_page[page];
    if (slot >= 0) {
        T* dst = static_cast<T*>(a.layer_cache) + (static_cast<int64_t>(a.seq) * g.n_slots + slot) * g.slot_elems() + ikv * g.head_dim;
        const int64_t v_delta = static_cast<int64_t>(g.page_size) * row;
        for (int e = threadIdx.x; e < rows * g.head_dim; e += blockDim.x) {
            const int r = e / g.head_dim, i = e % g.head_dim;
            dst[r * row + i] = k[r * row + i];
            dst[v_delta + r * row + i] = v[r * row + i];
        }
    }
}

template <class T>
__global__ void install_kernel(InstallArgs a, KvGeometry g) {
    const int ikv = blockIdx.y;
    const int64_t row = g.row();
    const int n_pages = (a.n_tokens + g.page_size - 1) / g.page_size;
    for (int page = blockIdx.x; page < n_pages; page += gridDim.x) {  // one pass unless the grid is smaller
        install_page<T>(a, g, page, ikv, row);
        __syncthreads();  // the next page reuses quantize_block's shared scales
    }
}

__global__ void flags_kernel(FlagArgs a, KvGeometry g) {
    const int s = blockIdx.x, ikv = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (ikv >= g.n_head_kv) return;
    const int group = g.n_head / g.n_head_kv;
    const uint8_t mode = a.mode[s];
    __shared__ int any_flag;
    if (threadIdx.x == 0) any_flag = 0;
    __syncthreads();
    uint8_t flag = 2;
    if (mode == 1) {
        flag = 1;
    } else if (mode == 3) {
        flag = a.forced[s * g.n_head_kv + ikv];
    } else if (mode == 2) {
        const float* q = a.q + (static_cast<int64_t>(s) * g.n_head + ikv * group) * g.head_dim;
        const float* p = a.q_prev[s] + static_cast<int64_t>(ikv) * group * g.head_dim;
        float total = 0.0f;
        for (int h = 0; h < group; ++h) {
            float dot = 0.0f, na = 0.0f, nb = 0.0f;
            for (int i = lane; i < g.head_dim; i += 32) {
                const float x = q[h * g.head_dim + i], y = p[h * g.head_dim + i];
                dot += x * y;
                na += x * x;
                nb += y * y;
            }
            for (int o = 16; o > 0; o >>= 1) {
                dot += __shfl_xor_sync(0xffffffffu, dot, o);
                na += __shfl_xor_sync(0xffffffffu, na, o);
                nb += __shfl_xor_sync(0xffffffffu, nb, o);
            }
            total += dot / fmaxf(sqrtf(na) * sqrtf(nb), 1e-20f);
        }
        flag = total / static_cast<float>(group) < a.tau ? 1 : 0;
    }
    if (lane == 0) {
        a.flags[s * g.n_head_kv + ikv] = flag;
        if (mode >= 2) {
            atomicAdd(&a.counters[2], 1ULL);
            if (flag == 1) {
                atomicAdd(&a.counters[3], 1ULL);
                atomicOr(&any_flag, 1);
            }
        }
    }
    __syncthreads();
    if (threadIdx.x == 0 && mode >= 2) {
        atomicAdd(&a.counters[0], 1ULL);
        if (any_flag) atomicAdd(&a.counters[1], 1ULL);
    }
}

// One block per (listed sequence, query head): logits of every key, then per-page mass.
template <class T>
__global__ void mass_kernel(MassArgs a, KvGeometry g) {
    const int item = blockIdx.x, h = blockIdx.y, group = g.n_head / g.n_head_kv, ikv = h / group;
    const int seq = a.seq[item], n_tokens = a.n_tokens[item];
    const int current = (n_tokens - 1) / g.page_size, n_pages = current + 1;
    const float scale = rsqrtf(static_cast<float>(g.head_dim));
    const float* q = a.q + (static_cast<int64_t>(item) * g.n_head + h) * g.head_dim;
    float* logits = a.scratch + (static_cast<int64_t>(item) * g.n_head + h) * g.max_pages * g.page_size;
    const int64_t row = g.row();
    for (int j = threadIdx.x; j < n_tokens; j += blockDim.x) {
        const int page = j / g.page_size, r = j % g.page_size;
        const T* key = nullptr;
        const uint8_t* codes = nullptr;  // 8-bit store: the key's codes, its channels' scales after the block's codes
        const float* scales = nullptr;
        if (page < current) {
            const int cpu_page = a.cpu_page_of[static_cast<int64_t>(seq) * g.max_pages + page];
            const char* block = static_cast<const char*>(a.cpu_chunks[cpu_page / a.pages_per_chunk]) +
                                static_cast<int64_t>(cpu_page % a.pages_per_chunk) * g.cpu_page_bytes() +
                                (static_cast<int64_t>(a.il) * g.n_head_kv + ikv) * g.store_block_bytes();
            if (g.store_code != kStoreNative) {
                codes = reinterpret_cast<const uint8_t*>(block) + static_cast<int64_t>(r) * g.head_dim;
                scales = reinterpret_cast<const float*>(block + g.block_elems());
            } else {
                key = reinterpret_cast<const T*>(block) + static_cast<int64_t>(r) * g.head_dim;
            }
        } else {
            key = static_cast<const T*>(a.layer_cache) + (static_cast<int64_t>(seq) * g.n_slots + a.current_slot) * g.slot_elems() + r * row +
                  ikv * g.head_dim;
        }
        float dot = 0.0f;
        if (codes != nullptr) {
            for (int i = 0; i < g.head_dim; ++i) dot += q[i] * (code_value(codes[i], g.store_code) * scales[i]);
        } else {
            for (int i = 0; i < g.head_dim; ++i) dot += q[i] * to_f32(key[i]);
        }
        logits[j] = dot * scale;
    }
    __syncthreads();
    __shared__ float reduce[256];
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < n_tokens; j += blockDim.x) mx = fmaxf(mx, logits[j]);
    reduce[threadIdx.x] = mx;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) reduce[threadIdx.x] = fmaxf(reduce[threadIdx.x], reduce[threadIdx.x + o]);
        __syncthreads();
    }
    mx = reduce[0];
    __syncthreads();
    const int32_t* where = a.slot_of_page + (static_cast<int64_t>(seq) * g.n_head_kv + ikv) * g.max_pages;
    float total = 0.0f, attended = 0.0f;
    for (int j = threadIdx.x; j < n_tokens; j += blockDim.x) {
        const int page = j / g.page_size;
        const float e = expf(logits[j] - mx);
        total += e;
        if (page < a.n_sink_page || page >= n_pages - a.n_recent_page || where[page] >= 0) attended += e;
    }
    __shared__ float reduce2[256];
    reduce[threadIdx.x] = total;
    reduce2[threadIdx.x] = attended;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) {
            reduce[threadIdx.x] += reduce[threadIdx.x + o];
            reduce2[threadIdx.x] += reduce2[threadIdx.x + o];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) a.out[static_cast<int64_t>(item) * g.n_head + h] = reduce2[0] / reduce[0];
}

__global__ void place_kernel(const int32_t* items, int32_t n_items, KvGeometry g, int32_t* page_of_slot,
                             int32_t* slot_of_page) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_items * g.n_layer * g.n_head_kv) return;
    const int item = i % n_items, lh = i / n_items, il = lh / g.n_head_kv, h = lh % g.n_head_kv;
    const int seq = items[3 * item], page = items[3 * item + 1], slot = items[3 * item + 2];
    const int64_t head = (static_cast<int64_t>(il) * g.max_batch + seq) * g.n_head_kv + h;
    page_of_slot[head * g.n_slots + slot] = page;
    slot_of_page[head * g.max_pages + page] = slot;
}

__device__ float hash_uniform(uint64_t seed, uint64_t i) {  // splitmix64 of (seed, i) -> [-1, 1)
    uint64_t z = seed * 0x9e3779b97f4a7c15ULL + i + 0x632be59bd9b4e019ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return static_cast<float>(z >> 40) / static_cast<float>(1 << 23) - 1.0f;
}

template <class T>
__global__ void fill_kernel(T* out, int64_t n, uint64_t seed) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)
        out[i] = from_f32<T>(hash_uniform(seed, static_cast<uint64_t>(i)));
}

__global__ void copy_kernel(const float* x, int64_t n, float* out, float* rounded) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= n) return;
    out[i] = x[i];
    if (rounded != nullptr) rounded[i] = x[i];
}

void check_elem(int elem_bytes) {
    FREEKV_CHECK(elem_bytes == 2 || elem_bytes == 4, "KV element size {} must be 2 (bf16) or 4 (fp32)", elem_bytes);
}

}  // namespace

void rope_append(const RopeAppendArgs& a, const KvGeometry& g, void* stream) {
    check_elem(g.elem_bytes);
    FREEKV_CHECK(g.head_dim % 2 == 0, "rope_append: head_dim {} must be even", g.head_dim);
    const int64_t n = static_cast<int64_t>(a.n_seq) * (g.n_head + g.n_head_kv) * (g.head_dim / 2);
    if (n == 0) return;
    by_elem(g.elem_bytes, [&](auto tag) { rope_append_kernel<decltype(tag)><<<blocks(n), 256, 0, as_stream(stream)>>>(a, g); });
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void round_bf16(const float* x, int64_t n, uint16_t* out, void* stream, float* rounded) {
    round_kernel<<<blocks(n), 256, 0, as_stream(stream)>>>(x, n, out, rounded);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void store_kv(const float* x, int64_t n, void* out, int elem_bytes, void* stream, float* rounded) {
    check_elem(elem_bytes);
    if (elem_bytes == 2) {
        round_bf16(x, n, static_cast<uint16_t*>(out), stream, rounded);
        return;
    }
    copy_kernel<<<blocks(n), 256, 0, as_stream(stream)>>>(x, n, static_cast<float*>(out), rounded);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void install_pages(const InstallArgs& a, const KvGeometry& g, void* stream, int page_blocks) {
    check_elem(g.elem_bytes);
    const int n_pages = (a.n_tokens + g.page_size - 1) / g.page_size;
    if (n_pages == 0) return;
    const int x = page_blocks > 0 ? std::min(n_pages, page_blocks) : n_pages;
    const dim3 grid(static_cast<unsigned>(x), static_cast<unsigned>(g.n_head_kv));
    by_elem(g.elem_bytes, [&](auto tag) { install_kernel<decltype(tag)><<<grid, 128, 0, as_stream(stream)>>>(a, g); });
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void correction_flags(const FlagArgs& a, const KvGeometry& g, void* stream) {
    FREEKV_CHECK(g.n_head_kv <= 32, "correction_flags: {} KV heads > 32", g.n_head_kv);
    flags_kernel<<<static_cast<unsigned>(a.n_seq), static_cast<unsigned>(32 * g.n_head_kv), 0, as_stream(stream)>>>(a, g);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void mass_recall(const MassArgs& a, const KvGeometry& g, void* stream) {
    if (a.n_list == 0) return;
    check_elem(g.elem_bytes);
    const dim3 grid(static_cast<unsigned>(a.n_list), static_cast<unsigned>(g.n_head));
    by_elem(g.elem_bytes, [&](auto tag) { mass_kernel<decltype(tag)><<<grid, 256, 0, as_stream(stream)>>>(a, g); });
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void place_pages(const int32_t* items, int32_t n_items, const KvGeometry& g, int32_t* page_of_slot, int32_t* slot_of_page,
                 void* stream) {
    if (n_items == 0) return;
    place_kernel<<<blocks(static_cast<int64_t>(n_items) * g.n_layer * g.n_head_kv), 256, 0, as_stream(stream)>>>(
        items, n_items, g, page_of_slot, slot_of_page);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void fill_random_kv(void* out, int64_t n, uint64_t seed, int elem_bytes, void* stream) {
    check_elem(elem_bytes);
    by_elem(elem_bytes, [&](auto tag) {
        using T = decltype(tag);
        fill_kernel<T><<<1024, 256, 0, as_stream(stream)>>>(static_cast<T*>(out), n, seed);
    });
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

void fill_random_f32(float* out, int64_t n, uint64_t seed, void* stream) {
    fill_kernel<float><<<1024, 256, 0, as_stream(stream)>>>(out, n, seed);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace freekv::cuda
