// kv_block_code.cuh: device code for the 8-bit CPU store (--kv-store-dtype int8|fp8): one
// (page, KV head) block is [2][page_size][head_dim] codes (K rows, then V rows), then fp32 scales,
// head_dim for K (one per channel) and page_size for V (one per token), as backend/ops.h's
// quantize_kv_block writes them; store_block_bytes (kv_kernels.cuh) pads a block to 16 bytes.
// Invariant: codes and scales are bit-identical to cpu::quantize_kv_block on the same fp32 inputs
// (amax / code max, codes of x * (1 / scale), int8 rounded to nearest even and clamped to +-127,
// fp8 e4m3 rounded to nearest even and saturated at 448), and a decoded value is code * scale as in
// cpu::dequantize_kv_block.
#pragma once

#include <cstdint>

#include "backend/cuda/bf16_device.cuh"

namespace freekv::cuda {

constexpr int32_t kStoreNative = 0, kStoreInt8 = 1, kStoreFp8 = 2;
/// Scales of one block: head_dim + page_size fp32 values, kept in shared memory while a block is coded.
constexpr int kMaxBlockScales = 512;

/// The e4m3 value of a code, built from its bits (the values of core/dtype.h fp8_e4m3_to_f32).
__device__ __forceinline__ float fp8_e4m3_value(uint8_t c) {
    const uint32_t sign = static_cast<uint32_t>(c & 0x80) << 24, e = (c >> 3) & 0xfu, m = c & 7u;
    if (e == 15 && m == 7) return __int_as_float(0x7fc00000);
    if (e == 0) return __uint_as_float(__float_as_uint(static_cast<float>(m) * 0.001953125f) | sign);  // m * 2^-9
    return __uint_as_float(sign | ((e + 120u) << 23) | (m << 20));
}

__device__ inline uint8_t fp8_e4m3_code(float f) {
    if (isnan(f)) return 0x7f;
    const uint8_t sign = signbit(f) ? 0x80 : 0;
    const float a = fminf(fabsf(f), 448.0f);
    if (a < ldexpf(1.0f, -6)) return static_cast<uint8_t>(sign | static_cast<uint8_t>(rintf(ldexpf(a, 9))));
    int e = 0;
    const float frac = frexpf(a, &e);
    int m = static_cast<int>(rintf((frac * 2.0f - 1.0f) * 8.0f));
    int biased = e - 1 + 7;
    if (m == 8) {
        m = 0;
        ++biased;
    }
    if (biased > 15 || (biased == 15 && m > 6)) return static_cast<uint8_t>(sign | 0x7e);
    return static_cast<uint8_t>(sign | (biased << 3) | m);
}

/// The value of a code before its scale.
__device__ __forceinline__ float code_value(uint8_t c, int32_t store_code) {
    return store_code == kStoreInt8 ? static_cast<float>(static_cast<int8_t>(c)) : fp8_e4m3_value(c);
}

__device__ __forceinline__ uint8_t encode_scaled(float x_over_scale, int32_t store_code) {
    if (store_code == kStoreInt8)
        return static_cast<uint8_t>(static_cast<int8_t>(fminf(fmaxf(rintf(x_over_scale), -127.0f), 127.0f)));
    return fp8_e4m3_code(x_over_scale);
}

/// Codes one block, cooperatively by the calling thread block (every thread must call it): K row r
/// channel i is k[r * row_stride + i], V likewise from v, for page_size full rows. `scales` is
/// shared memory of head_dim + page_size floats; it holds the block's scales on return.
template <class T>
__device__ void quantize_block(const T* k, const T* v, int64_t row_stride, int page_size, int head_dim, int32_t store_code,
                               uint8_t* block, float* scales) {
    const float code_max = store_code == kStoreInt8 ? 127.0f : 448.0f;
    for (int g = threadIdx.x; g < head_dim + page_size; g += blockDim.x) {  // K channels, then V tokens
        float amax = 0.0f;
        if (g < head_dim) {
            for (int r = 0; r < page_size; ++r) amax = fmaxf(amax, fabsf(to_f32(k[r * row_stride + g])));
        } else {
            const T* row = v + (g - head_dim) * row_stride;
            for (int i = 0; i < head_dim; ++i) amax = fmaxf(amax, fabsf(to_f32(row[i])));
        }
        scales[g] = amax / code_max;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < 2 * page_size * head_dim; e += blockDim.x) {
        const int row = e / head_dim, i = e % head_dim;
        const bool is_k = row < page_size;
        const float x = is_k ? to_f32(k[row * row_stride + i]) : to_f32(v[(row - page_size) * row_stride + i]);
        const float s = is_k ? scales[i] : scales[head_dim + row - page_size];
        block[e] = s == 0.0f ? uint8_t{0} : encode_scaled(x * (1.0f / s), store_code);
    }
    float* out = reinterpret_cast<float*>(block + 2LL * page_size * head_dim);
    for (int g = threadIdx.x; g < head_dim + page_size; g += blockDim.x) out[g] = scales[g];
    __syncthreads();  // `scales` may be reused once every thread is past this block
}

}  // namespace freekv::cuda
