// test_cuda_ops.cpp: the CUDA ops against the reference twin on fresh random inputs: odd sizes,
// GQA groups 1, 2, 4, 7, 8, 16, head_dim 64 and 128, ragged page lists with partial last pages,
// outputs poisoned with NaN before each launch. Skips without a CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <random>
#include <vector>

#include <fmt/format.h>

#include "backend/cuda/gather_pages.cuh"
#include "backend/cuda/kv_kernels.cuh"
#include "backend/cuda/ops_cuda.cuh"
#include "backend/cuda/page_boundary.cuh"
#include "backend/cuda/pinned_store.cuh"
#include "backend/cuda/flash_prefill.cuh"
#include "backend/cuda/prefill_attention.cuh"
#include "core/error.h"
#include "backend/cuda/select_pages.cuh"
#include "backend/cuda/top_k.cuh"
#include "retrieval/selection.h"
#include "backend/ops.h"
#include "core/dtype.h"
#include "test_util.h"

namespace freekv {
namespace {

// NOTE: the GPU and the reference compute in fp32 from identical inputs with different summation
// orders (the reference accumulates in double); 1e-9 leaves room for that and fails on any wrong
// index or lost term (NMSE ~1e-2 or worse).
constexpr double kNmse = 1e-9;

class CudaOps : public ::testing::Test {
protected:
    void SetUp() override {
        int n = 0;
        if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) GTEST_SKIP() << "no CUDA device";
    }
};

template <typename T>
T* to_device(const std::vector<T>& v) {
    T* d = nullptr;
    EXPECT_EQ(cudaMalloc(&d, v.size() * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    return d;
}

template <typename T>
std::vector<T> to_host(const T* d, size_t n) {
    std::vector<T> v(n);
    EXPECT_EQ(cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
}

float* poisoned(size_t n) {
    return to_device(std::vector<float>(n, std::nanf("")));
}

std::vector<float> randn(size_t n, std::mt19937& rng) {
    std::normal_distribution<float> nd;
    std::vector<float> v(n);
    for (auto& x : v) x = nd(rng);
    return v;
}

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
    std::vector<uint16_t> b(v.size());
    for (size_t i = 0; i < v.size(); ++i) b[i] = f32_to_bf16(v[i]);
    return b;
}

std::vector<float> from_bf16(const std::vector<uint16_t>& b) {
    std::vector<float> v(b.size());
    for (size_t i = 0; i < b.size(); ++i) v[i] = bf16_to_f32(b[i]);
    return v;
}

TEST_F(CudaOps, ElementwiseAndNorms) {
    std::mt19937 rng(11);
    // rms_norm: 5 rows of 1000 (4-wide loads) and 3 of 4097 (scalar)
    for (auto [rows, n] : {std::pair{5, 1000}, std::pair{3, 4097}}) {
        const auto x = randn(static_cast<size_t>(rows * n), rng);
        const auto w = to_bf16(randn(static_cast<size_t>(n), rng));
        float* dx = to_device(x);
        uint16_t* dw = to_device(w);
        float* dy = poisoned(x.size());
        cuda::rms_norm(dx, rows, n, dw, 1e-5f, dy, nullptr);
        std::vector<float> want(x.size());
        ref::rms_norm(x.data(), rows, n, WeightView{"w", DType::kBF16, {n}, w.data()}, 1e-5f, want.data());
        EXPECT_LE(test::nmse(to_host(dy, x.size()), want), kNmse) << "rms_norm width " << n;
        // With y_bf16: the same y, and bf16(y) beside it exactly as to_bf16 rounds it.
        uint16_t* dyb = to_device(std::vector<uint16_t>(x.size(), 0xffff));
        uint16_t* dconv = to_device(std::vector<uint16_t>(x.size(), 0));
        const auto y_alone = to_host(dy, x.size());
        cuda::rms_norm(dx, rows, n, cuda::WeightRef{dw, false}, 1e-5f, dy, nullptr, dyb);
        EXPECT_EQ(to_host(dy, x.size()), y_alone) << "rms_norm with y_bf16, width " << n;
        cuda::to_bf16(dy, static_cast<int64_t>(x.size()), dconv, nullptr);
        EXPECT_EQ(to_host(dyb, x.size()), to_host(dconv, x.size())) << "rms_norm's y_bf16, width " << n;
        cudaFree(dyb), cudaFree(dconv);
        // fp32 weights (--gpu-dtype f32): unrounded values, the same reference
        const auto w32 = randn(static_cast<size_t>(n), rng);
        float* dw32 = to_device(w32);
        cuda::rms_norm(dx, rows, n, cuda::WeightRef{dw32, true}, 1e-5f, dy, nullptr);
        ref::rms_norm(x.data(), rows, n, WeightView{"w", DType::kF32, {n}, w32.data()}, 1e-5f, want.data());
        EXPECT_LE(test::nmse(to_host(dy, x.size()), want), kNmse) << "rms_norm fp32 width " << n;
        cudaFree(dx), cudaFree(dw), cudaFree(dy), cudaFree(dw32);
    }
    // rope, both styles, positions up to 131071
    const std::vector<int32_t> pos{0, 1, 77, 4095, 8191, 65537, 131071};
    std::vector<float> inv(64);
    for (size_t i = 0; i < inv.size(); ++i) inv[i] = std::pow(500000.0f, -static_cast<float>(2 * i) / 128.0f);
    for (bool neox : {true, false}) {
        auto q = randn(7 * 3 * 128, rng);
        float* dq = to_device(q);
        int32_t* dpos = to_device(pos);
        float* dinv = to_device(inv);
        cuda::rope(dq, 7, 3, 128, dpos, dinv, neox, nullptr);
        ref::rope(q.data(), 7, 3, 128, pos.data(), inv, neox ? RopeStyle::kNeox : RopeStyle::kInterleaved);
        EXPECT_LE(test::nmse(to_host(dq, q.size()), q), kNmse) << (neox ? "neox" : "interleaved");
        cudaFree(dq), cudaFree(dpos), cudaFree(dinv);
    }
    // silu_mul on an odd length
    auto g = randn(100003, rng);
    const auto u = randn(g.size(), rng);
    float* dg = to_device(g);
    float* du = to_device(u);
    float* dg2 = to_device(g);
    cuda::silu_mul(dg, du, static_cast<int64_t>(g.size()), nullptr);
    ref::silu_mul(g.data(), u.data(), static_cast<int64_t>(g.size()));
    EXPECT_LE(test::nmse(to_host(dg, g.size()), g), kNmse);
    {  // with out_bf16: the same result, and its bf16 as to_bf16 rounds it
        uint16_t* gb = to_device(std::vector<uint16_t>(g.size(), 0xffff));
        uint16_t* conv = to_device(std::vector<uint16_t>(g.size(), 0));
        cuda::silu_mul(dg2, du, static_cast<int64_t>(g.size()), nullptr, gb);
        EXPECT_EQ(to_host(dg2, g.size()), to_host(dg, g.size())) << "silu_mul with out_bf16";
        cuda::to_bf16(dg2, static_cast<int64_t>(g.size()), conv, nullptr);
        EXPECT_EQ(to_host(gb, g.size()), to_host(conv, g.size())) << "silu_mul's out_bf16";
        cudaFree(gb), cudaFree(conv), cudaFree(dg2);
    }
    {  // silu_mul_rows over interleaved [gate | up] rows: each row as silu_mul makes it, bf16 beside
        const int64_t rows = 5, width = 1003;
        const auto gu = randn(static_cast<size_t>(rows * 2 * width), rng);
        std::vector<float> want(static_cast<size_t>(rows * width));
        for (int64_t r = 0; r < rows; ++r) {
            float* rg = to_device(std::vector<float>(gu.begin() + r * 2 * width, gu.begin() + r * 2 * width + width));
            float* ru = to_device(std::vector<float>(gu.begin() + r * 2 * width + width, gu.begin() + (r + 1) * 2 * width));
            cuda::silu_mul(rg, ru, width, nullptr);
            const auto row = to_host(rg, static_cast<size_t>(width));
            std::copy(row.begin(), row.end(), want.begin() + r * width);
            cudaFree(rg), cudaFree(ru);
        }
        float* dgu = to_device(gu);
        float* out = poisoned(want.size());
        uint16_t* ob = to_device(std::vector<uint16_t>(want.size(), 0xffff));
        cuda::silu_mul_rows(dgu, rows, width, out, nullptr, ob);
        EXPECT_EQ(to_host(out, want.size()), want) << "silu_mul_rows";
        EXPECT_EQ(to_host(ob, want.size()), to_bf16(want)) << "silu_mul_rows's out_bf16";
        EXPECT_EQ(to_host(dgu, gu.size()), gu) << "silu_mul_rows wrote into its input";
        cudaFree(dgu), cudaFree(out), cudaFree(ob);
    }
    // embedding
    const auto table = to_bf16(randn(1000 * 200, rng));
    const std::vector<int32_t> ids{999, 0, 17, 17, 512};
    uint16_t* dt = to_device(table);
    int32_t* dids = to_device(ids);
    float* de = poisoned(ids.size() * 200);
    cuda::embedding(dt, dids, 5, 200, de, nullptr);
    std::vector<float> we(ids.size() * 200);
    ref::embedding(WeightView{"t", DType::kBF16, {1000, 200}, table.data()}, ids.data(), 5, we.data());
    EXPECT_EQ(to_host(de, we.size()), we);
    const auto table32 = randn(1000 * 200, rng);
    float* dt32 = to_device(table32);
    cuda::embedding(cuda::WeightRef{dt32, true}, dids, 5, 200, de, nullptr);
    ref::embedding(WeightView{"t", DType::kF32, {1000, 200}, table32.data()}, ids.data(), 5, we.data());
    EXPECT_EQ(to_host(de, we.size()), we) << "fp32 table";
    cudaFree(dt32);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    for (void* p : {static_cast<void*>(dg), static_cast<void*>(du), static_cast<void*>(dt), static_cast<void*>(dids),
                    static_cast<void*>(de)})
        cudaFree(p);
}

// The decode step's fused RoPE + K/V append + query-ring store against its three parts: q and k
// rotated bit for bit as cuda::rope rotates them, the ring copy equal to the rotated q, the cache
// holding the rotated k and the unrotated v (rounded to the element type) at each row's offset, and
// nothing else in the cache touched. Both RoPE styles, head_dim 64 and 128, bf16 and fp32 caches,
// q, k and v apart or as the fused product's interleaved rows (RopeAppendArgs::qkv).
TEST_F(CudaOps, RopeAppendEqualsRopeThenAppendThenStore) {
    std::mt19937 rng(41);
    const int n_seq = 3, n_head = 8, n_head_kv = 2, page_size = 16, n_slots = 4;
    const std::vector<int32_t> pos{5, 4095, 131071};
    for (int head_dim : {64, 128})
    for (int elem_bytes : {2, 4})
    for (bool neox : {true, false})
    for (bool fused : {false, true}) {
        cuda::KvGeometry g;
        g.n_layer = 1, g.max_batch = n_seq, g.n_slots = n_slots, g.max_pages = 8, g.page_size = page_size;
        g.n_head = n_head, g.n_head_kv = n_head_kv, g.head_dim = head_dim, g.elem_bytes = elem_bytes;
        const int64_t row = g.row(), q_dim = int64_t{n_head} * head_dim;
        std::vector<float> inv(static_cast<size_t>(head_dim / 2));
        for (size_t i = 0; i < inv.size(); ++i) inv[i] = std::pow(500000.0f, -static_cast<float>(2 * i) / static_cast<float>(head_dim));
        const auto q = randn(static_cast<size_t>(n_seq * q_dim), rng), k = randn(static_cast<size_t>(n_seq * row), rng),
                   v = randn(k.size(), rng);
        // Row s goes to slot (2 s + 1) % n_slots of sequence s, token 3 s + 1 of the page.
        std::vector<int64_t> offset(n_seq);
        for (int s = 0; s < n_seq; ++s) offset[static_cast<size_t>(s)] = (s * n_slots + (2 * s + 1) % n_slots) * g.slot_elems() + (3 * s + 1) * row;
        const int64_t cache_elems = g.layer_cache_elems();
        const std::vector<uint8_t> cache_init(static_cast<size_t>(cache_elems * elem_bytes), 0x5a);
        int32_t* dpos = to_device(pos);
        float* dinv = to_device(inv);
        int64_t* doff = to_device(offset);
        uint8_t* dcache = to_device(cache_init);
        // fused: q, k and v read from the interleaved rows of the fused product ([n_seq][q | k | v]).
        std::vector<float> qkv;
        for (int s = 0; s < n_seq; ++s) {
            qkv.insert(qkv.end(), q.begin() + s * q_dim, q.begin() + (s + 1) * q_dim);
            qkv.insert(qkv.end(), k.begin() + s * row, k.begin() + (s + 1) * row);
            qkv.insert(qkv.end(), v.begin() + s * row, v.begin() + (s + 1) * row);
        }
        float* dqkv = fused ? to_device(qkv) : nullptr;
        float *dq = fused ? poisoned(q.size()) : to_device(q), *dk = fused ? poisoned(k.size()) : to_device(k),
              *dv = fused ? nullptr : to_device(v), *ring = poisoned(static_cast<size_t>(n_seq * q_dim));
        std::vector<float*> ring_rows(n_seq);
        for (int s = 0; s < n_seq; ++s) ring_rows[static_cast<size_t>(s)] = ring + s * q_dim;
        float** dring = to_device(ring_rows);
        cuda::RopeAppendArgs a;
        a.q = dq, a.k = dk, a.v = dv, a.qkv = dqkv, a.n_seq = n_seq, a.positions = dpos, a.inv_freq = dinv, a.neox = neox;
        a.dst_offset = doff, a.layer_cache = dcache, a.q_dst = dring;
        cuda::rope_append(a, g, nullptr);
        // The parts: cuda::rope on copies of q and k.
        float *wq = to_device(q), *wk = to_device(k);
        cuda::rope(wq, n_seq, n_head, head_dim, dpos, dinv, neox, nullptr);
        cuda::rope(wk, n_seq, n_head_kv, head_dim, dpos, dinv, neox, nullptr);
        const auto want_q = to_host(wq, q.size()), want_k = to_host(wk, k.size());
        const std::string what = fmt::format("head_dim {} elem_bytes {} {}{}", head_dim, elem_bytes, neox ? "neox" : "interleaved",
                                             fused ? " fused rows" : "");
        EXPECT_EQ(to_host(dq, q.size()), want_q) << what;
        EXPECT_EQ(to_host(ring, q.size()), want_q) << what << ": the ring copy";
        EXPECT_EQ(to_host(dk, k.size()), want_k) << what;
        std::vector<uint8_t> want_cache = cache_init;
        auto put = [&](int64_t at, float x) {
            if (elem_bytes == 2) {
                const uint16_t b = f32_to_bf16(x);
                std::memcpy(want_cache.data() + at * 2, &b, 2);
            } else {
                std::memcpy(want_cache.data() + at * 4, &x, 4);
            }
        };
        for (int s = 0; s < n_seq; ++s)
            for (int64_t e = 0; e < row; ++e) {
                put(offset[static_cast<size_t>(s)] + e, want_k[static_cast<size_t>(s * row + e)]);
                put(offset[static_cast<size_t>(s)] + page_size * row + e, v[static_cast<size_t>(s * row + e)]);
            }
        EXPECT_EQ(to_host(dcache, want_cache.size()), want_cache) << what << ": the cache";
        for (void* p : {static_cast<void*>(dpos), static_cast<void*>(dinv), static_cast<void*>(doff), static_cast<void*>(dcache),
                        static_cast<void*>(dq), static_cast<void*>(dk), static_cast<void*>(dv), static_cast<void*>(ring),
                        static_cast<void*>(dring), static_cast<void*>(wq), static_cast<void*>(wk), static_cast<void*>(dqkv)})
            cudaFree(p);
    }
}

TEST_F(CudaOps, DecodeAttentionOverRaggedPerHeadPageLists) {
    std::mt19937 rng(12);
    const int n_slots = 24, n_seq = 3;
    // Page 16: a warp's 32-token tile spans pages; page 32: one page per tile.
    for (int page_size : {16, 32})
    for (int elem_bytes : {2, 4})  // bf16 KV, and fp32 KV (--gpu-dtype f32) with unrounded values
    for (int head_dim : {64, 96, 128}) {
        for (auto [n_head_kv, group] : {std::pair{2, 1}, {2, 2}, {1, 4}, {2, 7}, {1, 8}, {1, 16}, {4, 4}}) {
            const int n_head = n_head_kv * group;
            const int64_t stride_tok = static_cast<int64_t>(n_head_kv) * head_dim, stride_page = page_size * stride_tok;
            const int64_t stride_seq = n_slots * stride_page;
            const auto k_raw = randn(static_cast<size_t>(n_seq * stride_seq), rng), v_raw = randn(k_raw.size(), rng);
            const auto k_bf16 = to_bf16(k_raw), v_bf16 = to_bf16(v_raw);
            const auto k32 = elem_bytes == 2 ? from_bf16(k_bf16) : k_raw, v32 = elem_bytes == 2 ? from_bf16(v_bf16) : v_raw;
            const int max_list = 20;
            const std::vector<int32_t> n_pages{20, 7, 1}, last_len{9, page_size, 5};  // ragged, partial last pages
            std::vector<int32_t> lists(static_cast<size_t>(n_seq * n_head_kv * max_list));
            for (int s = 0; s < n_seq; ++s)
                for (int h = 0; h < n_head_kv; ++h) {
                    std::vector<int32_t> slots(n_slots);
                    std::iota(slots.begin(), slots.end(), 0);
                    std::shuffle(slots.begin(), slots.end(), rng);  // each head its own pages
                    std::copy_n(slots.begin(), max_list, lists.begin() + (s * n_head_kv + h) * max_list);
                }
            const auto q = randn(static_cast<size_t>(n_seq * n_head * head_dim), rng);
            cuda::PagesAttentionArgs a;
            a.q = to_device(q);
            a.k = elem_bytes == 2 ? static_cast<const void*>(to_device(k_bf16)) : to_device(k_raw);
            a.v = elem_bytes == 2 ? static_cast<const void*>(to_device(v_bf16)) : to_device(v_raw);
            a.elem_bytes = elem_bytes;
            a.page_ids = to_device(lists);
            a.n_pages = to_device(n_pages);
            a.last_len = to_device(last_len);
            a.out = poisoned(q.size());
            a.n_seq = n_seq, a.n_head = n_head, a.n_head_kv = n_head_kv, a.head_dim = head_dim;
            a.page_size = page_size, a.max_list = max_list;
            a.stride_seq = stride_seq, a.stride_page = stride_page, a.stride_tok = stride_tok;
            // Split-K: 1 (one block per list), 5, 64 and 256 (the limit) token ranges merged by the combine kernel;
            // the 5-token list of sequence 2 leaves splits (and warps) empty.
            // bf16 at head_dim 64/128 and groups <= 8 takes the cp.async-staged kernel, the rest the generic one.
            for (int32_t split : {1, 5, 64, 256}) {
                a.n_split = split;
                float* partial = nullptr;
                if (split > 1) {
                    ASSERT_EQ(cudaMalloc(&partial, static_cast<size_t>(a.partial_floats()) * 4), cudaSuccess);
                }
                a.partial = partial;
                uint16_t* out_b = to_device(std::vector<uint16_t>(q.size(), 0xffff));
                a.out_bf16 = out_b;  // beside out: its bf16, as to_bf16 would round it
                cuda::attention_pages(a, nullptr);
                const auto got = to_host(a.out, q.size());
                uint16_t* conv = to_device(std::vector<uint16_t>(q.size(), 0));
                cuda::to_bf16(a.out, static_cast<int64_t>(q.size()), conv, nullptr);
                EXPECT_EQ(to_host(out_b, q.size()), to_host(conv, q.size())) << "out_bf16, split " << split;
                a.out_bf16 = nullptr;
                cudaFree(out_b), cudaFree(conv);
                if (split > 1) {
                    // The fused combine (split_counters; the staged kernel's shapes fuse, the others ignore
                    // the counters): the same bits as the combine kernel, twice in a row (the second call
                    // needs the counters the first left at zero), and the counters zero afterwards.
                    const std::vector<int32_t> zeros(static_cast<size_t>(n_seq * n_head_kv), 0);
                    int32_t* counters = to_device(zeros);
                    float* fused = poisoned(q.size());
                    float* unfused = a.out;
                    a.split_counters = counters, a.out = fused;
                    cuda::attention_pages(a, nullptr);
                    cuda::attention_pages(a, nullptr);
                    EXPECT_EQ(to_host(fused, q.size()), got) << "fused combine, split " << split << " group " << group
                                                            << " head_dim " << head_dim << " elem_bytes " << elem_bytes;
                    EXPECT_EQ(to_host(counters, zeros.size()), zeros) << "split counters after the call, split " << split;
                    a.split_counters = nullptr, a.out = unfused;
                    cudaFree(counters), cudaFree(fused);
                }
                cudaFree(partial);
                for (int s = 0; s < n_seq; ++s) {
                    PagedKvView view{k32.data() + s * stride_seq, v32.data() + s * stride_seq,
                                     lists.data() + s * n_head_kv * max_list, n_pages[static_cast<size_t>(s)],
                                     last_len[static_cast<size_t>(s)], page_size, stride_page, stride_tok, max_list};
                    std::vector<float> want(static_cast<size_t>(n_head * head_dim));
                    ref::attention_pages(q.data() + s * n_head * head_dim, {1, n_head, n_head_kv, head_dim, nullptr}, view,
                                         want.data());
                    std::span<const float> g(got.data() + s * n_head * head_dim, want.size());
                    EXPECT_LE(test::nmse(g, want), kNmse) << "seq " << s << " group " << group << " n_head_kv " << n_head_kv
                                                          << " head_dim " << head_dim << " split " << split
                                                          << " elem_bytes " << elem_bytes << " page " << page_size;
                }
            }
            for (const void* p : {static_cast<const void*>(a.q), static_cast<const void*>(a.k), static_cast<const void*>(a.v),
                                  static_cast<const void*>(a.page_ids), static_cast<const void*>(a.n_pages),
                                  static_cast<const void*>(a.last_len), static_cast<const void*>(a.out)})
                cudaFree(const_cast<void*>(p));
        }
    }
}

// The staged kernel reads a block's page ids from shared memory when at most 512 pages fall in its
// token range and from the list otherwise: one 600-page list (page 16) in one block, and split so
// that each block's range fits, both against the reference, at head_dim 64 and 128; with V rows in
// registers (v_registers) the same bits as with V staged.
TEST_F(CudaOps, DecodeAttentionStagedLongPageLists) {
    for (const int head_dim : {64, 128}) {
        std::mt19937 rng(13);
        const int page_size = 16, n_pages = 600, n_head_kv = 1, group = 4, n_head = n_head_kv * group;
        const int64_t stride_tok = int64_t{n_head_kv} * head_dim, stride_page = page_size * stride_tok;
        const auto k_bf16 = to_bf16(randn(static_cast<size_t>(n_pages * stride_page), rng));
        const auto v_bf16 = to_bf16(randn(k_bf16.size(), rng));
        const auto k32 = from_bf16(k_bf16), v32 = from_bf16(v_bf16);
        std::vector<int32_t> list(n_pages);
        std::iota(list.begin(), list.end(), 0);
        std::shuffle(list.begin(), list.end(), rng);
        const std::vector<int32_t> n_list{n_pages}, last_len{11};
        const auto q = randn(static_cast<size_t>(n_head * head_dim), rng);
        cuda::PagesAttentionArgs a;
        a.q = to_device(q);
        a.k = to_device(k_bf16);
        a.v = to_device(v_bf16);
        a.elem_bytes = 2;
        a.page_ids = to_device(list);
        a.n_pages = to_device(n_list);
        a.last_len = to_device(last_len);
        a.out = poisoned(q.size());
        a.n_seq = 1, a.n_head = n_head, a.n_head_kv = n_head_kv, a.head_dim = head_dim;
        a.page_size = page_size, a.max_list = n_pages;
        a.stride_seq = 0, a.stride_page = stride_page, a.stride_tok = stride_tok;
        PagedKvView view{k32.data(), v32.data(), list.data(), n_pages, last_len[0], page_size, stride_page, stride_tok, n_pages};
        std::vector<float> want(q.size());
        ref::attention_pages(q.data(), {1, n_head, n_head_kv, head_dim, nullptr}, view, want.data());
        for (int32_t split : {1, 3}) {
            a.n_split = split;
            float* partial = nullptr;
            if (split > 1) {
                ASSERT_EQ(cudaMalloc(&partial, static_cast<size_t>(a.partial_floats()) * 4), cudaSuccess);
            }
            a.partial = partial;
            a.v_registers = false;
            cuda::attention_pages(a, nullptr);
            const std::vector<float> staged = to_host(a.out, q.size());
            EXPECT_LE(test::nmse(staged, want), kNmse) << "head_dim " << head_dim << ", split " << split;
            a.v_registers = true;
            cuda::attention_pages(a, nullptr);
            EXPECT_EQ(to_host(a.out, q.size()), staged) << "head_dim " << head_dim << ", split " << split << ": V in registers";
            cudaFree(partial);
        }
        for (const void* p : {static_cast<const void*>(a.q), static_cast<const void*>(a.k), static_cast<const void*>(a.v),
                              static_cast<const void*>(a.page_ids), static_cast<const void*>(a.n_pages),
                              static_cast<const void*>(a.last_len), static_cast<const void*>(a.out)})
            cudaFree(const_cast<void*>(p));
    }
}

// Prefill attention (chunked GEMMs + masked softmax) against the reference causal attention: odd
// prompt lengths, chunks that do not divide them (and one chunk of everything), group sizes 1, 2,
// 4, 7, 8, head_dim 64 and 128, and later chunks of a prompt (q_pos0 > 0) against every earlier key.
TEST_F(CudaOps, PrefillAttentionIsCausalAcrossChunks) {
    std::mt19937 rng(29);
    struct Shape {
        int n, n_head, n_head_kv, head_dim, chunk, q_pos0 = 0;  // q_pos0 > 0: a later chunk of a prompt
    };
    for (const Shape sh : {Shape{77, 4, 4, 64, 16}, Shape{130, 8, 4, 128, 33}, Shape{301, 16, 4, 128, 64}, Shape{95, 14, 2, 64, 95},
                           Shape{64, 8, 1, 128, 17}, Shape{50, 8, 2, 64, 16, 77}, Shape{33, 14, 2, 128, 64, 130}}) {
        const int64_t q_row = int64_t{sh.n_head} * sh.head_dim, kv_row = int64_t{sh.n_head_kv} * sh.head_dim;
        const int n_keys = sh.q_pos0 + sh.n;
        const auto q = randn(static_cast<size_t>(sh.n * q_row), rng);
        const auto k = from_bf16(to_bf16(randn(static_cast<size_t>(n_keys * kv_row), rng)));  // as the cache holds them
        const auto v = from_bf16(to_bf16(randn(static_cast<size_t>(n_keys * kv_row), rng)));
        cuda::PrefillAttentionArgs a;
        a.q = to_device(q);
        a.k = to_device(k);
        a.v = to_device(v);
        a.out = poisoned(q.size());
        a.n = sh.n, a.n_head = sh.n_head, a.n_head_kv = sh.n_head_kv, a.head_dim = sh.head_dim, a.chunk = sh.chunk;
        a.q_pos0 = sh.q_pos0;
        a.scores = poisoned(static_cast<size_t>(cuda::prefill_scores_floats(n_keys, sh.n_head_kv, sh.chunk)));
        cuda::prefill_attention(a, nullptr);
        const auto got = to_host(a.out, q.size());
        std::vector<int32_t> pages(static_cast<size_t>(n_keys)), pos(static_cast<size_t>(sh.n));
        std::iota(pages.begin(), pages.end(), 0);
        std::iota(pos.begin(), pos.end(), sh.q_pos0);
        const PagedKvView view{k.data(), v.data(), pages.data(), n_keys, 1, 1, kv_row, kv_row, 0};
        std::vector<float> want(q.size());
        ref::attention(q.data(), {sh.n, sh.n_head, sh.n_head_kv, sh.head_dim, pos.data()}, view, want.data());
        EXPECT_LE(test::nmse(got, want), kNmse) << "n " << sh.n << " heads " << sh.n_head << "/" << sh.n_head_kv << " d "
                                                << sh.head_dim << " chunk " << sh.chunk << " q_pos0 " << sh.q_pos0;
        // The last token of a chunk and the first of the next see different key counts: check both.
        const int t = std::min(sh.chunk, sh.n - 1);
        for (int tt : {t - 1, t})
            EXPECT_NEAR(got[static_cast<size_t>(tt * q_row)], want[static_cast<size_t>(tt * q_row)], 1e-4f) << "token " << tt;
        for (const void* p : {static_cast<const void*>(a.q), static_cast<const void*>(a.k), static_cast<const void*>(a.v),
                              static_cast<const void*>(a.out), static_cast<const void*>(a.scores)})
            cudaFree(const_cast<void*>(p));
    }
}

// Flash prefill (bf16 tensor cores) against the reference causal attention in fp32 on the same
// bf16-rounded q, k and v: whole prompts and later chunks (q_pos0 > 0, every earlier key visible),
// lengths that are not multiples of the key tiles (64 and 128) or of the block's rows, group sizes
// 1, 4, 7, 8, 16, head_dim 64 and 128, both row widths, a key stride wider than one token's KV heads;
// the mma.sync kernel everywhere and the wgmma kernel where the device has it; each in fp32 and with
// the output rounded to bf16.
TEST_F(CudaOps, FlashPrefillMatchesReferenceAcrossChunks) {
    std::mt19937 rng(31);
    struct Shape {
        int n_q, q_pos0, n_head, n_head_kv, head_dim, rows_per_warp, pad;
    };
    for (const Shape sh : {Shape{77, 0, 4, 4, 64, 0, 0}, Shape{130, 0, 8, 2, 128, 16, 0}, Shape{130, 0, 8, 2, 128, 32, 0},
                           Shape{301, 0, 28, 4, 128, 0, 0}, Shape{95, 200, 14, 2, 64, 16, 0}, Shape{64, 129, 8, 1, 128, 32, 0},
                           Shape{1, 500, 32, 8, 128, 0, 0}, Shape{33, 63, 4, 4, 64, 32, 8}, Shape{257, 1000, 32, 8, 128, 0, 16},
                           Shape{300, 77, 28, 4, 128, 32, 0}, Shape{99, 31, 14, 2, 64, 32, 8}, Shape{200, 50, 32, 2, 128, 0, 0},
                           Shape{513, 0, 8, 8, 128, 0, 8}, Shape{129, 383, 16, 16, 128, 0, 0}}) {
        const int n_keys = sh.q_pos0 + sh.n_q;
        const int64_t q_row = int64_t{sh.n_head} * sh.head_dim, kv_row = int64_t{sh.n_head_kv} * sh.head_dim + sh.pad;
        const auto q = from_bf16(to_bf16(randn(static_cast<size_t>(sh.n_q * q_row), rng)));  // the kernel rounds q
        const auto k16 = to_bf16(randn(static_cast<size_t>(n_keys * kv_row), rng));
        const auto v16 = to_bf16(randn(static_cast<size_t>(n_keys * kv_row), rng));
        cuda::FlashPrefillArgs a;
        a.q = to_device(q);
        a.k = to_device(k16);
        a.v = to_device(v16);
        a.out = poisoned(q.size());
        a.n_q = sh.n_q, a.q_pos0 = sh.q_pos0, a.n_keys = n_keys, a.n_head = sh.n_head, a.n_head_kv = sh.n_head_kv;
        a.head_dim = sh.head_dim, a.kv_stride = kv_row, a.rows_per_warp = sh.rows_per_warp;
        const auto k = from_bf16(k16), v = from_bf16(v16);
        std::vector<int32_t> pages(static_cast<size_t>(n_keys)), pos(static_cast<size_t>(sh.n_q));
        std::iota(pages.begin(), pages.end(), 0);
        std::iota(pos.begin(), pos.end(), sh.q_pos0);
        const PagedKvView view{k.data(), v.data(), pages.data(), n_keys, 1, 1, kv_row, kv_row, 0};
        std::vector<float> want(q.size());
        ref::attention(q.data(), {sh.n_q, sh.n_head, sh.n_head_kv, sh.head_dim, pos.data()}, view, want.data());
        std::vector<cuda::FlashKernel> kernels{cuda::FlashKernel::mma_sync};
        if (cuda::flash_prefill_has_wgmma(sh.head_dim)) kernels.push_back(cuda::FlashKernel::wgmma);
        for (const cuda::FlashKernel kernel : kernels) {
            a.kernel = kernel;
            EXPECT_EQ(cudaMemset(a.out, 0xff, q.size() * sizeof(float)), cudaSuccess);  // NaN: every row must be written
            cuda::flash_prefill(a, nullptr);
            const auto got = to_host(a.out, q.size());
            // NOTE: the kernels round the probabilities to bf16 for the P.V product (relative error up
            // to 2^-9 per term, NMSE ~1e-6 on random values); 2e-5 allows that and fails on any wrong
            // key, mask or head (NMSE ~1e-1 or worse).
            EXPECT_LE(test::nmse(got, want), 2e-5)
                << (kernel == cuda::FlashKernel::wgmma ? "wgmma" : "mma.sync") << " n_q " << sh.n_q << " q_pos0 " << sh.q_pos0
                << " heads " << sh.n_head << "/" << sh.n_head_kv << " d " << sh.head_dim << " rows/warp " << sh.rows_per_warp;
            for (size_t i = 0; i < got.size(); ++i)
                if (!std::isfinite(got[i])) {
                    ADD_FAILURE() << "non-finite output at " << i;
                    break;
                }
            // The bf16 output (what the output projection reads) is the fp32 output rounded once.
            uint16_t* out16 = to_device(std::vector<uint16_t>(q.size(), 0xffff));
            cuda::FlashPrefillArgs b = a;
            b.out_bf16 = out16;
            cuda::flash_prefill(b, nullptr);
            EXPECT_EQ(to_host(out16, q.size()), to_bf16(got)) << "bf16 output, n_q " << sh.n_q << " q_pos0 " << sh.q_pos0;
            cudaFree(out16);
        }
        for (const void* p : {static_cast<const void*>(a.q), static_cast<const void*>(a.k), static_cast<const void*>(a.v),
                              static_cast<const void*>(a.out)})
            cudaFree(const_cast<void*>(p));
    }
    // Rows move in 16-byte pieces: a key stride of 260 elements is refused before any launch.
    cuda::FlashPrefillArgs odd;
    odd.n_q = 1, odd.n_keys = 1, odd.n_head = 8, odd.n_head_kv = 2, odd.head_dim = 128, odd.kv_stride = 260;
    EXPECT_THROW(cuda::flash_prefill(odd, nullptr), Error);
}

TEST_F(CudaOps, MatmulBf16GemvAndCublas) {
    std::mt19937 rng(14);
    // Without a measured choice one row with k % 8 == 0 takes the SIMT GEMV (row counts not a
    // multiple of its 16 rows per block, k chunks not a multiple of 32 lanes); more rows or
    // k % 8 != 0 go through cuBLAS (DecodeGemvsMatchTheReference runs the GEMVs at every row count).
    for (auto [m, n, k] : {std::tuple{1, 7, 64}, std::tuple{3, 300, 96}, std::tuple{17, 1000, 512}, std::tuple{64, 1536, 512},
                           std::tuple{1, 1001, 4096}, std::tuple{2, 33, 136}, std::tuple{4, 517, 1032},
                           std::tuple{5, 129, 4096}, std::tuple{8, 250, 14336}, std::tuple{2, 40, 100}}) {
        const auto x = randn(static_cast<size_t>(m * k), rng);
        const auto w = to_bf16(randn(static_cast<size_t>(n * k), rng));
        const auto bias = to_bf16(randn(static_cast<size_t>(n), rng));
        float* dx = to_device(x);
        uint16_t* dw = to_device(w);
        uint16_t* db = to_device(bias);
        float* dy = poisoned(static_cast<size_t>(m * n));
        uint16_t* scratch = nullptr;
        ASSERT_EQ(cudaMalloc(&scratch, static_cast<size_t>(m * k) * 2), cudaSuccess);
        cuda::matmul_bf16(dx, m, dw, n, k, dy, db, scratch, nullptr);
        // Reference on the same bf16-rounded activations, so only summation order differs.
        std::vector<float> xr(x.size());
        for (size_t i = 0; i < x.size(); ++i) xr[i] = bf16_to_f32(f32_to_bf16(x[i]));
        std::vector<float> want(static_cast<size_t>(m * n));
        const WeightView wv{"w", DType::kBF16, {n, k}, w.data()}, bv{"b", DType::kBF16, {n}, bias.data()};
        ref::matmul(xr.data(), m, wv, want.data(), &bv);
        EXPECT_LE(test::nmse(to_host(dy, want.size()), want), kNmse) << m << "x" << n << "x" << k;
        // Against fp32 activations the bf16 rounding of x shows: bounded by the bf16 epsilon squared.
        std::vector<float> exact(want.size());
        ref::matmul(x.data(), m, wv, exact.data(), &bv);
        EXPECT_LE(test::nmse(to_host(dy, exact.size()), exact), 1e-4) << "bf16 activations";
        // fp32 weights and bias (--gpu-dtype f32): cuBLAS's fp32 GEMM on unrounded x.
        const auto w32 = randn(static_cast<size_t>(n * k), rng), b32 = randn(static_cast<size_t>(n), rng);
        float* dw32 = to_device(w32);
        float* db32 = to_device(b32);
        cuda::matmul(dx, m, cuda::WeightRef{dw32, true}, n, k, dy, cuda::WeightRef{db32, true}, nullptr, nullptr);
        const WeightView wv32{"w", DType::kF32, {n, k}, w32.data()}, bv32{"b", DType::kF32, {n}, b32.data()};
        ref::matmul(x.data(), m, wv32, exact.data(), &bv32);
        EXPECT_LE(test::nmse(to_host(dy, exact.size()), exact), kNmse) << "fp32 " << m << "x" << n << "x" << k;
        cudaFree(dx), cudaFree(dw), cudaFree(db), cudaFree(dy), cudaFree(scratch), cudaFree(dw32), cudaFree(db32);
    }
}

// The prefill GEMM path: rms_norm_bf16 and silu_mul_bf16 write exactly the bf16 of what rms_norm
// and silu_mul write (the rounding matmul_bf16 would apply), and gemm_bf16 with accumulate adds
// bf16(x) . w^T (+ bias) to what y held (a residual), at odd sizes.
TEST_F(CudaOps, PrefillGemmPathRoundsOnceAndAccumulates) {
    std::mt19937 rng(41);
    {  // silu_mul_bf16 on a length that is not a multiple of 4 (the one-element path; the loop below takes the 4-wide one)
        const auto g = randn(1003, rng), u = randn(1003, rng);
        float* dg = to_device(g);
        float* du = to_device(u);
        uint16_t* db = to_device(std::vector<uint16_t>(g.size(), 0xffff));
        cuda::silu_mul_bf16(dg, du, static_cast<int64_t>(g.size()), db, nullptr);
        cuda::silu_mul(dg, du, static_cast<int64_t>(g.size()), nullptr);
        EXPECT_EQ(to_host(db, g.size()), to_bf16(to_host(dg, g.size()))) << "silu_mul_bf16 of 1003";
        for (const void* p : {static_cast<const void*>(dg), static_cast<const void*>(du), static_cast<const void*>(db)})
            cudaFree(const_cast<void*>(p));
    }
    for (auto [m, n, k] : {std::tuple{9, 33, 64}, std::tuple{17, 1000, 516}, std::tuple{130, 257, 1024}}) {
        const auto x = randn(static_cast<size_t>(m * k), rng);
        const auto up = randn(static_cast<size_t>(m * k), rng);
        const auto norm_w = to_bf16(randn(static_cast<size_t>(k), rng));
        float* dx = to_device(x);
        float* dup = to_device(up);
        uint16_t* dnw = to_device(norm_w);
        float* dy32 = poisoned(x.size());
        uint16_t* db16 = to_device(std::vector<uint16_t>(x.size(), 0xffff));
        cuda::rms_norm(dx, m, k, dnw, 1e-5f, dy32, nullptr);
        cuda::rms_norm_bf16(dx, m, k, cuda::WeightRef{dnw, false}, 1e-5f, db16, nullptr);
        EXPECT_EQ(to_host(db16, x.size()), to_bf16(to_host(dy32, x.size()))) << "rms_norm_bf16 " << m << "x" << k;
        float* dg = to_device(x);
        cuda::silu_mul(dg, dup, m * k, nullptr);
        cuda::silu_mul_bf16(dx, dup, m * k, db16, nullptr);
        EXPECT_EQ(to_host(db16, x.size()), to_bf16(to_host(dg, x.size()))) << "silu_mul_bf16 " << m << "x" << k;

        const auto w = to_bf16(randn(static_cast<size_t>(n * k), rng));
        const auto bias = to_bf16(randn(static_cast<size_t>(n), rng));
        const auto y0 = randn(static_cast<size_t>(m * n), rng);
        uint16_t* dw = to_device(w);
        uint16_t* dbias = to_device(bias);
        const auto xb = to_bf16(x);
        uint16_t* dxb = to_device(xb);
        float* dy = to_device(y0);
        cuda::gemm_bf16(dxb, m, dw, n, k, dy, dbias, true, nullptr);
        std::vector<float> want(y0.size());
        const WeightView wv{"w", DType::kBF16, {n, k}, w.data()}, bv{"b", DType::kBF16, {n}, bias.data()};
        ref::matmul(from_bf16(xb).data(), m, wv, want.data(), &bv);
        for (size_t i = 0; i < want.size(); ++i) want[i] += y0[i];
        EXPECT_LE(test::nmse(to_host(dy, want.size()), want), kNmse) << "accumulate " << m << "x" << n << "x" << k;
        cuda::gemm_bf16(dxb, m, dw, n, k, dy, nullptr, false, nullptr);
        ref::matmul(from_bf16(xb).data(), m, wv, want.data());
        EXPECT_LE(test::nmse(to_host(dy, want.size()), want), kNmse) << "replace " << m << "x" << n << "x" << k;
        for (void* p : {static_cast<void*>(dx), static_cast<void*>(dup), static_cast<void*>(dnw), static_cast<void*>(dy32),
                        static_cast<void*>(db16), static_cast<void*>(dg), static_cast<void*>(dw), static_cast<void*>(dbias),
                        static_cast<void*>(dxb), static_cast<void*>(dy)})
            cudaFree(p);
    }
}

// The decode GEMVs on their own, every variant the engine can pick: the SIMT one with 2, 4 and 8
// chunks in flight, and the ones the measured choice may take: the tensor-core one (gemv_mma, 16 and
// 32 rows per warp) and block-k (2x2, 4x1, 8x1); every batch size 1..8, row counts not a multiple of
// the rows per block, k from one 32-element chunk to 14336 (all but mma also k = 40, not a multiple of 32).
// Those the choice takes also read bf16(x) as the decode step writes it, directly and as a
// programmatic dependent launch: the same bits.
TEST_F(CudaOps, DecodeGemvsMatchTheReference) {
    std::mt19937 rng(15);
    // 0, 1: mma with 1 or 2 tiles of 16 rows per warp; 2..8: the SIMT kernel's chunks; 10R: block-k, R rows
    for (int variant : {0, 1, 2, 4, 8, 102, 104, 108})
        for (auto [n, k] : {std::pair{7, 32}, std::pair{300, 96}, std::pair{1001, 4096}, std::pair{16, 1024}, std::pair{250, 14336},
                            std::pair{33, 40}})
            for (int m = 1; m <= 8; ++m)
                for (bool with_bias : {false, true}) {
                    const bool mma = variant < 2;
                    if (mma && k % 32 != 0) continue;
                    const auto x = randn(static_cast<size_t>(m * k), rng);
                    const auto w = to_bf16(randn(static_cast<size_t>(n * k), rng));
                    const auto bias = to_bf16(randn(static_cast<size_t>(n), rng));
                    float* dx = to_device(x);
                    uint16_t* dw = to_device(w);
                    uint16_t* db = to_device(bias);
                    float* dy = poisoned(static_cast<size_t>(m * n));
                    // The kernels the measured choice takes, on fp32 x or on its bf16 (xb).
                    auto chosen = [&](float* y, const uint16_t* xb) {
                        if (mma) cuda::gemv_mma(dx, m, dw, n, k, y, with_bias ? db : nullptr, nullptr, false, variant + 1, xb);
                        else cuda::gemv_block_k(dx, m, dw, n, k, y, with_bias ? db : nullptr, variant - 100, variant == 102 ? 2 : 1,
                                                nullptr, false, xb);
                    };
                    if (mma || variant > 100) chosen(dy, nullptr);
                    else cuda::gemv_simt(dx, m, dw, n, k, dy, with_bias ? db : nullptr, variant, nullptr);
                    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
                    std::vector<float> xr(x.size());
                    for (size_t i = 0; i < x.size(); ++i) xr[i] = bf16_to_f32(f32_to_bf16(x[i]));
                    std::vector<float> want(static_cast<size_t>(m * n));
                    const WeightView wv{"w", DType::kBF16, {n, k}, w.data()}, bv{"b", DType::kBF16, {n}, bias.data()};
                    ref::matmul(xr.data(), m, wv, want.data(), with_bias ? &bv : nullptr);
                    EXPECT_LE(test::nmse(to_host(dy, want.size()), want), kNmse)
                        << "variant " << variant << " " << m << "x" << n << "x" << k << " bias " << with_bias;
                    if (mma || variant > 100) {  // reading bf16(x) as the decode step writes it: the same bits
                        uint16_t* dxb = to_device(to_bf16(x));
                        float* dy2 = poisoned(static_cast<size_t>(m * n));
                        chosen(dy2, dxb);
                        EXPECT_EQ(to_host(dy2, want.size()), to_host(dy, want.size()))
                            << "variant " << variant << " on bf16 x, " << m << "x" << n << "x" << k;
                        // As a programmatic dependent launch right after the kernel that makes x (here
                        // an upload of it): the same bits.
                        cuda::set_gemv_pdl(true);
                        ASSERT_EQ(cudaMemcpy(dxb, to_bf16(x).data(), x.size() * 2, cudaMemcpyHostToDevice), cudaSuccess);
                        chosen(dy2, dxb);
                        cuda::set_gemv_pdl(false);
                        EXPECT_EQ(to_host(dy2, want.size()), to_host(dy, want.size()))
                            << "variant " << variant << " as a dependent launch, " << m << "x" << n << "x" << k;
                        cudaFree(dxb), cudaFree(dy2);
                    }
                    cudaFree(dx), cudaFree(dw), cudaFree(db), cudaFree(dy);
                }
    EXPECT_THROW(cuda::gemv_mma(nullptr, 9, nullptr, 16, 32, nullptr, nullptr, nullptr), Error);
    EXPECT_THROW(cuda::gemv_mma(nullptr, 1, nullptr, 16, 32, nullptr, nullptr, nullptr, false, 3), Error);
    EXPECT_THROW(cuda::gemv_mma(nullptr, 1, nullptr, 16, 40, nullptr, nullptr, nullptr), Error);
    EXPECT_THROW(cuda::gemv_simt(nullptr, 1, nullptr, 16, 32, nullptr, nullptr, 3, nullptr), Error);
    EXPECT_THROW(cuda::gemv_block_k(nullptr, 1, nullptr, 16, 32, nullptr, nullptr, 4, 2, nullptr), Error);
}

// `accumulate` (y += the product, the residual add the decode step folds into the o and down
// projections) through every decode kernel and both cuBLAS paths: y0 + product, bitwise equal to
// the product into a buffer added to y0 afterwards (what the engine did before); a bias is refused.
TEST_F(CudaOps, GemvAccumulateAddsTheProductIntoY) {
    std::mt19937 rng(17);
    const int64_t n = 300, k = 1024;
    for (int64_t m : {1, 3, 8}) {
        const auto x = randn(static_cast<size_t>(m * k), rng);
        const auto y0 = randn(static_cast<size_t>(m * n), rng);
        const auto w = to_bf16(randn(static_cast<size_t>(n * k), rng));
        const auto w32 = randn(static_cast<size_t>(n * k), rng);
        float* dx = to_device(x);
        uint16_t* dw = to_device(w);
        float* dw32 = to_device(w32);
        uint16_t* scratch = nullptr;
        ASSERT_EQ(cudaMalloc(&scratch, sizeof(uint16_t) * static_cast<size_t>(m * k)), cudaSuccess);
        float* dy = to_device(y0);
        float* dp = poisoned(static_cast<size_t>(m * n));
        // Our kernels add in their epilogue: bitwise. cuBLAS may pick another algorithm for beta = 1
        // (a split-K reduction that folds y in), so for it the sums may round differently: fp32
        // rounding only, NMSE <= 1e-12 (exact = false); dropping y or the product gives ~1.
        auto check = [&](const char* what, auto&& product, auto&& added, bool exact = true) {
            ASSERT_EQ(cudaMemcpy(dy, y0.data(), y0.size() * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
            product(dp);
            added(dy);
            ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
            const auto p = to_host(dp, y0.size()), got = to_host(dy, y0.size());
            std::vector<float> want(got.size());
            for (size_t i = 0; i < got.size(); ++i) want[i] = y0[i] + p[i];
            if (exact) {
                size_t differ = 0;
                for (size_t i = 0; i < got.size(); ++i) differ += got[i] != want[i] ? 1 : 0;
                EXPECT_EQ(differ, 0u) << what << ", " << m << " rows";
            } else {
                EXPECT_LE(test::nmse(got, want), 1e-12) << what << ", " << m << " rows";
            }
        };
        for (auto kernel : {cuda::GemvKernel::kSimt, cuda::GemvKernel::kBlockK2x2, cuda::GemvKernel::kBlockK4x1,
                            cuda::GemvKernel::kBlockK8x1, cuda::GemvKernel::kMma16, cuda::GemvKernel::kMma32, cuda::GemvKernel::kCublas})
            check(cuda::gemv_kernel_name(kernel),
                  [&](float* y) { cuda::gemv_run(kernel, dx, m, dw, n, k, y, nullptr, scratch, nullptr); },
                  [&](float* y) { cuda::gemv_run(kernel, dx, m, dw, n, k, y, nullptr, scratch, nullptr, true); },
                  kernel != cuda::GemvKernel::kCublas);
        check("fp32 cuBLAS", [&](float* y) { cuda::matmul(dx, m, cuda::WeightRef{dw32, true}, n, k, y, {}, nullptr, nullptr); },
              [&](float* y) { cuda::matmul(dx, m, cuda::WeightRef{dw32, true}, n, k, y, {}, nullptr, nullptr, true); }, false);
        EXPECT_THROW(cuda::gemv_run(cuda::GemvKernel::kSimt, dx, m, dw, n, k, dy, dw, scratch, nullptr, true), Error);
        cudaFree(dx), cudaFree(dw), cudaFree(dw32), cudaFree(scratch), cudaFree(dy), cudaFree(dp);
    }
}

// The per-shape choice measured on three matrices: for each row count it names a kernel no slower
// than the default it was timed against, and matmul through a WeightRef that carries it computes the
// reference product with bias, whichever kernel won; a choice made for another shape is refused.
TEST_F(CudaOps, MeasuredGemvChoiceComputesTheReference) {
    std::mt19937 rng(16);
    const int64_t n = 1001, k = 4096;
    std::vector<std::vector<uint16_t>> hw;
    std::vector<uint16_t*> dws;
    for (int i = 0; i < 3; ++i) {
        hw.push_back(to_bf16(randn(static_cast<size_t>(n * k), rng)));
        dws.push_back(to_device(hw.back()));
    }
    const std::vector<const uint16_t*> mats(dws.begin(), dws.end());
    const cuda::GemvChoices choices = cuda::measure_gemv_choices(mats, n, k, cuda::kGemvChoiceRows);
    EXPECT_EQ(choices.n, n);
    EXPECT_EQ(choices.measured_rows, cuda::kGemvChoiceRows);
    const auto bias = to_bf16(randn(static_cast<size_t>(n), rng));
    uint16_t* db = to_device(bias);
    uint16_t* scratch = nullptr;
    ASSERT_EQ(cudaMalloc(&scratch, sizeof(uint16_t) * static_cast<size_t>(cuda::kGemvChoiceRows * k)), cudaSuccess);
    for (int64_t m = 1; m <= cuda::kGemvChoiceRows; ++m) {
        const size_t i = static_cast<size_t>(m - 1);
        EXPECT_GT(choices.default_us[i], 0.0f) << m;
        EXPECT_LE(choices.us[i], choices.default_us[i]) << m;
        const auto x = randn(static_cast<size_t>(m * k), rng);
        float* dx = to_device(x);
        float* dy = poisoned(static_cast<size_t>(m * n));
        cuda::matmul(dx, m, cuda::WeightRef{dws[1], false, &choices}, n, k, dy, cuda::WeightRef{db, false}, scratch, nullptr);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        std::vector<float> xr(x.size()), want(static_cast<size_t>(m * n));
        for (size_t j = 0; j < x.size(); ++j) xr[j] = bf16_to_f32(f32_to_bf16(x[j]));
        const WeightView wv{"w", DType::kBF16, {n, k}, hw[1].data()}, bv{"b", DType::kBF16, {n}, bias.data()};
        ref::matmul(xr.data(), m, wv, want.data(), &bv);
        EXPECT_LE(test::nmse(to_host(dy, want.size()), want), kNmse) << m << " rows by " << cuda::gemv_kernel_name(choices.kernel[i]);
        // x_bf16_ready: the scratch already holds bf16(x) (as the decode step's norm, SiLU-mul and
        // attention write it): the same products, bit for bit, whichever kernel was chosen ...
        float* dy2 = poisoned(static_cast<size_t>(m * n));
        cuda::to_bf16(dx, m * k, scratch, nullptr);
        cuda::matmul(dx, m, cuda::WeightRef{dws[1], false, &choices}, n, k, dy2, cuda::WeightRef{db, false}, scratch, nullptr, false,
                     true);
        EXPECT_EQ(to_host(dy2, want.size()), to_host(dy, want.size())) << m << " rows, x_bf16 ready";
        // ... and cuBLAS then reads the scratch as it is (zeros in, the bias out).
        ASSERT_EQ(cudaMemset(scratch, 0, sizeof(uint16_t) * static_cast<size_t>(m * k)), cudaSuccess);
        cuda::gemv_run(cuda::GemvKernel::kCublas, dx, m, dws[1], n, k, dy2, db, scratch, nullptr, false, true);
        const auto only_bias = to_host(dy2, want.size());
        int64_t not_bias = 0;
        for (int64_t r = 0; r < n; ++r) not_bias += only_bias[static_cast<size_t>(r)] != bf16_to_f32(bias[static_cast<size_t>(r)]) ? 1 : 0;
        EXPECT_EQ(not_bias, 0) << m << " rows: cuBLAS on a ready (zero) x_bf16";
        cudaFree(dx), cudaFree(dy), cudaFree(dy2);
    }
    EXPECT_THROW(cuda::matmul_bf16(nullptr, 1, dws[0], n + 1, k, nullptr, nullptr, scratch, nullptr, &choices), Error);
    for (uint16_t* p : dws) cudaFree(p);
    cudaFree(db), cudaFree(scratch);
}

TEST_F(CudaOps, PinnedStoreIsChunkedMappedAndFailsWithTheFlagName) {
    // 2.5 GiB in 1 GiB chunks of whole 3 MiB units: 3 chunks, each readable through its device address.
    const int64_t unit = int64_t{3} << 20;
    cuda::PinnedStore store((int64_t{5} << 29), unit);
    ASSERT_EQ(store.n_chunks(), 3);
    EXPECT_EQ(store.chunk_bytes() % unit, 0);
    for (int64_t c = 0; c < store.n_chunks(); ++c) {
        auto* host = static_cast<uint32_t*>(store.host_chunk(c));
        host[0] = 0xC0FFEE00u + static_cast<uint32_t>(c);
        uint32_t back = 0;
        ASSERT_EQ(cudaMemcpy(&back, store.device_chunks()[static_cast<size_t>(c)], 4, cudaMemcpyDefault), cudaSuccess);
        EXPECT_EQ(back, 0xC0FFEE00u + static_cast<uint32_t>(c));
    }
    // A store smaller than a chunk pins whole units, not a whole default chunk.
    cuda::PinnedStore small(unit * 2 + 5, unit);
    EXPECT_EQ(small.n_chunks(), 1);
    EXPECT_EQ(small.chunk_bytes(), unit * 3);
    ::setenv("FREEKV_FAIL_PINNED_CHUNK", "1", 1);  // design doc T7: a simulated failure
    try {
        cuda::PinnedStore failing((int64_t{5} << 29), unit);
        ADD_FAILURE() << "the simulated failure did not throw";
    } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("--cpu-kv-gib"), std::string::npos) << msg;
        EXPECT_NE(msg.find("chunk 2 of 3"), std::string::npos) << msg;
        EXPECT_NE(msg.find("system RAM"), std::string::npos) << msg;
    }
    ::unsetenv("FREEKV_FAIL_PINNED_CHUNK");
}

// Elements of type T (uint16_t = bf16, or float) from fp32 values, and back.
template <class T>
std::vector<T> to_elems(const std::vector<float>& v) {
    if constexpr (std::is_same_v<T, float>) return v;
    else return to_bf16(v);
}
template <class T>
float elem_f32(T x) {
    if constexpr (std::is_same_v<T, float>) return x;
    else return bf16_to_f32(x);
}
template <class T>
T f32_elem(float x) {
    if constexpr (std::is_same_v<T, float>) return x;
    else return f32_to_bf16(x);
}

template <class T>
void check_page_boundary() {
    std::mt19937 rng(15);
    const int L = 2, batch = 2, n_slots = 8, p = 16, n_kv = 2, d = 64, max_pages = 12;
    const int64_t token = n_kv * d, slot_elems = 2LL * p * token, cpu_page_elems = 2LL * L * n_kv * p * d;
    for (bool cuboid : {false, true}) {
        const auto cache = to_elems<T>(randn(static_cast<size_t>(L * batch * n_slots * slot_elems), rng));
        constexpr int64_t eb = sizeof(T);
        cuda::PinnedStore store(cpu_page_elems * eb * 12, cpu_page_elems * eb, cpu_page_elems * eb * 4);  // 4 pages per chunk
        const int ppc = static_cast<int>(store.chunk_bytes() / (cpu_page_elems * eb));
        void** chunks = nullptr;
        ASSERT_EQ(cudaMalloc(&chunks, sizeof(void*) * static_cast<size_t>(store.n_chunks())), cudaSuccess);
        ASSERT_EQ(cudaMemcpy(chunks, store.device_chunks().data(), sizeof(void*) * static_cast<size_t>(store.n_chunks()),
                             cudaMemcpyHostToDevice), cudaSuccess);
        const std::vector<cuda::BoundaryJob> jobs{{0, 5, 7, 5, 9}, {1, 3, 3, -1, 2}};  // seq 0 rotates, seq 1 is dense
        cuda::BoundaryArgs a;
        a.jobs = to_device(jobs);
        a.n_jobs = 2;
        a.budget_cache = nullptr;  // set below
        auto* summaries_d = to_device(std::vector<T>(static_cast<size_t>(L * batch * n_kv * max_pages * 2 * d), f32_elem<T>(NAN)));
        auto* cache_d = to_device(cache);
        a.summaries = summaries_d;
        a.elem_bytes = static_cast<int32_t>(eb);
        a.cpu_chunks = chunks;
        a.pages_per_chunk = ppc;
        a.n_layer = L, a.max_batch = batch, a.n_slots = n_slots, a.max_pages = max_pages, a.page_size = p;
        a.n_head_kv = n_kv, a.head_dim = d, a.cuboid = cuboid;
        a.budget_cache = cache_d;
        cuda::page_boundary(a, nullptr);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const auto cache_after = to_host(cache_d, cache.size());
        const auto summaries = to_host(summaries_d, static_cast<size_t>(L * batch * n_kv * max_pages * 2 * d));
        for (const auto& job : jobs)
            for (int il = 0; il < L; ++il) {
                const int64_t base = (static_cast<int64_t>(il) * batch + job.seq) * n_slots * slot_elems;
                const T* src = cache.data() + base + job.src_slot * slot_elems;
                if (job.dst_slot >= 0) {
                    EXPECT_EQ(0, std::memcmp(cache_after.data() + base + job.dst_slot * slot_elems, src, slot_elems * eb));
                }
                for (int h = 0; h < n_kv; ++h) {
                    std::vector<float> keys(static_cast<size_t>(p * token));
                    for (size_t i = 0; i < keys.size(); ++i) keys[i] = elem_f32(src[i]);
                    std::vector<float> want(static_cast<size_t>(2 * d));
                    summarize_page(cuboid ? SummaryKind::kCuboid : SummaryKind::kMinMax, keys.data() + h * d, p, token, d,
                                   want.data());
                    const T* got = summaries.data() +
                                          (((static_cast<int64_t>(il) * batch + job.seq) * n_kv + h) * max_pages + job.page) * 2 * d;
                    for (int i = 0; i < 2 * d; ++i) ASSERT_EQ(got[i], f32_elem<T>(want[static_cast<size_t>(i)])) << i;
                    const auto* block = static_cast<const T*>(store.host_chunk(job.cpu_page / ppc)) +
                                        (static_cast<int64_t>(job.cpu_page % ppc) * L * n_kv + il * n_kv + h) * 2 * p * d;
                    for (int r = 0; r < 2 * p; ++r)
                        ASSERT_EQ(0, std::memcmp(block + r * d, src + (r / p) * p * token + (r % p) * token + h * d, d * eb))
                            << "layer " << il << " head " << h << " row " << r;
                }
            }
        // seq 1 did not rotate: its slots are unchanged
        const int64_t seq1 = (0LL * batch + 1) * n_slots * slot_elems;
        EXPECT_EQ(0, std::memcmp(cache_after.data() + seq1, cache.data() + seq1, n_slots * slot_elems * eb));
        cudaFree(const_cast<cuda::BoundaryJob*>(a.jobs)), cudaFree(cache_d), cudaFree(summaries_d), cudaFree(chunks);
    }
}

TEST_F(CudaOps, PageBoundarySummarizesRotatesAndOffloads) {
    check_page_boundary<uint16_t>();
    check_page_boundary<float>();  // --gpu-dtype f32
}

// The 8-bit store's device twins (--kv-store-dtype int8 | fp8): the page-boundary kernel codes
// each offloaded block exactly as cpu::quantize_kv_block does on the same values (codes and
// scales bit for bit, on data with outlier key channels and value tokens), and the gather kernel
// decodes blocks into budget slots as cpu::dequantize_kv_block does (bf16 slots: that, rounded).
template <class T>
void check_coded_store(KvCode code) {
    std::mt19937 rng(code == KvCode::kInt8 ? 31 : 37);
    const int L = 2, batch = 2, n_slots = 6, p = 32, n_kv = 2, d = 128, max_pages = 8;
    const int64_t token = n_kv * d, slot_elems = 2LL * p * token;
    const int64_t block_bytes = kv_coded_block_bytes(p, d), page_bytes = L * n_kv * block_bytes;
    const int32_t store_code = code == KvCode::kInt8 ? 1 : 2;
    std::vector<float> values = randn(static_cast<size_t>(L * batch * n_slots * slot_elems), rng);
    for (int64_t i = 0; i < static_cast<int64_t>(values.size()); ++i) {
        const int64_t in_slot = i % slot_elems, row = in_slot / token, channel = in_slot % d;
        if (row < p && channel % 37 == 5) values[static_cast<size_t>(i)] *= 40.0f;                 // key outlier channels
        if (row >= p && (row - p) % 11 == 3) values[static_cast<size_t>(i)] *= 25.0f;              // value outlier tokens
        if (row < p && channel == 17) values[static_cast<size_t>(i)] = 0.0f;                      // an all-zero channel
    }
    const auto cache = to_elems<T>(values);
    constexpr int64_t eb = sizeof(T);
    cuda::PinnedStore store(page_bytes * 8, page_bytes, page_bytes * 4);
    const int ppc = static_cast<int>(store.chunk_bytes() / page_bytes);
    void** chunks = nullptr;
    ASSERT_EQ(cudaMalloc(&chunks, sizeof(void*) * static_cast<size_t>(store.n_chunks())), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(chunks, store.device_chunks().data(), sizeof(void*) * static_cast<size_t>(store.n_chunks()),
                         cudaMemcpyHostToDevice), cudaSuccess);
    const std::vector<cuda::BoundaryJob> jobs{{0, 2, 4, -1, 6}, {1, 3, 1, 5, 1}};  // seq 1 also rotates
    auto* cache_d = to_device(cache);
    auto* summaries_d = to_device(std::vector<T>(static_cast<size_t>(L * batch * n_kv * max_pages * 2 * d)));
    cuda::BoundaryArgs a;
    a.jobs = to_device(jobs);
    a.n_jobs = 2;
    a.budget_cache = cache_d;
    a.summaries = summaries_d;
    a.cpu_chunks = chunks;
    a.pages_per_chunk = ppc;
    a.n_layer = L, a.max_batch = batch, a.n_slots = n_slots, a.max_pages = max_pages, a.page_size = p;
    a.n_head_kv = n_kv, a.head_dim = d, a.elem_bytes = static_cast<int32_t>(eb);
    a.store_code = store_code;
    a.store_block_bytes = block_bytes;
    cuda::page_boundary(a, nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    auto block_at = [&](int cpu_page, int il, int h) {
        return static_cast<const uint8_t*>(store.host_chunk(cpu_page / ppc)) + (cpu_page % ppc) * page_bytes + (il * n_kv + h) * block_bytes;
    };
    std::vector<float> hnd(static_cast<size_t>(2 * p * d)), decoded(hnd.size()), scales(static_cast<size_t>(kv_block_scales(p, d)));
    std::vector<uint8_t> codes(hnd.size());
    for (const auto& job : jobs)
        for (int il = 0; il < L; ++il)
            for (int h = 0; h < n_kv; ++h) {
                const T* src = cache.data() + ((static_cast<int64_t>(il) * batch + job.seq) * n_slots + job.src_slot) * slot_elems;
                for (int r = 0; r < 2 * p; ++r)
                    for (int i = 0; i < d; ++i) hnd[static_cast<size_t>(r * d + i)] = elem_f32(src[(r / p) * p * token + (r % p) * token + h * d + i]);
                cpu::quantize_kv_block(hnd.data(), p, d, code, codes.data(), scales.data());
                const uint8_t* got = block_at(job.cpu_page, il, h);
                ASSERT_EQ(0, std::memcmp(got, codes.data(), codes.size())) << "codes of layer " << il << " head " << h;
                ASSERT_EQ(0, std::memcmp(got + codes.size(), scales.data(), scales.size() * 4)) << "scales of layer " << il << " head " << h;
            }
    // Gather: every (layer, seq, head) brings page job.page (its CPU page job.cpu_page) into slot 0.
    std::vector<int32_t> cpu_page_of(static_cast<size_t>(batch * max_pages), 0);
    for (const auto& job : jobs) cpu_page_of[static_cast<size_t>(job.seq * max_pages + job.page)] = job.cpu_page;
    std::vector<cuda::GatherJob> gjobs;
    for (const auto& job : jobs)
        for (int h = 0; h < n_kv; ++h) gjobs.push_back({job.seq, h, job.page, 0});
    auto* gjobs_d = to_device(gjobs);
    auto* n_jobs_d = to_device(std::vector<int32_t>{static_cast<int32_t>(gjobs.size())});
    auto* cpu_page_of_d = to_device(cpu_page_of);
    for (int il = 0; il < L; ++il) {
        cuda::GatherArgs ga;
        ga.cpu_chunks = chunks;
        ga.pages_per_chunk = ppc;
        ga.cpu_page_of = cpu_page_of_d;
        ga.budget_cache = cache_d;
        ga.jobs = gjobs_d;
        ga.n_jobs = n_jobs_d;
        ga.il = il, ga.n_layer = L, ga.max_batch = batch, ga.max_pages = max_pages, ga.n_slots = n_slots;
        ga.page_size = p, ga.n_head_kv = n_kv, ga.head_dim = d, ga.elem_bytes = static_cast<int32_t>(eb);
        ga.ctas = 3;  // fewer blocks than jobs: a block decodes several
        ga.store_code = store_code;
        ga.store_block_bytes = block_bytes;
        ASSERT_EQ(cuda::gather_pages(ga, nullptr), "");
    }
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const auto after = to_host(cache_d, cache.size());
    for (const auto& job : jobs)
        for (int il = 0; il < L; ++il)
            for (int h = 0; h < n_kv; ++h) {
                const uint8_t* block = block_at(job.cpu_page, il, h);
                std::memcpy(scales.data(), block + codes.size(), scales.size() * 4);
                cpu::dequantize_kv_block(block, scales.data(), p, d, code, decoded.data());
                const T* slot = after.data() + ((static_cast<int64_t>(il) * batch + job.seq) * n_slots + 0) * slot_elems;
                for (int r = 0; r < 2 * p; ++r)
                    for (int i = 0; i < d; ++i) {
                        const T got = slot[(r / p) * p * token + (r % p) * token + h * d + i];
                        ASSERT_EQ(got, f32_elem<T>(decoded[static_cast<size_t>(r * d + i)])) << "layer " << il << " head " << h << " row " << r << " dim " << i;
                    }
            }
    cudaFree(const_cast<cuda::BoundaryJob*>(a.jobs)), cudaFree(cache_d), cudaFree(summaries_d), cudaFree(chunks);
    cudaFree(gjobs_d), cudaFree(n_jobs_d), cudaFree(cpu_page_of_d);
}

TEST_F(CudaOps, EightBitStoreCodesAndDecodesAsTheCpuTwins) {
    for (KvCode code : {KvCode::kInt8, KvCode::kFp8E4m3}) {
        check_coded_store<uint16_t>(code);
        check_coded_store<float>(code);
    }
}

// Top-k edge cases of the device selection: all-equal scores (a zero query) must pick the
// smallest pages; pages whose summaries repeat with period 50 make every score value appear ~80
// times, so the k-th largest is tied across the whole candidate range (the smaller pages win);
// random scores over 300 and 4100 pages (a 128K-token context) must match the CPU policy.
TEST_F(CudaOps, SelectionTiesAndLongContexts) {
    std::mt19937 rng(21);
    const int head_dim = 64, ns = 16, nw = 16, k = 32, n_slots = ns + k + nw;
    for (int max_pages : {300, 4100}) {
        for (int variant : {0, 1, 2}) {
            const bool zero_query = variant == 0, periodic = variant == 2;
            auto summaries = to_bf16(randn(static_cast<size_t>(max_pages * 2 * head_dim), rng));
            if (periodic)
                for (int pg = 50; pg < max_pages; ++pg)
                    std::copy_n(summaries.begin() + (pg % 50) * 2 * head_dim, 2 * head_dim, summaries.begin() + pg * 2 * head_dim);
            std::vector<float> q = randn(static_cast<size_t>(4 * head_dim), rng);  // group of 4
            if (zero_query) std::fill(q.begin(), q.end(), 0.0f);
            cuda::SelectArgs a;
            a.q = to_device(q);
            a.summaries = to_device(summaries);
            a.n_pages = to_device(std::vector<int32_t>{max_pages});
            a.page_of_slot = to_device(std::vector<int32_t>(static_cast<size_t>(n_slots), -1));
            a.slot_of_page = to_device(std::vector<int32_t>(static_cast<size_t>(max_pages), -1));
            cuda::GatherJob* d_jobs = nullptr;
            ASSERT_EQ(cudaMalloc(&d_jobs, sizeof(cuda::GatherJob) * k), cudaSuccess);
            a.jobs = d_jobs;
            a.n_jobs = to_device(std::vector<int32_t>{12345});  // stale: the score kernel zeroes it
            a.scores = poisoned(static_cast<size_t>(4 * max_pages));
            a.n_seq = 1, a.n_head = 4, a.n_head_kv = 1, a.head_dim = head_dim, a.max_pages = max_pages;
            a.n_sink_page = ns, a.n_recent_page = nw, a.n_select = k, a.n_slots = n_slots;
            a.agg = static_cast<int>(GroupAgg::kSoftmaxMean);
            cuda::select_pages(a, nullptr);
            auto got = to_host(a.page_of_slot, static_cast<size_t>(n_slots));
            std::vector<int32_t> middle(got.begin() + ns, got.begin() + ns + k);
            std::vector<int32_t> want;
            if (zero_query) {
                for (int i = 0; i < k; ++i) want.push_back(ns + i);
            } else {
                const int end = max_pages - nw, n = end - ns;
                std::vector<float> scores(static_cast<size_t>(4 * n)), aggregated(static_cast<size_t>(n));
                score_pages(q.data(), 4, head_dim, from_bf16(summaries).data(), ns, end, scores.data());
                aggregate_scores(scores.data(), 4, n, GroupAgg::kSoftmaxMean, aggregated.data());
                want = top_k_pages(aggregated, ns, k);
            }
            EXPECT_EQ(middle, want) << max_pages << " pages, variant " << variant;  // ascending placement
            EXPECT_EQ(to_host(a.n_jobs, 1)[0], k);
            cudaFree(const_cast<float*>(a.q)), cudaFree(const_cast<void*>(a.summaries));
            cudaFree(const_cast<int32_t*>(a.n_pages)), cudaFree(a.page_of_slot), cudaFree(a.slot_of_page);
            cudaFree(d_jobs), cudaFree(a.n_jobs), cudaFree(a.scores);
        }
    }
}

TEST_F(CudaOps, SelectionMatchesTheCpuPolicy) {
    std::mt19937 rng(13);
    const int n_seq = 3, n_head_kv = 2, ns = 4, nw = 4, k = 24, n_slots = ns + k + nw, max_pages = 300;
    const std::vector<int32_t> n_pages{300, 100, 33};
    for (int head_dim : {64, 128}) {
        for (int group : {1, 4, 7}) {
            for (GroupAgg agg : {GroupAgg::kSoftmaxMean, GroupAgg::kMean, GroupAgg::kMax}) {
                // bf16 summaries, and fp32 (--gpu-dtype f32) for the mean aggregation
                const int elem_bytes = agg == GroupAgg::kMean ? 4 : 2;
                const int n_head = n_head_kv * group;
                const auto summaries_raw = randn(static_cast<size_t>(n_seq * n_head_kv * max_pages * 2 * head_dim), rng);
                const auto summaries = to_bf16(summaries_raw);
                const auto q = randn(static_cast<size_t>(n_seq * n_head * head_dim), rng);
                std::vector<int32_t> page_of_slot(static_cast<size_t>(n_seq * n_head_kv * n_slots), -1);
                std::vector<int32_t> slot_of_page(static_cast<size_t>(n_seq * n_head_kv * max_pages), -1);
                std::vector<uint8_t> flags(static_cast<size_t>(n_seq * n_head_kv));
                for (int s = 0; s < n_seq; ++s)
                    for (int h = 0; h < n_head_kv; ++h) {
                        flags[static_cast<size_t>(s * n_head_kv + h)] = static_cast<uint8_t>(rng() % 4 != 0);
                        std::vector<int32_t> cand(static_cast<size_t>(n_pages[static_cast<size_t>(s)] - nw - ns));
                        std::iota(cand.begin(), cand.end(), ns);
                        std::shuffle(cand.begin(), cand.end(), rng);
                        for (int m = 0; m < k; ++m) {  // a random resident set in random slot order
                            page_of_slot[static_cast<size_t>((s * n_head_kv + h) * n_slots + ns + m)] = cand[static_cast<size_t>(m)];
                            slot_of_page[static_cast<size_t>((s * n_head_kv + h) * max_pages + cand[static_cast<size_t>(m)])] = ns + m;
                        }
                    }
                cuda::SelectArgs a;
                a.q = to_device(q);
                a.summaries = elem_bytes == 2 ? static_cast<const void*>(to_device(summaries)) : to_device(summaries_raw);
                a.elem_bytes = elem_bytes;
                a.n_pages = to_device(n_pages);
                a.flags = to_device(flags);
                a.page_of_slot = to_device(page_of_slot);
                a.slot_of_page = to_device(slot_of_page);
                cuda::GatherJob* d_jobs = nullptr;
                ASSERT_EQ(cudaMalloc(&d_jobs, sizeof(cuda::GatherJob) * n_seq * n_head_kv * k), cudaSuccess);
                a.jobs = d_jobs;
                a.n_jobs = to_device(std::vector<int32_t>{12345});  // stale: the score kernel zeroes it
                a.scores = poisoned(static_cast<size_t>(n_seq * n_head_kv * group * max_pages));
                a.n_seq = n_seq, a.n_head = n_head, a.n_head_kv = n_head_kv, a.head_dim = head_dim, a.max_pages = max_pages;
                a.n_sink_page = ns, a.n_recent_page = nw, a.n_select = k, a.n_slots = n_slots, a.agg = static_cast<int>(agg);
                cuda::select_pages(a, nullptr);
                const int n_jobs = to_host(a.n_jobs, 1)[0];
                const auto jobs = to_host(d_jobs, static_cast<size_t>(n_jobs));
                const auto gpu_slots = to_host(a.page_of_slot, page_of_slot.size());
                const auto gpu_where = to_host(a.slot_of_page, slot_of_page.size());
                const auto sum32 = elem_bytes == 2 ? from_bf16(summaries) : summaries_raw;
                int expected_jobs = 0;
                for (int s = 0; s < n_seq; ++s)
                    for (int h = 0; h < n_head_kv; ++h) {
                        const size_t sh = static_cast<size_t>(s * n_head_kv + h);
                        std::vector<int32_t> before(page_of_slot.begin() + static_cast<long>(sh * n_slots + ns),
                                                    page_of_slot.begin() + static_cast<long>(sh * n_slots + ns + k));
                        std::vector<int32_t> after(gpu_slots.begin() + static_cast<long>(sh * n_slots + ns),
                                                   gpu_slots.begin() + static_cast<long>(sh * n_slots + ns + k));
                        if (!flags[sh]) {
                            EXPECT_EQ(after, before) << "unflagged head changed";
                            continue;
                        }
                        const int end = n_pages[static_cast<size_t>(s)] - nw, n = end - ns;
                        std::vector<float> scores(static_cast<size_t>(group * n)), aggregated(static_cast<size_t>(n));
                        score_pages(q.data() + (s * n_head + h * group) * head_dim, group, head_dim,
                                    sum32.data() + sh * max_pages * 2 * head_dim, ns, end, scores.data());
                        aggregate_scores(scores.data(), group, n, agg, aggregated.data());
                        const auto want = top_k_pages(aggregated, ns, k);
                        std::vector<int32_t> got = after;
                        std::sort(got.begin(), got.end());
                        if (got != want) {  // only a near-tie at the k-th place may differ (fp32 order)
                            std::vector<float> sorted = aggregated;
                            std::sort(sorted.rbegin(), sorted.rend());
                            const float kth = sorted[static_cast<size_t>(k - 1)];
                            for (int32_t page : got)
                                EXPECT_GE(aggregated[static_cast<size_t>(page - ns)], kth - 1e-5f * std::fabs(kth))
                                    << "seq " << s << " head " << h << " page " << page;
                            continue;
                        }
                        std::vector<RecallJob> cpu_jobs;
                        plan_head_recall(s, h, want, before, ns, cpu_jobs);
                        expected_jobs += static_cast<int>(cpu_jobs.size());
                        std::vector<std::pair<int, int>> gpu_pairs, cpu_pairs;
                        for (const auto& j : jobs)
                            if (j.seq == s && j.ikv == h) gpu_pairs.emplace_back(j.page, j.slot);
                        for (const auto& j : cpu_jobs) cpu_pairs.emplace_back(j.page, j.slot);
                        std::sort(gpu_pairs.begin(), gpu_pairs.end());
                        EXPECT_EQ(gpu_pairs, cpu_pairs) << "seq " << s << " head " << h;
                        for (int m = 0; m < k; ++m)  // maps stay inverse
                            EXPECT_EQ(gpu_where[sh * max_pages + static_cast<size_t>(after[static_cast<size_t>(m)])], ns + m);
                    }
                EXPECT_GE(n_jobs, expected_jobs);
                for (const void* p : {static_cast<const void*>(a.q), static_cast<const void*>(a.summaries),
                                      static_cast<const void*>(a.n_pages), static_cast<const void*>(a.flags),
                                      static_cast<const void*>(a.page_of_slot), static_cast<const void*>(a.slot_of_page),
                                      static_cast<const void*>(d_jobs), static_cast<const void*>(a.n_jobs),
                                      static_cast<const void*>(a.scores)})
                    cudaFree(const_cast<void*>(p));
            }
        }
    }
}

TEST_F(CudaOps, TopKMatchesAStableSortOfEveryRow) {
    std::mt19937 rng(23);
    // Kinds of rows: 0 normal values, 1 nine distinct values (ties everywhere), 2 all equal,
    // 3 normal with a tenth of the entries at -inf.
    for (int64_t n : {int64_t{1}, int64_t{5}, int64_t{1000}, int64_t{1024}, int64_t{1025}, int64_t{50001}, int64_t{128256},
                      int64_t{152064}})
        for (int32_t k : {1, 2, 40, 256}) {
            if (k > n) continue;
            const int32_t rows = n > 100000 ? 2 : 4;
            std::vector<float> x(static_cast<size_t>(rows * n));
            for (int32_t r = 0; r < rows; ++r)
                for (int64_t i = 0; i < n; ++i) {
                    float& v = x[static_cast<size_t>(r * n + i)];
                    switch (r % 4) {
                    case 0: v = std::normal_distribution<float>(0.0f, 3.0f)(rng); break;
                    case 1: v = static_cast<float>(static_cast<int>(rng() % 9)) - 4.0f; break;
                    case 2: v = 0.5f; break;
                    default: v = rng() % 10 == 0 ? -INFINITY : std::normal_distribution<float>()(rng); break;
                    }
                }
            float* dx = to_device(x);
            const int64_t scratch = cuda::top_k_scratch_elems(rows, n, k);
            float* dsv = poisoned(static_cast<size_t>(scratch));
            int32_t* dsi = to_device(std::vector<int32_t>(static_cast<size_t>(scratch), -1));
            float* dv = poisoned(static_cast<size_t>(rows * k));
            int32_t* di = to_device(std::vector<int32_t>(static_cast<size_t>(rows * k), -1));
            cuda::top_k(dx, rows, n, k, dsv, dsi, di, dv, nullptr);
            ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
            const auto got_v = to_host(dv, static_cast<size_t>(rows * k));
            const auto got_i = to_host(di, static_cast<size_t>(rows * k));
            for (int32_t r = 0; r < rows; ++r) {
                std::vector<int32_t> want(static_cast<size_t>(n));
                std::iota(want.begin(), want.end(), 0);
                const float* row = x.data() + r * n;
                std::stable_sort(want.begin(), want.end(), [&](int32_t a, int32_t b) { return row[a] > row[b]; });
                for (int32_t j = 0; j < k; ++j) {
                    const auto at = static_cast<size_t>(r * k + j);
                    ASSERT_EQ(got_i[at], want[static_cast<size_t>(j)]) << "n " << n << " k " << k << " row " << r << " rank " << j;
                    ASSERT_EQ(got_v[at], row[want[static_cast<size_t>(j)]]);
                }
            }
            for (void* p : {static_cast<void*>(dx), static_cast<void*>(dsv), static_cast<void*>(dsi), static_cast<void*>(dv),
                            static_cast<void*>(di)})
                cudaFree(p);
        }
    EXPECT_THROW(cuda::top_k(nullptr, 1, 10, 11, nullptr, nullptr, nullptr, nullptr, nullptr), Error);
    EXPECT_THROW(cuda::top_k(nullptr, 1, 1000, cuda::kMaxTopK + 1, nullptr, nullptr, nullptr, nullptr, nullptr), Error);
}

}  // namespace
}  // namespace freekv
