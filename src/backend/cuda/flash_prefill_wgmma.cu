// flash_prefill_wgmma.cu: the flash prefill of flash_prefill.cuh on Hopper's warpgroup MMA (wgmma,
// built for sm_90a only; flash_prefill picks it on a 9.0 device). head_dim 128. One block of two
// consumer warpgroups and one producer warpgroup per (tile of 128 query rows, KV head); each consumer
// warpgroup owns 64 rows. The producer streams K/V tiles of 128 keys with the tensor memory
// accelerator (TMA, 128-byte swizzle) into a ring of kStages shared-memory stages, each guarded by a
// "full" mbarrier (the copies' bytes landed) and an "empty" one (every consumer warp is done with
// it). Per tile the consumers compute S = Q K^T (both operands in shared memory, K-major), mask and
// online softmax in registers, O += P V (P from registers, V read transposed). The two warpgroups
// take turns at the tensor cores, and each issues the next tile's S with the previous tile's P V, so
// softmax overlaps products both across and within warpgroups.
// Invariants: those of flash_prefill.cuh; shared operands are 128-row x 128-dim bf16 tiles stored as
// two halves of 64 dims, each half 128 rows of 128 bytes (16 KB, 1024-byte-aligned atoms); K and V
// are 16-byte aligned with a key stride that is a multiple of 8 elements (flash_prefill checks it).
#include <cuda.h>  // CUtensorMap and its enums only: the encoder is fetched from the driver at run time
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernel_smem.cuh"
#include "backend/cuda/flash_prefill_device.cuh"
#include "backend/cuda/flash_prefill_wgmma.cuh"
#include "backend/cuda/wgmma.cuh"
#include "core/error.h"

