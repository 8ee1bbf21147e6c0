// test_ops.cpp: the op harness: every op of backend/ops.h on the optimized CPU backend against the
// reference twin, on fresh random inputs, odd sizes, every weight dtype, GQA group sizes 1, 2, 4,
// 7, 8, head_dim 64 and 128, partial pages, and query chunks that start mid-sequence; the 8-bit
// KV block codes (int8, fp8) on blocks with outlier channels, against the twin and against the
// error each format allows.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "backend/ops.h"
#include "kv/paged_kv_cache.h"
#include "test_util.h"

namespace freekv {
namespace {

// NOTE: both sides compute in fp32 from identical inputs; the reference accumulates in double,
// BLAS in fp32 with another order. For sums of a few thousand terms the relative error stays
// below ~1e-6, so an NMSE bound of 1e-9 leaves margin while a wrong index gives ~1.
constexpr double kNmse = 1e-9;

struct OwnedWeight {
    std::vector<uint8_t> bytes;
    WeightView view;
};

OwnedWeight random_weight(DType dt, int64_t rows, int64_t cols, std::mt19937& rng) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    OwnedWeight w;
    w.view.dtype = dt;
    w.view.shape = rows == 1 ? std::vector<int64_t>{cols} : std::vector<int64_t>{rows, cols};
    w.bytes.resize(static_cast<size_t>(dtype_row_bytes(dt, cols) * rows));
    for (int64_t i = 0; i < rows * cols; ++i) {
        const float v = nd(rng);
        if (dt == DType::kF32) reinterpret_cast<float*>(w.bytes.data())[i] = v;
        if (dt == DType::kBF16) reinterpret_cast<uint16_t*>(w.bytes.data())[i] = f32_to_bf16(v);
        if (dt == DType::kF16) reinterpret_cast<uint16_t*>(w.bytes.data())[i] = f32_to_f16(v);
    }
    if (dt == DType::kQ8_0) {
        for (int64_t b = 0; b < rows * cols / 32; ++b) {
            const uint16_t scale = f32_to_f16(0.01f * static_cast<float>(b % 7 + 1));
            std::memcpy(&w.bytes[static_cast<size_t>(b * 34)], &scale, 2);
            for (int i = 0; i < 32; ++i) w.bytes[static_cast<size_t>(b * 34 + 2 + i)] = static_cast<uint8_t>(rng() % 255);
        }
    }
    w.view.data = w.bytes.data();
    return w;
}

std::vector<float> random_vector(int64_t n, std::mt19937& rng) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = nd(rng);
    return v;
}

TEST(Ops, MatmulAllDtypesAndShapes) {
    std::mt19937 rng(1);
    for (DType dt : {DType::kF32, DType::kBF16, DType::kF16, DType::kQ8_0}) {
        for (auto [m, n, k] : {std::tuple{1, 7, 64}, std::tuple{3, 300, 96}, std::tuple{17, 129, 2048}, std::tuple{1, 1000, 32}}) {
            const auto w = random_weight(dt, n, k, rng);
            const auto x = random_vector(int64_t{m} * k, rng);
            const auto bias = random_weight(DType::kF32, 1, n, rng);
            std::vector<float> a(static_cast<size_t>(m * n)), b(a.size());
            ref::matmul(x.data(), m, w.view, a.data(), &bias.view);
            cpu::matmul(x.data(), m, w.view, b.data(), &bias.view);
            EXPECT_LE(test::nmse(b, a), kNmse) << dtype_name(dt) << " m" << m << " n" << n << " k" << k;
        }
    }
}

// Batch invariance: a row group multiplied together with others gets the bits it gets alone (the
// plain matmul fails this from 16 rows on, and between 1 row and more).
TEST(Ops, MatmulGroupedEqualsEachGroupAlone) {
    std::mt19937 rng(3);
    const std::vector<int64_t> groups{1, 5, 1, 17, 3, 40};
    int64_t m = 0;
    for (int64_t g : groups) m += g;
    for (DType dt : {DType::kF32, DType::kBF16}) {
        for (auto [n, k] : {std::pair{300, 96}, std::pair{129, 2048}}) {
            const auto w = random_weight(dt, n, k, rng);
            const auto x = random_vector(m * k, rng);
            std::vector<float> together(static_cast<size_t>(m * n)), alone(together.size());
            cpu::matmul_grouped(x.data(), groups, w.view, together.data());
            int64_t r = 0;
            for (int64_t g : groups) {
                cpu::matmul(x.data() + r * k, g, w.view, alone.data() + r * n);
                r += g;
            }
            EXPECT_EQ(0, std::memcmp(together.data(), alone.data(), together.size() * sizeof(float)))
                << dtype_name(dt) << " n " << n << " k " << k;
        }
    }
}

