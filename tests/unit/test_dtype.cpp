// test_dtype.cpp: bf16 and f16 conversions (round to nearest even, subnormals, inf/nan).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

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

TEST(DType, Q8BlockDequantizes) {
    uint8_t block[34];
    const uint16_t scale = f32_to_f16(0.5f);
    std::memcpy(block, &scale, 2);
    for (int i = 0; i < 32; ++i) block[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(i - 16));
    float out[32];
    convert_to_f32(DType::kQ8_0, block, out, 32);
    for (int i = 0; i < 32; ++i) EXPECT_EQ(out[i], 0.5f * static_cast<float>(i - 16));
}

}  // namespace
}  // namespace freekv
