// dtype.h: element types of tensors and their conversions to and from fp32.
// Invariants: bf16 <-> f32 conversion rounds to nearest even (as PyTorch does); f16 follows IEEE
// 754 binary16 with subnormals; fp8 is OCP E4M3FN (bias 7, subnormals, no infinity, saturating at
// +-448 when narrowed, NaN 0x7f / 0xff); conversions are exact when widening.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace freekv {

enum class DType : uint8_t { kF32, kF16, kBF16, kI32, kI64, kQ8_0 };

/// Bytes per element; for block-quantized types, 0 (use dtype_row_bytes).
constexpr size_t dtype_size(DType t) {
    switch (t) {
        case DType::kF32: return 4;
        case DType::kF16: return 2;
        case DType::kBF16: return 2;
        case DType::kI32: return 4;
        case DType::kI64: return 8;
        case DType::kQ8_0: return 0;
    }
    return 0;
}

/// Q8_0 stores 32 values as one f16 scale plus 32 int8: 34 bytes per block.
inline constexpr int64_t kQ8BlockSize = 32;
inline constexpr int64_t kQ8BlockBytes = 34;

/// Bytes of n contiguous elements (n must be a multiple of the block size for Q8_0).
constexpr int64_t dtype_row_bytes(DType t, int64_t n) {
    if (t == DType::kQ8_0) return n / kQ8BlockSize * kQ8BlockBytes;
    return n * static_cast<int64_t>(dtype_size(t));
}

std::string_view dtype_name(DType t);

inline float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

inline uint16_t f32_to_bf16(float f) {
    uint32_t u = std::bit_cast<uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
/// fp8 E4M3FN: to nearest even, finite values past 448 saturate to +-448, NaN to 0x7f.
uint8_t f32_to_fp8_e4m3(float f);
float fp8_e4m3_to_f32(uint8_t c);
constexpr float kFp8E4m3Max = 448.0f;

/// Converts n elements of type `from` (F32, F16, BF16 or Q8_0) at src to fp32.
void convert_to_f32(DType from, const void* src, float* dst, int64_t n);

}  // namespace freekv