TEST(Ops, RmsNormRopeSiluEmbedding) {
    std::mt19937 rng(2);
    const auto w = random_weight(DType::kBF16, 1, 96, rng);
    const auto x = random_vector(5 * 96, rng);
    std::vector<float> a(x.size()), b(x.size());
    ref::rms_norm(x.data(), 5, 96, w.view, 1e-5f, a.data());
    cpu::rms_norm(x.data(), 5, 96, w.view, 1e-5f, b.data());
    EXPECT_LE(test::nmse(b, a), kNmse);

    const std::vector<int32_t> pos{0, 1, 77, 4095, 131071};
    const std::vector<float> inv{1.0f, 0.1f, 0.01f, 0.001f};
    for (RopeStyle style : {RopeStyle::kNeox, RopeStyle::kInterleaved}) {
        auto qa = random_vector(5 * 3 * 8, rng);
        auto qb = qa;
        ref::rope(qa.data(), 5, 3, 8, pos.data(), inv, style);
        cpu::rope(qb.data(), 5, 3, 8, pos.data(), inv, style);
        EXPECT_EQ(qa, qb);
    }
    auto g1 = random_vector(1000, rng), g2 = g1;
    const auto up = random_vector(1000, rng);
    ref::silu_mul(g1.data(), up.data(), 1000);
    cpu::silu_mul(g2.data(), up.data(), 1000);
    EXPECT_LE(test::nmse(g2, g1), 1e-12);

    const auto table = random_weight(DType::kF16, 50, 64, rng);
    const std::vector<int32_t> ids{3, 49, 0, 3};
    std::vector<float> e1(4 * 64), e2(4 * 64);
    ref::embedding(table.view, ids.data(), 4, e1.data());
    cpu::embedding(table.view, ids.data(), 4, e2.data());
    EXPECT_EQ(e1, e2);
}

TEST(Ops, AttentionGroupSizesHeadDimsPartialPages) {
    std::mt19937 rng(3);
    for (int64_t head_dim : {64, 128}) {
        for (int64_t group : {1, 2, 4, 7, 8}) {
            const int64_t n_head_kv = group == 8 ? 1 : 2, n_head = n_head_kv * group, page_size = 16;
            const int64_t n_past = 45, n_tok = 13;  // ends inside a page; chunk starts mid-sequence
            PagedKvCache kv(2, n_head_kv, head_dim, page_size, 8);
            const int32_t seq = kv.add_sequence();
            kv.reserve(seq, n_past + n_tok);
            for (int64_t p = 0; p < n_past + n_tok; ++p) {
                const auto k = random_vector(n_head_kv * head_dim, rng), v = random_vector(n_head_kv * head_dim, rng);
                kv.write(1, seq, p, k.data(), v.data());
            }
            std::vector<int32_t> positions;
            for (int64_t t = 0; t < n_tok; ++t) positions.push_back(static_cast<int32_t>(n_past + t));
            const auto q = random_vector(n_tok * n_head * head_dim, rng);
            AttentionArgs args{n_tok, n_head, n_head_kv, head_dim, positions.data()};
            std::vector<float> a(q.size()), b(q.size());
            ref::attention(q.data(), args, kv.view(1, seq), a.data());
            cpu::attention(q.data(), args, kv.view(1, seq), b.data());
            EXPECT_LE(test::nmse(b, a), kNmse) << "group " << group << " head_dim " << head_dim;
        }
    }
}

TEST(Ops, HarnessCatchesAWrongAnswer) {
    // The comparison must be able to fail: a one-position shift in the cache is detected.
    std::mt19937 rng(4);
    PagedKvCache kv(1, 1, 64, 16, 4);
    const int32_t seq = kv.add_sequence();
    kv.reserve(seq, 20);
    for (int64_t p = 0; p < 20; ++p) {
        const auto k = random_vector(64, rng), v = random_vector(64, rng);
        kv.write(0, seq, p, k.data(), v.data());
    }
    const auto q = random_vector(64, rng);
    const int32_t pos19[1] = {19}, pos18[1] = {18};
    std::vector<float> a(64), b(64);
    ref::attention(q.data(), {1, 1, 1, 64, pos19}, kv.view(0, seq), a.data());
    cpu::attention(q.data(), {1, 1, 1, 64, pos18}, kv.view(0, seq), b.data());
    EXPECT_GT(test::nmse(b, a), 1e-4);
}

