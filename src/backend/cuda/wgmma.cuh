// wgmma.cuh: Hopper's warpgroup matrix multiply (wgmma, sm_90a only) as the few inline-PTX
// primitives the flash prefill uses: shared-memory matrix descriptors for the 128-byte swizzle,
// fence / commit / wait, and m64n128k16 bf16 products with fp32 accumulators.
// Invariants:
//   - every thread of a warpgroup (4 consecutive warps starting at a multiple of 4) executes each
//     call with the same descriptors; accumulators are read only after wgmma_wait and
//     wgmma_fence_operands (the asm statements complete before the tensor cores do);
//   - a 128-byte-swizzled operand lives in 1024-byte-aligned atoms of 8 rows x 128 bytes, the
//     16-byte chunk c of row r stored at chunk c ^ (r % 8) (swizzle_128b_offset).
#pragma once

#include <cstdint>

namespace freekv::cuda::wgmma {

/// Byte offset of 16-byte chunk `chunk` (0..7) of 128-byte row `row` in a 128-byte-swizzled region.
__device__ __forceinline__ uint32_t swizzle_128b_offset(int row, int chunk) {
    return static_cast<uint32_t>(row * 128 + ((chunk ^ (row & 7)) << 4));
}

/// Descriptor of a 128-byte-swizzled operand at shared address `saddr`: `lbo` and `sbo` are the
/// leading and stride byte offsets of the PTX ISA's canonical layouts (K-major: sbo between groups of
/// 8 rows, lbo unused; MN-major: lbo between groups of 64 elements along M/N, sbo between groups of 8
/// along K).
__device__ __forceinline__ uint64_t descriptor_128b(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
    return static_cast<uint64_t>((saddr & 0x3FFFF) >> 4) | (static_cast<uint64_t>((lbo >> 4) & 0x3FFF) << 16) |
           (static_cast<uint64_t>((sbo >> 4) & 0x3FFF) << 32) | (uint64_t{1} << 62);
}

__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

/// Orders later reads of accumulators after the wait (the compiler sees them written here).
template <int N>
__device__ __forceinline__ void fence_operands(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

/// Shared memory written by ordinary stores (cp.async included) before the tensor cores read it.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// The 64 fp32 accumulators of an m64n128 product: the asm operand list %0..%63, and its bindings.
#define FREEKV_WGMMA_D64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define FREEKV_WGMMA_D64_BIND(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// d (+)= A (64 x 16, shared, K-major) * B (16 x 128, shared, K-major); scale_d 0 overwrites d.
__device__ __forceinline__ void mma_ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " FREEKV_WGMMA_D64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
        : FREEKV_WGMMA_D64_BIND(d)
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// d += A (64 x 16, registers: the m64k16 fragment) * B (16 x 128, shared, MN-major: transposed).
__device__ __forceinline__ void mma_rs_trans_b(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " FREEKV_WGMMA_D64 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : FREEKV_WGMMA_D64_BIND(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}

#undef FREEKV_WGMMA_D64
#undef FREEKV_WGMMA_D64_BIND

}  // namespace freekv::cuda::wgmma
