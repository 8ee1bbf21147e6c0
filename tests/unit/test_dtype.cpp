// test_dtype.cpp: bf16 and f16 conversions (round to nearest even, subnormals, inf/nan).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "core/dtype.h"

namespace freekv {
namespace {

TEST(DType, Bf16RoundTripAndRounding) {
    EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f)), 1.0f);
    EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
    // 1 + 2^-8 is halfway between two bf16 values; ties go to even (1.0).
    EXPECT_EQ(f32_to_bf16(1.00390625f), 0x3f80);
    EXPECT_EQ(f32_to_bf16(1.01171875f), 0x3f82);  // 1 + 3*2^-8: halfway, rounds up to even
    EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DType, F16MatchesIeee) {
    EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
    EXPECT_EQ(f16_to_f32(0xc000), -2.0f);
    EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
    EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
    EXPECT_TRUE(std::isinf(f16_to_f32(0x7c00)));
    for (uint32_t h = 0; h < 0x7c00; ++h) {  // every finite positive f16 survives a round trip
        ASSERT_EQ(f32_to_f16(f16_to_f32(static_cast<uint16_t>(h))), h) << h;
    }
    EXPECT_EQ(f32_to_f16(1e6f), 0x7c00);
}

// fp8 E4M3FN against values worked out from the format (bias 7, 3 mantissa bits, subnormal step
// 2^-9, largest finite 448): every finite code survives decode then encode; ties go to the even
// mantissa; past 448 saturates; NaN stays NaN.
TEST(DType, Fp8E4m3MatchesTheFormat) {
    EXPECT_EQ(fp8_e4m3_to_f32(0x00), 0.0f);
    EXPECT_EQ(fp8_e4m3_to_f32(0x38), 1.0f);             // exponent 7 = 2^0
    EXPECT_EQ(fp8_e4m3_to_f32(0x7e), 448.0f);           // 1.75 * 2^8
    EXPECT_EQ(fp8_e4m3_to_f32(0x01), 0.001953125f);     // 2^-9
    EXPECT_EQ(fp8_e4m3_to_f32(0x08), 0.015625f);        // 2^-6, the smallest normal
    EXPECT_EQ(fp8_e4m3_to_f32(0xb8), -1.0f);
    EXPECT_TRUE(std::isnan(fp8_e4m3_to_f32(0x7f)));
    for (int c = 0; c < 256; ++c) {
        if ((c & 0x7f) == 0x7f) continue;  // NaN
        const float x = fp8_e4m3_to_f32(static_cast<uint8_t>(c));
        const uint8_t back = f32_to_fp8_e4m3(x);
        if (x == 0.0f) {
            EXPECT_EQ(back & 0x7f, 0) << c;
        } else {
            EXPECT_EQ(back, c) << "code " << c << " = " << x;
        }
    }
    EXPECT_EQ(f32_to_fp8_e4m3(1.0625f), 0x38);  // halfway between 1.0 (m 0) and 1.125 (m 1): even
    EXPECT_EQ(f32_to_fp8_e4m3(1.1875f), 0x3a);  // halfway between m 1 and m 2: even (2)
    EXPECT_EQ(f32_to_fp8_e4m3(1.1f), 0x39);
    EXPECT_EQ(f32_to_fp8_e4m3(15.5f), 0x58);    // halfway 15 (0x57) / 16 (0x58): even mantissa 0, carries the exponent
    EXPECT_EQ(f32_to_fp8_e4m3(1000.0f), 0x7e);
    EXPECT_EQ(f32_to_fp8_e4m3(-1e30f), 0xfe);
    EXPECT_EQ(f32_to_fp8_e4m3(0.0029296875f), 0x02);  // 1.5 * 2^-9: a subnormal tie, to even (2)
    EXPECT_EQ(f32_to_fp8_e4m3(std::nanf("")), 0x7f);
}

TEST(DType, Q8BlockDequantizes) {
    uint8_t block[34];
    const uint16_t scale = f32_to_f16(0.5f);
    std::memcpy(block, &scale, 2);
    for (int i = 0; i < 32; ++i) block[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(i - 16));
    float out[32];
    convert_to_f32(DType::kQ8_0, block, out, 32);
    for (int i = 0; i < 32; ++i) EXPECT_EQ(out[i], 0.5f * static_cast<float>(i - 16));
}

TEST(DType, Bf16RunConvertsEveryElement) {
    std::vector<uint16_t> src(1000);
    for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint16_t>(i * 65 + 7);  // spread over the codes
    std::vector<float> dst(src.size(), 12345.0f);
    convert_to_f32(DType::kBF16, src.data(), dst.data(), static_cast<int64_t>(src.size()));
    for (size_t i = 0; i < src.size(); ++i) {
        const float want = bf16_to_f32(src[i]);
        if (std::isnan(want)) ASSERT_TRUE(std::isnan(dst[i])) << i;
        else ASSERT_EQ(dst[i], want) << i;
    }
}

#if defined(__SANITIZE_ADDRESS__)
// The bf16 loop runs uninstrumented for speed; a read or write past either buffer must still stop
// the sanitized build, as an instrumented loop would.
TEST(DTypeDeathTest, Bf16RunPastItsBufferStopsTheAddressSanitizedBuild) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    auto src = std::make_unique<uint16_t[]>(16);
    auto dst = std::make_unique<float[]>(16);
    std::fill_n(src.get(), 16, uint16_t{0});
    EXPECT_DEATH(convert_to_f32(DType::kBF16, src.get(), dst.get(), 17), "to the right of");
    auto big = std::make_unique<float[]>(17);
    EXPECT_DEATH(convert_to_f32(DType::kBF16, std::make_unique<uint16_t[]>(17).get(), dst.get(), 17), "to the right of");
    convert_to_f32(DType::kBF16, src.get(), big.get(), 16);  // in bounds: fine
}
#endif

}  // namespace
}  // namespace freekv
