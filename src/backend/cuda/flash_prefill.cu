// flash_prefill.cu: see flash_prefill.cuh. One block of W = 4 warps per (tile of kRows query rows,
// KV head); each warp owns 16 * MT rows. Per key tile of 64 keys: S = Q K^T with mma.sync (Q and K
// fragments by ldmatrix from padded shared memory), mask, online softmax in registers, O += P V
// (V fragments by ldmatrix.trans). The next K/V tile is fetched by cp.async while the current one
// is computed (two buffers). Blocks are launched heaviest first (last query rows see most keys).
// Shared-memory rows are padded by 8 bf16 so that the 8 rows one ldmatrix reads hit distinct banks.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernel_smem.cuh"
#include "backend/cuda/flash_prefill.cuh"
#include "backend/cuda/flash_prefill_device.cuh"
#include "backend/cuda/flash_prefill_wgmma.cuh"
#include "backend/cuda/ptx_ops.cuh"
#include "core/error.h"

namespace freekv::cuda {

namespace {

using flash::fast_exp2;
using flash::store_output_pair;

constexpr int kKeys = 64;

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}


template <int D, int MT, int W>
struct Tile {
    static constexpr int kThreads = W * 32;
    static constexpr int kLd = D + 8;                // padded row, bf16 elements
    static constexpr int kRows = W * 16 * MT;   // query rows per block
    static constexpr int kSmemElems = kRows * kLd + 4 * kKeys * kLd;  // Q, K[2], V[2]
    static constexpr size_t kSmemBytes = static_cast<size_t>(kSmemElems) * 2;
};

// Loads key tile `tile` (K and V rows [tile * 64, +64) of head h) into buffer `buf` asynchronously.
template <int D, int MT, int W>
__device__ __forceinline__ void load_kv_tile(const FlashPrefillArgs& a, int64_t stride, int h, int tile, uint16_t* ks,
                                             uint16_t* vs) {
    constexpr int kChunks = D / 8;  // 16-byte chunks per row
    for (int i = threadIdx.x; i < kKeys * kChunks; i += Tile<D, MT, W>::kThreads) {
        const int r = i / kChunks, c = i % kChunks, key = tile * kKeys + r;
        const bool valid = key < a.n_keys;
        const int64_t off = (valid ? key * stride : 0) + h * D + c * 8;
        cp_async_16(ks + r * Tile<D, MT, W>::kLd + c * 8, a.k + off, valid);
        cp_async_16(vs + r * Tile<D, MT, W>::kLd + c * 8, a.v + off, valid);
    }
}

template <int D, int MT, int W>
__global__ void __launch_bounds__(W * 32) flash_prefill_kernel(const FlashPrefillArgs a) {
    using T = Tile<D, MT, W>;
    constexpr int kLd = T::kLd;
    extern __shared__ __align__(16) uint16_t smem[];
    uint16_t* qs = smem;
    uint16_t* ks = qs + T::kRows * kLd;  // two buffers of kKeys rows
    uint16_t* vs = ks + 2 * kKeys * kLd;

    const int h = blockIdx.y, group = a.n_head / a.n_head_kv;
    const int n_rows = a.n_q * group;
    const int row0 = (gridDim.x - 1 - blockIdx.x) * T::kRows;
    const int64_t stride = a.kv_stride > 0 ? a.kv_stride : static_cast<int64_t>(a.n_head_kv) * D;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;

    // Key range of the block: its last row's position bounds it; keys up to its first row's
    // position are visible to every row (no mask needed there).
    const int last_row = min(row0 + T::kRows, n_rows) - 1;
    const int last_key = min(a.q_pos0 + last_row / group, a.n_keys - 1);
    const int n_tiles = last_key / kKeys + 1;
    const int first_pos = a.q_pos0 + row0 / group;

    load_kv_tile<D, MT, W>(a, stride, h, 0, ks, vs);
    cp_async_commit();

    // Q tile -> bf16 in shared memory (rows past n_rows are zero).
    for (int i = threadIdx.x; i < T::kRows * (D / 4); i += T::kThreads) {
        const int r = i / (D / 4), c4 = i % (D / 4), gr = row0 + r;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (gr < n_rows) {
            const int tok = gr / group, g = gr % group;
            x = *reinterpret_cast<const float4*>(a.q + (static_cast<int64_t>(tok) * a.n_head + h * group + g) * D + c4 * 4);
        }
        uint2 packed;
        packed.x = pack_bf16x2(x.x, x.y);
        packed.y = pack_bf16x2(x.z, x.w);
        *reinterpret_cast<uint2*>(qs + r * kLd + c4 * 4) = packed;
    }

    // Positions of this thread's rows (gid and gid + 8 of each 16-row m-tile).
    int pos[MT][2];
    for (int mt = 0; mt < MT; ++mt)
        for (int half = 0; half < 2; ++half) {
            const int gr = row0 + warp * 16 * MT + mt * 16 + gid + half * 8;
            pos[mt][half] = a.q_pos0 + gr / group;
        }

    float o[MT][D / 8][4];
    float row_max[MT][2], row_sum[MT][2];
    for (int mt = 0; mt < MT; ++mt) {
        for (int j = 0; j < D / 8; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.f;
        row_max[mt][0] = row_max[mt][1] = -INFINITY;
        row_sum[mt][0] = row_sum[mt][1] = 0.f;
    }
    const float scale_log2 = 1.4426950408889634f * rsqrtf(static_cast<float>(D));
    const int lrow = lane % 8, lmat = lane / 8;  // ldmatrix: this lane's row address in matrix lmat

    for (int tile = 0; tile < n_tiles; ++tile) {
        const int buf = tile & 1;
        if (tile + 1 < n_tiles) {
            load_kv_tile<D, MT, W>(a, stride, h, tile + 1, ks + (buf ^ 1) * kKeys * kLd, vs + (buf ^ 1) * kKeys * kLd);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const uint16_t* kt = ks + buf * kKeys * kLd;
        const uint16_t* vt = vs + buf * kKeys * kLd;

        // S = Q K^T: [MT][8 key n-tiles][4].
        float s[MT][kKeys / 8][4];
        for (int mt = 0; mt < MT; ++mt)
            for (int j = 0; j < kKeys / 8; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            uint32_t qa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                ldmatrix_x4(qa[mt], qs + (warp * 16 * MT + mt * 16 + (lmat & 1) * 8 + lrow) * kLd + kk * 16 + (lmat >> 1) * 8);
#pragma unroll
            for (int np = 0; np < kKeys / 16; ++np) {
                uint32_t kb[4];
                ldmatrix_x4(kb, kt + (np * 16 + (lmat >> 1) * 8 + lrow) * kLd + kk * 16 + (lmat & 1) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma_bf16(s[mt][2 * np], qa[mt], kb[0], kb[1]);
                    mma_bf16(s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
                }
            }
        }

        // Mask, then the online softmax per row (a row's 64 scores live in the 4 lanes of its quad).
        const bool masked = (tile + 1) * kKeys - 1 > first_pos || (tile + 1) * kKeys > a.n_keys;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                float mx = -INFINITY;
#pragma unroll
                for (int j = 0; j < kKeys / 8; ++j)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        float& x = s[mt][j][half * 2 + e];
                        if (masked) {
                            const int key = tile * kKeys + j * 8 + tig * 2 + e;
                            if (key > pos[mt][half] || key >= a.n_keys) x = -INFINITY;
                        }
                        mx = fmaxf(mx, x);
                    }
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                // Scores stay unscaled; the maximum is kept in log2 units: p = 2^(s * scale_log2 - max).
                const float new_max = fmaxf(row_max[mt][half], mx * scale_log2);  // finite: key 0 is in tile 0 for every row
                const float alpha = fast_exp2(row_max[mt][half] - new_max);
                row_max[mt][half] = new_max;
                float sum = 0.f;
#pragma unroll
                for (int j = 0; j < kKeys / 8; ++j)
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        float& x = s[mt][j][half * 2 + e];
                        x = fast_exp2(fmaf(x, scale_log2, -new_max));
                        sum += x;
                    }
                row_sum[mt][half] = row_sum[mt][half] * alpha + sum;
#pragma unroll
                for (int j = 0; j < D / 8; ++j) {
                    o[mt][j][half * 2] *= alpha;
                    o[mt][j][half * 2 + 1] *= alpha;
                }
            }

        // O += P V: P's accumulator layout is the A-fragment layout of the next product.
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; ++kk) {
            uint32_t pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                pa[mt][0] = pack_bf16x2(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                pa[mt][1] = pack_bf16x2(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                pa[mt][2] = pack_bf16x2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                pa[mt][3] = pack_bf16x2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t vb[4];
                ldmatrix_x4_trans(vb, vt + (kk * 16 + (lmat & 1) * 8 + lrow) * kLd + dp * 16 + (lmat >> 1) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma_bf16(o[mt][2 * dp], pa[mt], vb[0], vb[1]);
                    mma_bf16(o[mt][2 * dp + 1], pa[mt], vb[2], vb[3]);
                }
            }
        }
        __syncthreads();  // every warp is done with buffer `buf` before the next load overwrites it
    }

    // Normalize and write the rows this block owns.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float sum = row_sum[mt][half];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            const float inv = 1.0f / sum;
            const int gr = row0 + warp * 16 * MT + mt * 16 + gid + half * 8;
            if (gr >= n_rows) continue;
            const int tok = gr / group, g = gr % group;
            const int64_t at = (static_cast<int64_t>(tok) * a.n_head + h * group + g) * D + tig * 2;
#pragma unroll
            for (int j = 0; j < D / 8; ++j)
                store_output_pair(a, at + j * 8, o[mt][j][half * 2] * inv, o[mt][j][half * 2 + 1] * inv);
        }
}