namespace freekv::cuda {

namespace {

using flash::fast_exp2;
using flash::store_output_pair;

constexpr int kDim = 128;      // head_dim
constexpr int kKeys = 128;     // keys per tile
constexpr int kRows = 128;     // query rows per block (two warpgroups of 64)
constexpr int kConsumers = 256;             // two warpgroups
constexpr int kThreads = kConsumers + 128;  // and the producer warpgroup (one lane of it copies)
// Registers per thread after the split (setmaxnreg): the entry cap of 384 threads is 168; the producer
// gives most of its share to the consumers (128 x 24 + 256 x 240 <= 64K).
constexpr int kProducerRegs = 24, kConsumerRegs = 240;
constexpr int kStages = 3;
constexpr uint32_t kHalfBytes = 128 * 128;       // one 64-dim half of a 128-row tile
constexpr uint32_t kTileBytes = 2 * kHalfBytes;  // 32 KB
// Q, K[kStages], V[kStages], then the mbarriers (full[kStages], empty[kStages]); 1024 of alignment slack.
constexpr size_t kSmemBytes = (1 + 2 * kStages) * kTileBytes + 2 * kStages * 8 + 1024;

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrives and announces `bytes` of asynchronous copies that will complete on this barrier's phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// Spins until the barrier's phase of the given parity has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, int parity) {
    asm volatile(
        "{\n.reg .pred done;\n"
        "RETRY:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra RETRY;\n}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}
// TMA: the box at (x = dim, y = key) of the 2-D tensor map into shared memory at dst, completing on bar.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int x, int y, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(bar)
        : "memory");
}

// Named barriers 1 and 2 (0 is __syncthreads') order the two warpgroups' turns at the tensor cores.
__device__ __forceinline__ void turn_wait(int id) { asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory"); }
__device__ __forceinline__ void turn_pass(int id) { asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory"); }

// Byte offset of dims [8 * c16, +8) of row `row` in a swizzled 128 x 128 tile.
__device__ __forceinline__ uint32_t tile_offset(int row, int c16) {
    return (c16 >> 3) * kHalfBytes + wgmma::swizzle_128b_offset(row, c16 & 7);
}

__global__ void __launch_bounds__(kThreads, 1)
    flash_prefill_wgmma_kernel(const __grid_constant__ FlashPrefillArgs a, const __grid_constant__ CUtensorMap k_map,
                               const __grid_constant__ CUtensorMap v_map) {
    extern __shared__ uint8_t smem_raw[];
    const uint32_t base = (smem_addr(smem_raw) + 1023) & ~1023u;
    uint8_t* const base_ptr = smem_raw + (base - smem_addr(smem_raw));
    const uint32_t qs = base, ks0 = base + kTileBytes, vs0 = ks0 + kStages * kTileBytes;
    const uint32_t full0 = vs0 + kStages * kTileBytes, empty0 = full0 + kStages * 8;

    const int h = blockIdx.y, group = a.n_head / a.n_head_kv;
    const int n_rows = a.n_q * group;
    const int row0 = (gridDim.x - 1 - blockIdx.x) * kRows;
    const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;

    const int last_row = min(row0 + kRows, n_rows) - 1;
    const int last_key = min(a.q_pos0 + last_row / group, a.n_keys - 1);
    const int n_tiles = last_key / kKeys + 1;
    const int first_pos = a.q_pos0 + row0 / group;

    if (threadIdx.x == 0) {
        for (int st = 0; st < kStages; ++st) {
            mbar_init(full0 + st * 8, 1);   // the producer's arrive (with the copies' bytes)
            mbar_init(empty0 + st * 8, 8);  // one arrive per consumer warp
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (threadIdx.x >= kConsumers) {  // the producer warpgroup: one lane issues every copy
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegs));
        if (threadIdx.x == kConsumers) {
            for (int tile = 0; tile < n_tiles; ++tile) {
                const int st = tile % kStages;
                if (tile >= kStages) mbar_wait(empty0 + st * 8, ((tile / kStages) - 1) & 1);
                const uint32_t full = full0 + st * 8, kt = ks0 + st * kTileBytes, vt = vs0 + st * kTileBytes;
                mbar_arrive_expect_tx(full, 2 * kTileBytes);
                for (int half = 0; half < 2; ++half) {
                    tma_load_2d(kt + half * kHalfBytes, &k_map, h * kDim + half * 64, tile * kKeys, full);
                    tma_load_2d(vt + half * kHalfBytes, &v_map, h * kDim + half * 64, tile * kKeys, full);
                }
            }
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegs));

    // Q tile -> bf16, swizzled (rows past n_rows are zero); the consumers sync on named barrier 3.
    for (int i = threadIdx.x; i < kRows * (kDim / 4); i += kConsumers) {
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
    asm volatile("bar.sync 3, 256;\n" ::: "memory");

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
    // 1 + w and, once its products are issued, passes the turn on barrier 2 - w; both issue
    // n_tiles + 1 batches, and warpgroup 1 skips its last pass so that every barrier completes.
    const int my_turn = 1 + wg, other_turn = 2 - wg;
    if (wg == 1) turn_pass(1);

    // Software pipeline within a warpgroup: each turn issues S(t) = Q K(t) and then O += P(t-1) V(t-1),
    // so the softmax of tile t runs while P(t-1) V(t-1) is on the tensor cores. A stage is released
    // once its V has been read (after that product completes).
    float s[64];
    uint32_t pa[kKeys / 16][4];
    const auto issue_s = [&](int tile) {
        const uint32_t kt = ks0 + (tile % kStages) * kTileBytes;
#pragma unroll
        for (int kk = 0; kk < kDim / 16; ++kk) {
            const uint32_t step = (kk >> 2) * kHalfBytes + (kk & 3) * 32;
            wgmma::mma_ss(s, wgmma::descriptor_128b(q_wg + step, 16, 1024), wgmma::descriptor_128b(kt + step, 16, 1024),
                          kk > 0);
        }
        wgmma::commit();
    };
    // V is MN-major (dims contiguous): 16 keys = two 1024-byte atoms, the second 64 dims 16 KB on.
    const auto issue_pv = [&](int tile) {
        const uint32_t vt = vs0 + (tile % kStages) * kTileBytes;
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; ++kk)
            wgmma::mma_rs_trans_b(o, pa[kk], wgmma::descriptor_128b(vt + kk * 2048, kHalfBytes, 1024));
        wgmma::commit();
    };
    // The accumulator layout of S is the register A-fragment layout of P, 16 keys per product.
    const auto pack_p = [&] {
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; ++kk) {
            pa[kk][0] = pack_bf16x2(s[8 * kk + 0], s[8 * kk + 1]);
            pa[kk][1] = pack_bf16x2(s[8 * kk + 2], s[8 * kk + 3]);
            pa[kk][2] = pack_bf16x2(s[8 * kk + 4], s[8 * kk + 5]);
            pa[kk][3] = pack_bf16x2(s[8 * kk + 6], s[8 * kk + 7]);
        }
    };
    const auto release = [&](int tile) {
        if (lane == 0) mbar_arrive(empty0 + (tile % kStages) * 8);  // this warp is done with the stage
    };
    // Mask and online softmax of S(tile) in place; alpha[half] is the factor O must be rescaled by.
    // s[4j + e] is (row gid, key 8j + 2 tig + e), s[4j + 2 + e] the same keys for row gid + 8; a row's
    // scores live in the 4 lanes of a quad.
    float alpha[2];
    const auto softmax = [&](int tile) {
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
            alpha[half] = fast_exp2(row_max[half] - new_max);
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
            row_sum[half] = row_sum[half] * alpha[half] + sum;
        }
    };
    const auto rescale_o = [&] {
#pragma unroll
        for (int j = 0; j < kDim / 8; ++j)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                o[4 * j + 2 * half] *= alpha[half];
                o[4 * j + 2 * half + 1] *= alpha[half];
            }
    };

