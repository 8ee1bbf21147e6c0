// flash_prefill_wgmma.cu: the flash prefill of flash_prefill.cuh on Hopper's warpgroup MMA (wgmma,
// built for sm_90a only; flash_prefill picks it on a 9.0 device). head_dim 128. One block of two
// warpgroups per (tile of 128 query rows, KV head); each warpgroup owns 64 rows. Per key tile of 128
// keys: S = Q K^T (both operands in shared memory, K-major), mask and online softmax in registers,
// O += P V (P from registers, V in shared memory read transposed); the two warpgroups take turns at
// the tensor cores (one's softmax overlaps the other's products). K/V tiles are fetched by cp.async
// into 128-byte-swizzled shared memory, the next tile while the current one is computed.
// Invariants: those of flash_prefill.cuh; shared operands are 128-row x 128-dim bf16 tiles stored as
// two halves of 64 dims, each half 128 rows of 128 bytes (16 KB, 1024-byte-aligned atoms).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/flash_prefill_wgmma.cuh"
#include "backend/cuda/wgmma.cuh"

namespace freekv::cuda {

namespace {

constexpr int kDim = 128;      // head_dim
constexpr int kKeys = 128;     // keys per tile
constexpr int kRows = 128;     // query rows per block (two warpgroups of 64)
constexpr int kThreads = 256;
constexpr uint32_t kHalfBytes = 128 * 128;     // one 64-dim half of a 128-row tile
constexpr uint32_t kTileBytes = 2 * kHalfBytes;  // 32 KB
constexpr size_t kSmemBytes = 5 * kTileBytes + 1024;  // Q, K[2], V[2], alignment slack

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Named barriers 1 and 2 (0 is __syncthreads') order the two warpgroups' turns at the tensor cores.
__device__ __forceinline__ void turn_wait(int id) { asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory"); }
__device__ __forceinline__ void turn_pass(int id) { asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory"); }

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    const __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&p);
}

// Byte offset of dims [8 * c16, +8) of row `row` in a swizzled 128 x 128 tile.
__device__ __forceinline__ uint32_t tile_offset(int row, int c16) {
    return (c16 >> 3) * kHalfBytes + wgmma::swizzle_128b_offset(row, c16 & 7);
}

// K and V rows [tile * 128, +128) of KV head h into the tiles at shared addresses ks, vs.
__device__ __forceinline__ void load_kv_tile(const FlashPrefillArgs& a, int64_t stride, int h, int tile, uint32_t ks,
                                             uint32_t vs) {
#pragma unroll 4
    for (int i = threadIdx.x; i < kKeys * 16; i += kThreads) {
        const int r = i >> 4, c16 = i & 15, key = tile * kKeys + r;
        const bool valid = key < a.n_keys;
        const int64_t off = (valid ? key * stride : 0) + h * kDim + c16 * 8;
        const uint32_t o = tile_offset(r, c16);
        cp_async_16(ks + o, a.k + off, valid);
        cp_async_16(vs + o, a.v + off, valid);
    }
}

__global__ void __launch_bounds__(kThreads, 1) flash_prefill_wgmma_kernel(const FlashPrefillArgs a) {
    extern __shared__ uint8_t smem_raw[];
    const uint32_t base = (smem_addr(smem_raw) + 1023) & ~1023u;
    uint8_t* const base_ptr = smem_raw + (base - smem_addr(smem_raw));
    const uint32_t qs = base, ks0 = base + kTileBytes, vs0 = base + 3 * kTileBytes;

    const int h = blockIdx.y, group = a.n_head / a.n_head_kv;
    const int n_rows = a.n_q * group;
    const int row0 = (gridDim.x - 1 - blockIdx.x) * kRows;
    const int64_t stride = a.kv_stride > 0 ? a.kv_stride : static_cast<int64_t>(a.n_head_kv) * kDim;
    const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;

    const int last_row = min(row0 + kRows, n_rows) - 1;
    const int last_key = min(a.q_pos0 + last_row / group, a.n_keys - 1);
    const int n_tiles = last_key / kKeys + 1;
    const int first_pos = a.q_pos0 + row0 / group;

    load_kv_tile(a, stride, h, 0, ks0, vs0);
    cp_async_commit();

    // Q tile -> bf16, swizzled (rows past n_rows are zero).
    for (int i = threadIdx.x; i < kRows * (kDim / 4); i += kThreads) {
        const int r = i / (kDim / 4), c4 = i % (kDim / 4), gr = row0 + r;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (gr < n_rows) {
            const int tok = gr / group, g = gr % group;
            x = *reinterpret_cast<const float4*>(a.q + (static_cast<int64_t>(tok) * a.n_head + h * group + g) * kDim + c4 * 4);
        }
        uint2 packed;
        packed.x = pack_bf16x2(x.x, x.y);
        packed.y = pack_bf16x2(x.z, x.w);
        *reinterpret_cast<uint2*>(base_ptr + tile_offset(r, c4 >> 1) + (c4 & 1) * 8) = packed;
    }
    wgmma::fence_proxy_async();

    // This thread's two rows (gid and gid + 8 of its warp's 16) and their positions.
    const int my_row = wg * 64 + warp * 16 + gid;
    int pos[2];
    for (int half = 0; half < 2; ++half) pos[half] = a.q_pos0 + (row0 + my_row + half * 8) / group;

    float o[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) o[i] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
    const float scale_log2 = 1.4426950408889634f * rsqrtf(static_cast<float>(kDim));
    const uint32_t q_wg = qs + wg * 64 * 128;  // this warpgroup's 64 rows in each half

    // Ping-pong: the warpgroups take turns issuing their products (warpgroup 0 first), so one's
    // softmax runs while the other's products occupy the tensor cores. Warpgroup w waits on barrier
    // 1 + w and, once its products are issued, passes the turn on barrier 2 - w; both issue 2 batches
    // per tile, and warpgroup 1 skips its last pass so that every barrier completes.
    const int my_turn = 1 + wg, other_turn = 2 - wg;
    if (wg == 1) turn_pass(1);

    float s[64];
    for (int tile = 0; tile < n_tiles; ++tile) {
        const int buf = tile & 1;
        if (tile + 1 < n_tiles) {
            load_kv_tile(a, stride, h, tile + 1, ks0 + (buf ^ 1) * kTileBytes, vs0 + (buf ^ 1) * kTileBytes);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        wgmma::fence_proxy_async();
        __syncthreads();
        const uint32_t kt = ks0 + buf * kTileBytes, vt = vs0 + buf * kTileBytes;

        // S = Q K^T over the 128 dims: 8 steps of 16 (4 per 64-dim half, 32 bytes apart).
        turn_wait(my_turn);
        wgmma::fence();
#pragma unroll
        for (int kk = 0; kk < kDim / 16; ++kk) {
            const uint32_t step = (kk >> 2) * kHalfBytes + (kk & 3) * 32;
            wgmma::mma_ss(s, wgmma::descriptor_128b(q_wg + step, 16, 1024), wgmma::descriptor_128b(kt + step, 16, 1024),
                            kk > 0);
        }
        wgmma::commit();
        turn_pass(other_turn);
        wgmma::wait<0>();
        wgmma::fence_operands(s);

        // Mask, then the online softmax per row: s[4j + e] is (row gid, key 8j + 2 tig + e),
        // s[4j + 2 + e] the same keys for row gid + 8; a row's scores live in the 4 lanes of a quad.
        const bool masked = (tile + 1) * kKeys - 1 > first_pos || (tile + 1) * kKeys > a.n_keys;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < kKeys / 8; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    float& x = s[4 * j + 2 * half + e];
                    if (masked) {
                        const int key = tile * kKeys + j * 8 + tig * 2 + e;
                        if (key > pos[half] || key >= a.n_keys) x = -INFINITY;
                    }
                    mx = fmaxf(mx, x);
                }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float new_max = fmaxf(row_max[half], mx * scale_log2);  // finite: key 0 is in tile 0 for every row
            const float alpha = fast_exp2(row_max[half] - new_max);
            row_max[half] = new_max;
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < kKeys / 8; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    float& x = s[4 * j + 2 * half + e];
                    x = fast_exp2(fmaf(x, scale_log2, -new_max));
                    sum += x;
                }
            row_sum[half] = row_sum[half] * alpha + sum;
#pragma unroll
            for (int j = 0; j < kDim / 8; ++j) {
                o[4 * j + 2 * half] *= alpha;
                o[4 * j + 2 * half + 1] *= alpha;
            }
        }

        // O += P V: the accumulator layout of S is the register A-fragment layout, 16 keys per step;
        // V is MN-major (dims contiguous): 16 keys = two 1024-byte atoms, the second 64 dims 16 KB on.
        uint32_t pa[kKeys / 16][4];
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; ++kk) {
            pa[kk][0] = pack_bf16x2(s[8 * kk + 0], s[8 * kk + 1]);
            pa[kk][1] = pack_bf16x2(s[8 * kk + 2], s[8 * kk + 3]);
            pa[kk][2] = pack_bf16x2(s[8 * kk + 4], s[8 * kk + 5]);
            pa[kk][3] = pack_bf16x2(s[8 * kk + 6], s[8 * kk + 7]);
        }
        turn_wait(my_turn);
        wgmma::fence();
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; ++kk)
            wgmma::mma_rs_trans_b(o, pa[kk], wgmma::descriptor_128b(vt + kk * 2048, kHalfBytes, 1024));
        wgmma::commit();
        if (wg == 0 || tile + 1 < n_tiles) turn_pass(other_turn);
        wgmma::wait<0>();
        wgmma::fence_operands(o);
        __syncthreads();  // both warpgroups are done with buffer `buf` before the next load overwrites it
    }

    // Normalize and write this thread's two rows: o[4j + e] is dim 8j + 2 tig + e of row gid.
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        float sum = row_sum[half];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const float inv = 1.0f / sum;
        const int gr = row0 + my_row + half * 8;
        if (gr >= n_rows) continue;
        const int tok = gr / group, g = gr % group;
        float* dst = a.out + (static_cast<int64_t>(tok) * a.n_head + h * group + g) * kDim + tig * 2;
