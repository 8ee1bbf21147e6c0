// dtype.cpp: scalar conversions between storage types and fp32.
#include "core/dtype.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "core/error.h"

#if defined(__SANITIZE_ADDRESS__)
#define FREEKV_ADDRESS_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)  // clang before 15 names it only this way
#define FREEKV_ADDRESS_SANITIZED 1
#endif
#endif
#ifdef FREEKV_ADDRESS_SANITIZED
#include <sanitizer/asan_interface.h>
#endif

namespace freekv {

namespace {

// Under AddressSanitizer: stops at the first poisoned byte of [p, p + bytes), as a per-element check
// inside the loop would. Elsewhere nothing.
void check_region(const void* p, size_t bytes) {
#ifdef FREEKV_ADDRESS_SANITIZED
    if (void* bad = __asan_region_is_poisoned(const_cast<void*>(p), bytes)) {
        __asan_describe_address(bad);
        std::abort();
    }
#else
    (void)p;
    (void)bytes;
#endif
}

// NOTE: the CPU backend converts bf16 weights tile by tile in every matmul. Instrumented per element
// (the sanitized builds) this loop was 85% of a reference-model decode step and most of CI's test
// time, so it runs without the sanitizers; its caller checks both whole ranges once instead. (It
// reads weights, written only at load, into a tile of the calling thread: nothing for TSan here.)
__attribute__((no_sanitize("address", "undefined", "thread"))) void bf16_run_to_f32(const uint16_t* src, float* dst,
                                                                          int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        const uint32_t bits = static_cast<uint32_t>(src[i]) << 16;
        std::memcpy(dst + i, &bits, 4);  // not std::bit_cast: at -O1 that stays an (instrumented) call
    }
}

}  // namespace

std::string_view dtype_name(DType t) {
    switch (t) {
        case DType::kF32: return "f32";
        case DType::kF16: return "f16";
        case DType::kBF16: return "bf16";
        case DType::kI32: return "i32";
        case DType::kI64: return "i64";
        case DType::kQ8_0: return "q8_0";
    }
    return "?";
}

float f16_to_f32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        // zero or subnormal: value = mant * 2^-24
        const float v = std::ldexp(static_cast<float>(mant), -24);
        return sign ? -v : v;
    }
    if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
    return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

float fp8_e4m3_to_f32(uint8_t c) {
    const float sign = (c & 0x80) != 0 ? -1.0f : 1.0f;
    const int e = (c >> 3) & 0xf, m = c & 7;
    if (e == 15 && m == 7) return std::numeric_limits<float>::quiet_NaN();
    if (e == 0) return sign * std::ldexp(static_cast<float>(m), -9);  // subnormal: m * 2^-9
    return sign * std::ldexp(1.0f + static_cast<float>(m) / 8.0f, e - 7);
}

uint8_t f32_to_fp8_e4m3(float f) {
    if (std::isnan(f)) return 0x7f;
    const uint8_t sign = std::signbit(f) ? 0x80 : 0;
    const float a = std::min(std::fabs(f), kFp8E4m3Max);
    if (a < std::ldexp(1.0f, -6)) {  // subnormal range: steps of 2^-9 (8 rounds up to the smallest normal)
        return static_cast<uint8_t>(sign | static_cast<uint8_t>(std::nearbyint(std::ldexp(a, 9))));
    }
    int e = 0;
    const float frac = std::frexp(a, &e);  // a = frac * 2^e, frac in [0.5, 1)
    // a = (1 + m/8) * 2^(e - 1): the mantissa's 3 bits, to nearest even (the default rounding mode).
    int m = static_cast<int>(std::nearbyint((frac * 2.0f - 1.0f) * 8.0f));
    int biased = e - 1 + 7;
    if (m == 8) {
        m = 0;
        ++biased;
    }
    if (biased > 15 || (biased == 15 && m > 6)) return static_cast<uint8_t>(sign | 0x7e);  // 448
    return static_cast<uint8_t>(sign | (biased << 3) | m);
}

uint16_t f32_to_f16(float f) {
    const uint32_t u = std::bit_cast<uint32_t>(f);
    const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
    const float a = std::fabs(f);
    if (std::isnan(f)) return static_cast<uint16_t>(sign | 0x7e00u);
    if (a >= 65520.0f) return static_cast<uint16_t>(sign | 0x7c00u);
    if (a < 6.103515625e-05f) {  // subnormal range: round to nearest multiple of 2^-24
        const float m = std::nearbyint(a * 16777216.0f);
        return static_cast<uint16_t>(sign | static_cast<uint16_t>(m));
    }
    uint32_t mag = std::bit_cast<uint32_t>(a);
    mag += 0xfffu + ((mag >> 13) & 1u);  // round to nearest even at bit 13
    const uint32_t exp = (mag >> 23) - 112u;
    return static_cast<uint16_t>(sign | (exp << 10) | ((mag >> 13) & 0x3ffu));
}

void convert_to_f32(DType from, const void* src, float* dst, int64_t n) {
    switch (from) {
        case DType::kF32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
        case DType::kBF16:
            check_region(src, static_cast<size_t>(n) * 2);
            check_region(dst, static_cast<size_t>(n) * 4);
            bf16_run_to_f32(static_cast<const uint16_t*>(src), dst, n);
            return;
        case DType::kF16: {
            const auto* s = static_cast<const uint16_t*>(src);
            for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
            return;
        }
        case DType::kQ8_0: {
            FREEKV_CHECK(n % kQ8BlockSize == 0, "q8_0 row of {} elements is not a multiple of 32", n);
            const auto* s = static_cast<const uint8_t*>(src);
            for (int64_t b = 0; b < n / kQ8BlockSize; ++b) {
                uint16_t scale_bits;
                std::memcpy(&scale_bits, s + b * kQ8BlockBytes, 2);
                const float scale = f16_to_f32(scale_bits);
                const auto* q = reinterpret_cast<const int8_t*>(s + b * kQ8BlockBytes + 2);
                for (int64_t i = 0; i < kQ8BlockSize; ++i)
                    dst[b * kQ8BlockSize + i] = scale * static_cast<float>(q[i]);
            }
            return;
        }
        case DType::kI32:
        case DType::kI64: break;
    }
    FREEKV_FAIL("cannot convert {} to f32", dtype_name(from));
}

}  // namespace freekv