TEST(Ops, AttentionPagesPerHeadListsAndPartialLastPage) {
    std::mt19937 rng(5);
    for (int64_t head_dim : {64, 128}) {
        for (int64_t group : {1, 4, 7}) {
            const int64_t n_head_kv = 2, n_head = n_head_kv * group, page_size = 16, n_slots = 6;
            // Slot storage [n_slots][page_size][n_head_kv][head_dim] for K and for V.
            const auto k = random_vector(n_slots * page_size * n_head_kv * head_dim, rng);
            const auto v = random_vector(k.size(), rng);
            // KV head 0 reads slots {0, 2, 3, 5}, head 1 reads {1, 4, 2, 5}; slot 5 is the partial last page.
            const std::vector<int32_t> lists{0, 2, 3, 5, 1, 4, 2, 5};
            PagedKvView view{k.data(), v.data(), lists.data(), 4, 9, page_size, page_size * n_head_kv * head_dim,
                             n_head_kv * head_dim, 4};
            const auto q = random_vector(n_head * head_dim, rng);
            const AttentionArgs args{1, n_head, n_head_kv, head_dim, nullptr};
            std::vector<float> a(q.size()), b(q.size());
            ref::attention_pages(q.data(), args, view, a.data());
            cpu::attention_pages(q.data(), args, view, b.data());
            EXPECT_LE(test::nmse(b, a), kNmse) << "group " << group << " head_dim " << head_dim;
            // Swapping head 1's list for head 0's changes head-1 outputs: per-head lists are honoured.
            std::vector<int32_t> shared{0, 2, 3, 5, 0, 2, 3, 5};
            view.page_ids = shared.data();
            ref::attention_pages(q.data(), args, view, b.data());
            std::span<const float> head1_a(a.data() + group * head_dim, static_cast<size_t>(group * head_dim));
            std::span<const float> head1_b(b.data() + group * head_dim, static_cast<size_t>(group * head_dim));
            EXPECT_GT(test::nmse(head1_b, head1_a), 1e-3);
        }
    }
}

TEST(Ops, AttentionPagesOverAllPagesEqualsCausalAtTheLastPosition) {
    std::mt19937 rng(6);
    const int64_t n_head_kv = 2, n_head = 8, head_dim = 64, page_size = 16, n_tok = 41;
    PagedKvCache kv(1, n_head_kv, head_dim, page_size, 4);
    const int32_t seq = kv.add_sequence();
    kv.reserve(seq, n_tok);
    for (int64_t p = 0; p < n_tok; ++p) {
        const auto k = random_vector(n_head_kv * head_dim, rng), v = random_vector(n_head_kv * head_dim, rng);
        kv.write(0, seq, p, k.data(), v.data());
    }
    const auto q = random_vector(n_head * head_dim, rng);
    const int32_t last[1] = {n_tok - 1};
    std::vector<float> causal(q.size()), paged(q.size());
    cpu::attention(q.data(), {1, n_head, n_head_kv, head_dim, last}, kv.view(0, seq), causal.data());
    cpu::attention_pages(q.data(), {1, n_head, n_head_kv, head_dim, nullptr}, kv.view(0, seq), paged.data());
    EXPECT_LE(test::nmse(paged, causal), 1e-12);
}

// A (page, KV head) block of normal keys with a few outlier channels (x40, as real models' keys
// have) and values with a few loud tokens.
std::vector<float> kv_block_with_outliers(int64_t p, int64_t hd, std::mt19937& rng) {
    std::vector<float> b = random_vector(2 * p * hd, rng);
    for (int64_t r = 0; r < p; ++r)
        for (int64_t i : {int64_t{3}, hd / 2, hd - 1}) b[static_cast<size_t>(r * hd + i)] *= 40.0f;
    for (int64_t r = 0; r < p; r += 5)
        for (int64_t i = 0; i < hd; ++i) b[static_cast<size_t>((p + r) * hd + i)] *= 10.0f;
    for (int64_t r = 0; r < p; ++r) b[static_cast<size_t>((p + r) * hd + 1)] = 0.0f;  // a zero column of V
    return b;
}