#pragma unroll
        for (int j = 0; j < kDim / 8; ++j)
            *reinterpret_cast<float2*>(dst + j * 8) = make_float2(o[4 * j + 2 * half] * inv, o[4 * j + 2 * half + 1] * inv);
    }
}

}  // namespace

bool flash_prefill_wgmma_available(int64_t head_dim) {
    if (head_dim != kDim) return false;
    static const bool hopper = [] {
        int dev = 0, major = 0, minor = 0;
        if (cudaGetDevice(&dev) != cudaSuccess) return false;
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
        return major == 9 && minor == 0;
    }();
    return hopper;
}

void flash_prefill_wgmma(const FlashPrefillArgs& a, cudaStream_t s) {
    static const bool configured = [] {
        FREEKV_CUDA_CHECK(cudaFuncSetAttribute(flash_prefill_wgmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(kSmemBytes)));
        return true;
    }();
    (void)configured;
    const int64_t n_rows = static_cast<int64_t>(a.n_q) * (a.n_head / a.n_head_kv);
    const dim3 grid(static_cast<unsigned>((n_rows + kRows - 1) / kRows), static_cast<unsigned>(a.n_head_kv));
    flash_prefill_wgmma_kernel<<<grid, kThreads, kSmemBytes, s>>>(a);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace freekv::cuda