template <int D, int MT, int W>
void launch(const FlashPrefillArgs& a, cudaStream_t s) {
    using T = Tile<D, MT, W>;
    allow_dynamic_smem(flash_prefill_kernel<D, MT, W>, static_cast<int>(T::kSmemBytes));
    const int64_t n_rows = static_cast<int64_t>(a.n_q) * (a.n_head / a.n_head_kv);
    const dim3 grid(static_cast<unsigned>((n_rows + T::kRows - 1) / T::kRows), static_cast<unsigned>(a.n_head_kv));
    flash_prefill_kernel<D, MT, W><<<grid, T::kThreads, T::kSmemBytes, s>>>(a);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

bool flash_prefill_supports(int64_t head_dim) { return head_dim == 64 || head_dim == 128; }

bool flash_prefill_has_wgmma(int64_t head_dim) { return flash_prefill_wgmma_available(head_dim); }

void flash_prefill(const FlashPrefillArgs& a, void* stream) {
    FREEKV_CHECK(flash_prefill_supports(a.head_dim), "flash prefill: head_dim {} is not supported (64 or 128)", a.head_dim);
    FREEKV_CHECK(a.n_q >= 1 && a.n_head_kv >= 1 && a.n_head % a.n_head_kv == 0 && a.q_pos0 >= 0 && a.n_keys >= a.q_pos0 + a.n_q,
                 "flash prefill: bad shape (n_q {}, q_pos0 {}, n_keys {}, heads {}/{})", a.n_q, a.q_pos0, a.n_keys, a.n_head,
                 a.n_head_kv);
    const int64_t stride = a.kv_stride > 0 ? a.kv_stride : static_cast<int64_t>(a.n_head_kv) * a.head_dim;
    FREEKV_CHECK(reinterpret_cast<uintptr_t>(a.k) % 16 == 0 && reinterpret_cast<uintptr_t>(a.v) % 16 == 0 && stride % 8 == 0,
                 "flash prefill: K and V must be 16-byte aligned with a key stride that is a multiple of 8 elements (stride {})",
                 stride);
    FREEKV_CHECK(a.rows_per_warp == 0 || a.rows_per_warp == 16 || a.rows_per_warp == 32,
                 "flash prefill: rows_per_warp {} must be 16 or 32", a.rows_per_warp);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    const bool has_wgmma = flash_prefill_wgmma_available(a.head_dim);
    FREEKV_CHECK(a.kernel != FlashKernel::wgmma || has_wgmma,
                 "flash prefill: the wgmma kernel needs a compute-capability 9.0 device and head_dim 128 (head_dim {})",
                 a.head_dim);
    if (a.kernel == FlashKernel::wgmma || (a.kernel == FlashKernel::automatic && has_wgmma)) {
        flash_prefill_wgmma(a, s);
        return;
    }
    // 4 warps of 32 rows: the fastest measured at head_dim 128 (8 warps per block were no faster).
    const bool wide = a.rows_per_warp != 16;
    if (a.head_dim == 64) {
        wide ? launch<64, 2, 4>(a, s) : launch<64, 1, 4>(a, s);
    } else {
        wide ? launch<128, 2, 4>(a, s) : launch<128, 1, 4>(a, s);
    }
}

}  // namespace freekv::cuda