TEST(Ops, KvBlockCodesRoundTripWithinTheFormatsErrorAndMatchTheTwin) {
    std::mt19937 rng(31);
    for (KvCode code : {KvCode::kInt8, KvCode::kFp8E4m3}) {
        for (auto [p, hd] : {std::pair<int64_t, int64_t>{16, 64}, {32, 128}, {7, 33}}) {
            const std::vector<float> block = kv_block_with_outliers(p, hd, rng);
            const int64_t n_scales = kv_block_scales(p, hd);
            std::vector<uint8_t> codes_ref(static_cast<size_t>(2 * p * hd)), codes_cpu(codes_ref.size());
            std::vector<float> scales_ref(static_cast<size_t>(n_scales)), scales_cpu(scales_ref.size());
            ref::quantize_kv_block(block.data(), p, hd, code, codes_ref.data(), scales_ref.data());
            cpu::quantize_kv_block(block.data(), p, hd, code, codes_cpu.data(), scales_cpu.data());
            EXPECT_EQ(scales_ref, scales_cpu);
            // The cpu twin multiplies by 1 / scale where ref divides: a value on a rounding boundary
            // may land one code apart, never more.
            int64_t apart = 0;
            for (size_t j = 0; j < codes_ref.size(); ++j) {
                const int d = code == KvCode::kInt8 ? static_cast<int8_t>(codes_ref[j]) - static_cast<int8_t>(codes_cpu[j])
                                                    : static_cast<int>(codes_ref[j]) - static_cast<int>(codes_cpu[j]);
                ASSERT_LE(std::abs(d), 1) << "element " << j;
                apart += d != 0;
            }
            EXPECT_LE(apart, static_cast<int64_t>(codes_ref.size()) / 100);
            std::vector<float> back_ref(block.size()), back_cpu(block.size());
            ref::dequantize_kv_block(codes_ref.data(), scales_ref.data(), p, hd, code, back_ref.data());
            cpu::dequantize_kv_block(codes_ref.data(), scales_ref.data(), p, hd, code, back_cpu.data());
            EXPECT_EQ(back_ref, back_cpu) << "dequantization of the same codes";
            // The error each element may have: half a step of its group (int8), or half an ulp of
            // a 3-bit mantissa (fp8: 1/16 relative) above the subnormals (2^-10 of the scale).
            for (int64_t half = 0; half < 2; ++half)
                for (int64_t r = 0; r < p; ++r)
                    for (int64_t i = 0; i < hd; ++i) {
                        const size_t j = static_cast<size_t>((half * p + r) * hd + i);
                        const float s = half == 0 ? scales_ref[static_cast<size_t>(i)] : scales_ref[static_cast<size_t>(hd + r)];
                        const float x = block[j], err = std::fabs(back_ref[j] - x);
                        const float allowed = code == KvCode::kInt8 ? 0.5f * s * 1.0001f
                                                                    : std::max(std::fabs(x) / 16.0f, s * 0.0009765625f) * 1.0001f;
                        ASSERT_LE(err, allowed) << "element " << j << " = " << x << " came back " << back_ref[j];
                    }
            // Per-channel key scales keep the normal channels precise beside the outliers: their
            // error is far below what one scale for the whole row (set by an outlier) would give.
            double err_normal = 0, amax_row = 0;
            for (int64_t r = 0; r < p; ++r) {
                const size_t j = static_cast<size_t>(r * hd);  // channel 0: not an outlier
                err_normal = std::max<double>(err_normal, std::fabs(back_ref[j] - block[j]));
                for (int64_t i = 0; i < hd; ++i) amax_row = std::max<double>(amax_row, std::fabs(block[static_cast<size_t>(r * hd + i)]));
            }
            const double per_row_step = amax_row / (code == KvCode::kInt8 ? 127.0 : 448.0);
            EXPECT_LT(err_normal, 0.5 * per_row_step) << "per-channel scales did not help the normal channels";
            // A zero group has scale 0 and comes back exactly 0.
            for (int64_t r = 0; r < p; ++r) EXPECT_EQ(back_ref[static_cast<size_t>((p + r) * hd + 1)], 0.0f);
        }
    }
}

}  // namespace
}  // namespace freekv