    // Tile 0: S only (O is zero, nothing to rescale).
    mbar_wait(full0, 0);
    turn_wait(my_turn);
    wgmma::fence();
    issue_s(0);
    turn_pass(other_turn);
    wgmma::wait<0>();
    wgmma::fence_operands(s);
    softmax(0);
    pack_p();
    for (int tile = 1; tile < n_tiles; ++tile) {
        mbar_wait(full0 + (tile % kStages) * 8, (tile / kStages) & 1);
        turn_wait(my_turn);
        wgmma::fence();
        issue_s(tile);
        issue_pv(tile - 1);
        turn_pass(other_turn);
        wgmma::wait<1>();  // S(tile) is done; P(tile-1) V(tile-1) may still run
        wgmma::fence_operands(s);
        softmax(tile);
        wgmma::wait<0>();
        wgmma::fence_operands(o);
        release(tile - 1);
        rescale_o();
        pack_p();
    }
    // The last tile's P V.
    turn_wait(my_turn);
    wgmma::fence();
    issue_pv(n_tiles - 1);
    if (wg == 0) turn_pass(other_turn);
    wgmma::wait<0>();
    wgmma::fence_operands(o);
    release(n_tiles - 1);

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
        const int64_t at = (static_cast<int64_t>(tok) * a.n_head + h * group + g) * kDim + tig * 2;
#pragma unroll
        for (int j = 0; j < kDim / 8; ++j) store_output_pair(a, at + j * 8, o[4 * j + 2 * half] * inv, o[4 * j + 2 * half + 1] * inv);
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

namespace {

// The driver's tensor-map encoder, fetched once through the runtime (no link against libcuda).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
    static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
        void* fn = nullptr;
        cudaDriverEntryPointQueryResult found{};
        FREEKV_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
        FREEKV_CHECK(found == cudaDriverEntryPointSuccess && fn != nullptr,
                     "flash prefill: the CUDA driver has no cuTensorMapEncodeTiled (a driver for CUDA 12 or later is needed)");
        return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
    }();
    return encode;
}

// Keys [0, n_keys) x the KV heads' dims of one K or V history, read in boxes of 128 keys x 64 dims
// with the 128-byte swizzle the wgmma descriptors expect; keys past n_keys read as zeros.
CUtensorMap kv_tensor_map(const uint16_t* base, const FlashPrefillArgs& a, int64_t stride) {
    CUtensorMap map;
    const cuuint64_t dims[2] = {static_cast<cuuint64_t>(a.n_head_kv) * kDim, static_cast<cuuint64_t>(a.n_keys)};
    const cuuint64_t strides[1] = {static_cast<cuuint64_t>(stride) * 2};
    const cuuint32_t box[2] = {64, kKeys};
    const cuuint32_t element_strides[2] = {1, 1};
    const CUresult r = tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<uint16_t*>(base), dims, strides,
                                            box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    FREEKV_CHECK(r == CUDA_SUCCESS, "flash prefill: cuTensorMapEncodeTiled failed ({}) for {} keys, stride {}",
                 static_cast<int>(r), a.n_keys, stride);
    return map;
}

int64_t key_stride(const FlashPrefillArgs& a) {
    return a.kv_stride > 0 ? a.kv_stride : static_cast<int64_t>(a.n_head_kv) * kDim;
}

}  // namespace

void flash_prefill_wgmma(const FlashPrefillArgs& a, cudaStream_t s) {
    allow_dynamic_smem(flash_prefill_wgmma_kernel, static_cast<int>(kSmemBytes));
    const CUtensorMap k_map = kv_tensor_map(a.k, a, key_stride(a)), v_map = kv_tensor_map(a.v, a, key_stride(a));
    const int64_t n_rows = static_cast<int64_t>(a.n_q) * (a.n_head / a.n_head_kv);
    const dim3 grid(static_cast<unsigned>((n_rows + kRows - 1) / kRows), static_cast<unsigned>(a.n_head_kv));
    flash_prefill_wgmma_kernel<<<grid, kThreads, kSmemBytes, s>>>(a, k_map, v_map);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace freekv::cuda
