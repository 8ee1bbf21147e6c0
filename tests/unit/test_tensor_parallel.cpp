// test_tensor_parallel.cpp: the tensor-parallel split (parallel/tp_plan, tp_shard) on the CPU:
// the plan covers every KV head, feed-forward row and vocabulary row once and refuses splits the
// model cannot take; and a reference forward that runs each rank's shard alone and sums the
// partial products (the all-reduce), looks up only its own vocabulary rows, and concatenates the
// ranks' logits, gives the unsplit model's logits (fp32, up to summation order) on real fixtures
// and on a random model with biases and uneven feed-forward and vocabulary splits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <map>

#include "core/error.h"
#include "core/system_memory.h"
#include "kv/full_attention_kv.h"
#include "kv/paged_kv_cache.h"
#include "model/model_loader.h"
#include "model/synthetic_model.h"
#include "parallel/tp_memory_plan.h"
#include "parallel/tp_plan.h"
#include "parallel/tp_shard.h"
#include "test_util.h"

namespace freekv {
namespace {

ModelConfig shape(int64_t n_head, int64_t n_head_kv, int64_t n_ff, int64_t n_vocab) {
    ModelConfig c = named_shape("tiny");
    c.n_head = n_head;
    c.n_head_kv = n_head_kv;
    c.n_ff = n_ff;
    c.n_vocab = n_vocab;
    return c;
}

TEST(TpPlan, CoversEveryHeadRowAndTokenOnce) {
    for (int n : {1, 2, 4}) {
        const ModelConfig c = shape(8, 4, 100, 500);
        const TpPlan plan = make_tp_plan(c, n);
        ASSERT_EQ(plan.ranks.size(), static_cast<size_t>(n));
        int64_t kv = 0, q = 0, ff = 0, vocab = 0;
        for (const TpRank& r : plan.ranks) {
            EXPECT_EQ(r.kv_heads.begin, kv);
            EXPECT_EQ(r.q_heads.begin, q);
            EXPECT_EQ(r.ff.begin, ff);
            EXPECT_EQ(r.vocab.begin, vocab);
            EXPECT_EQ(r.q_heads.count, r.kv_heads.count * c.group_size()) << "a rank keeps whole query groups";
            EXPECT_GT(r.ff.count, 0);
            if (r.rank + 1 < n) {
                EXPECT_EQ(r.ff.count % kTpAlign, 0);
                EXPECT_EQ(r.vocab.count % kTpAlign, 0);
            }
            kv = r.kv_heads.end(), q = r.q_heads.end(), ff = r.ff.end(), vocab = r.vocab.end();
        }
        EXPECT_EQ(kv, c.n_head_kv);
        EXPECT_EQ(q, c.n_head);
        EXPECT_EQ(ff, c.n_ff);
        EXPECT_EQ(vocab, c.n_vocab);
    }
    // 100 = 12 units of 8 and 4 over: 3 units each, the last rank also the 4.
    const TpPlan four = make_tp_plan(shape(8, 4, 100, 500), 4);
    EXPECT_EQ(four.ranks[0].ff.count, 24);
    EXPECT_EQ(four.ranks[3].ff.count, 28);
}

// Per-rank weight bytes: the ranks together hold the whole model once plus N - 1 more copies of
// the norms (every rank keeps them whole); one rank of the 8B shape holds its 16.06 GB (bf16).
TEST(TpPlan, RanksHoldTheWeightsOnceAndTheNormsEach) {
    ModelConfig c = shape(8, 4, 100, 500);
    c.qkv_bias = true;
    const int64_t whole = tp_weight_bytes(c, make_tp_plan(c, 1).ranks[0], 2);
    const int64_t norms = 2 * (2 * c.n_layer * c.n_embd + c.n_embd);
    for (int n : {2, 4}) {
        int64_t sum = 0;
        for (const TpRank& r : make_tp_plan(c, n).ranks) sum += tp_weight_bytes(c, r, 2);
        EXPECT_EQ(sum, whole + (n - 1) * norms) << n;
    }
    // The loader's own count of a synthetic model's bytes agrees for one rank.
    const LoadedModel m = make_synthetic_model(c, "tp-random");
    int64_t loaded = 2 * (m.model->weights().token_embd.numel() + m.model->weights().output.numel() +
                          m.model->weights().output_norm.numel());
    for (const LlamaLayerWeights& l : m.model->weights().layers)
        for (const WeightView* v : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.bq, &l.bk, &l.bv, &l.ffn_norm, &l.w_gate,
                                    &l.w_up, &l.w_down})
            loaded += 2 * v->numel();
    EXPECT_EQ(whole, loaded);
    const ModelConfig b8 = named_shape("llama-3.1-8b");
    EXPECT_EQ(tp_weight_bytes(b8, make_tp_plan(b8, 1).ranks[0], 2), int64_t{16060522496});
}

// Each GPU's plan is its shard's: one rank's is the whole model's plan; the ranks' pinned stores add
// up to the whole model's, their device bytes per sequence too but for the rows every rank keeps
// whole; the sequence count is the tightest GPU's, or the
// host's when all ranks' pinned stores together are the limit.
TEST(TpMemoryPlan, EachGpuHoldsItsShareAndTheCountIsTheTightest) {
    const ModelConfig c = named_shape("llama-3.1-70b");
    KvModeConfig freekv;  // freekv, budget 2048
    const int64_t ctx = 32768;
    const gpu::GpuMemoryPlan whole = gpu::plan_gpu_memory(c, freekv, 2, tp_weight_bytes(c, make_tp_plan(c, 1).ranks[0], 2), ctx, 2048);
    const TpMemoryPlan one = plan_tp_memory(c, freekv, 2, 1, ctx, 2048);
    ASSERT_EQ(one.ranks.size(), 1u);
    EXPECT_EQ(one.ranks[0].weight_bytes, whole.weight_bytes);
    EXPECT_EQ(one.ranks[0].device_per_sequence, whole.device_per_sequence);
    EXPECT_EQ(one.ranks[0].host_per_sequence, whole.host_per_sequence);
    const TpMemoryPlan four = plan_tp_memory(c, freekv, 2, 4, ctx, 2048);
    ASSERT_EQ(four.ranks.size(), 4u);
    int64_t device = 0;
    for (const gpu::GpuMemoryPlan& p : four.ranks) {
        device += p.device_per_sequence;
        EXPECT_EQ(p.store_bytes_per_token * 4, whole.store_bytes_per_token);
    }
    EXPECT_EQ(four.host_per_sequence(), whole.host_per_sequence);
    // The KV, summaries and maps split by head; each rank also keeps its own residual-width
    // decode rows (n_embd floats, replicated by design): under 1 MiB more in all, of ~1 GB.
    EXPECT_GE(device, whole.device_per_sequence);
    EXPECT_LT(device - whole.device_per_sequence, int64_t{1} << 20);
    const int64_t gib = int64_t{1} << 30;
    // 80 GiB per GPU: the GPUs alone fit (80 GiB - weights - fixed - prefill) / per-sequence each.
    const int64_t by_gpu = four.ranks[0].max_sequences(80 * gib, 0);
    EXPECT_GT(by_gpu, 100);
    EXPECT_EQ(four.max_sequences(80 * gib, 0), by_gpu);
    // A pinned cap of 10 sequences' stores (all ranks') binds first.
    EXPECT_EQ(four.max_sequences(80 * gib, 10 * four.host_per_sequence() + 1), 10);
    // The 70B shape's 131 GiB of bf16 weights do not fit one 80 GiB GPU.
    EXPECT_EQ(one.max_sequences(80 * gib, 0), 0);
    EXPECT_NE(four.describe().find("rank 3 of 4 (KV heads 6-7"), std::string::npos) << four.describe();
}

TEST(TpPlan, RefusesSplitsTheModelCannotTake) {
    try {
        make_tp_plan(shape(8, 2, 128, 512), 4);
        FAIL() << "2 KV heads over 4 ranks";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("--tensor-parallel 4"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("use one of 1, 2"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("2 KV heads"), std::string::npos) << e.what();
    }
    EXPECT_THROW(make_tp_plan(shape(8, 2, 128, 512), 0), Error);
    EXPECT_THROW(make_tp_plan(shape(8, 8, 40, 512), 8), Error);  // 5 rows of feed-forward per GPU
}

// Causal attention of one rank's heads over a whole prompt: q [T][nq][hd], k/v [T][nkv][hd].
std::vector<float> causal_attention(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                                    int64_t T, int64_t nq, int64_t nkv, int64_t hd) {
    std::vector<float> out(static_cast<size_t>(T * nq * hd), 0.0f);
    const int64_t group = nq / nkv;
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    std::vector<double> s(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < nq; ++h) {
            const float* qv = q.data() + (t * nq + h) * hd;
            const int64_t kh = h / group;
            double mx = -1e300;
            for (int64_t j = 0; j <= t; ++j) {
                const float* kv = k.data() + (j * nkv + kh) * hd;
                double d = 0;
                for (int64_t i = 0; i < hd; ++i) d += static_cast<double>(qv[i]) * kv[i];
                s[static_cast<size_t>(j)] = d * scale;
                mx = std::max(mx, s[static_cast<size_t>(j)]);
            }
            double sum = 0;
            for (int64_t j = 0; j <= t; ++j) sum += (s[static_cast<size_t>(j)] = std::exp(s[static_cast<size_t>(j)] - mx));
            float* o = out.data() + (t * nq + h) * hd;
            for (int64_t j = 0; j <= t; ++j) {
                const float* vv = v.data() + (j * nkv + kh) * hd;
                const double p = s[static_cast<size_t>(j)] / sum;
                for (int64_t i = 0; i < hd; ++i) o[i] += static_cast<float>(p * vv[i]);
            }
        }
    return out;
}

// The tensor-parallel forward of a prompt with every rank's shard run in turn: embedding rows
// looked up by their owner and summed; per layer, each rank's q/k/v, rope, attention and o
// columns, and gate/up and down columns, summed over ranks into the residual; the last row's
// logits concatenated in vocabulary order.
std::vector<float> tp_forward(const ModelConfig& c, const std::vector<TpShard>& shards, const TpPlan& plan,
                              const std::vector<int32_t>& tokens) {
    const auto T = static_cast<int64_t>(tokens.size());
    const int64_t E = c.n_embd, hd = c.head_dim;
    const auto inv_freq = c.rope_inv_freq();
    std::vector<int32_t> pos(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) pos[static_cast<size_t>(t)] = static_cast<int32_t>(t);
    std::vector<float> x(static_cast<size_t>(T * E), 0.0f), h(x.size()), acc(x.size()), part(x.size());
    for (size_t ir = 0; ir < shards.size(); ++ir) {
        const TpRange vr = plan.ranks[ir].vocab;
        for (int64_t t = 0; t < T; ++t) {
            const int32_t id = tokens[static_cast<size_t>(t)];
            if (id < vr.begin || id >= vr.end()) continue;
            const int32_t local = static_cast<int32_t>(id - vr.begin);
            ref::embedding(shards[ir].weights.token_embd, &local, 1, part.data());
            for (int64_t i = 0; i < E; ++i) x[static_cast<size_t>(t * E + i)] += part[static_cast<size_t>(i)];
        }
    }
    for (int64_t il = 0; il < c.n_layer; ++il) {
        const LlamaLayerWeights& any = shards[0].weights.layers[static_cast<size_t>(il)];
        ref::rms_norm(x.data(), T, E, any.attn_norm, c.rms_norm_eps, h.data());
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (const TpShard& s : shards) {
            const LlamaLayerWeights& w = s.weights.layers[static_cast<size_t>(il)];
            const int64_t nq = s.config.n_head, nkv = s.config.n_head_kv;
            std::vector<float> q(static_cast<size_t>(T * nq * hd)), k(static_cast<size_t>(T * nkv * hd)), v(k.size());
            ref::matmul(h.data(), T, w.wq, q.data(), c.qkv_bias ? &w.bq : nullptr);
            ref::matmul(h.data(), T, w.wk, k.data(), c.qkv_bias ? &w.bk : nullptr);
            ref::matmul(h.data(), T, w.wv, v.data(), c.qkv_bias ? &w.bv : nullptr);
            ref::rope(q.data(), T, nq, hd, pos.data(), inv_freq, c.rope_style);
            ref::rope(k.data(), T, nkv, hd, pos.data(), inv_freq, c.rope_style);
            const auto att = causal_attention(q, k, v, T, nq, nkv, hd);
            ref::matmul(att.data(), T, w.wo, part.data());
            for (size_t i = 0; i < acc.size(); ++i) acc[i] += part[i];
        }
        for (size_t i = 0; i < x.size(); ++i) x[i] += acc[i];
        ref::rms_norm(x.data(), T, E, any.ffn_norm, c.rms_norm_eps, h.data());
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (const TpShard& s : shards) {
            const LlamaLayerWeights& w = s.weights.layers[static_cast<size_t>(il)];
            std::vector<float> gate(static_cast<size_t>(T * s.config.n_ff)), up(gate.size());
            ref::matmul(h.data(), T, w.w_gate, gate.data());
            ref::matmul(h.data(), T, w.w_up, up.data());
            ref::silu_mul(gate.data(), up.data(), static_cast<int64_t>(gate.size()));
            ref::matmul(gate.data(), T, w.w_down, part.data());
            for (size_t i = 0; i < acc.size(); ++i) acc[i] += part[i];
        }
        for (size_t i = 0; i < x.size(); ++i) x[i] += acc[i];
    }
    std::vector<float> last(static_cast<size_t>(E)), logits(static_cast<size_t>(c.n_vocab));
    ref::rms_norm(x.data() + (T - 1) * E, 1, E, shards[0].weights.output_norm, c.rms_norm_eps, last.data());
    for (size_t ir = 0; ir < shards.size(); ++ir)
        ref::matmul(last.data(), 1, shards[ir].weights.output, logits.data() + plan.ranks[ir].vocab.begin);
    return logits;
}

// The unsplit model's logits for the last token of the prompt.
std::vector<float> full_forward(const LoadedModel& m, const std::vector<int32_t>& tokens) {
    const ModelConfig& c = m.config;
    const auto T = static_cast<int64_t>(tokens.size());
    PagedKvCache cache(c.n_layer, c.n_head_kv, c.head_dim, 16, T / 16 + 2);
    const int32_t seq = cache.add_sequence();
    FullAttentionKv kv(cache, c.n_head);
    const SequenceSpan span{seq, 0, T, 0};
    const int64_t last = T - 1;
    std::vector<float> logits;
    m.model->forward_batch(tokens, std::span(&span, 1), kv, std::span(&last, 1), logits);
    return logits;
}

void expect_tp_matches(const LoadedModel& m, int n, const std::string& what) {
    const ModelConfig& c = m.config;
    const TpPlan plan = make_tp_plan(c, n);
    std::vector<TpShard> shards;
    for (const TpRank& r : plan.ranks) {
        shards.push_back(shard_llama_weights(m.model->weights(), c, r));
        // Each shard has the shapes the loader checks for its config.
        const LlamaLayerWeights& l = shards.back().weights.layers[0];
        EXPECT_EQ(l.wq.rows(), r.q_heads.count * c.head_dim);
        EXPECT_EQ(l.wo.cols(), r.q_heads.count * c.head_dim);
        EXPECT_EQ(l.w_down.cols(), r.ff.count);
        EXPECT_EQ(shards.back().weights.output.rows(), r.vocab.count);
    }
    const auto tokens = test::random_tokens(37, c.n_vocab, 11);
    const auto want = full_forward(m, tokens), got = tp_forward(c, shards, plan, tokens);
    ASSERT_EQ(got.size(), want.size());
    // The ranks' partial sums add in another order than one full dot product: fp32 rounding only.
    EXPECT_LE(test::nmse(got, want), 1e-10) << what << " with " << n << " ranks";
}

TEST(TpShard, SplitForwardEqualsTheWholeModel) {
    const auto fixtures = test::source_dir() / "tests/fixtures/models";
    const LoadedModel mistral = load_model((fixtures / "mistral-g2-f32").string());  // 4 heads on 2 KV heads, f32
    for (int n : {1, 2}) expect_tp_matches(mistral, n, "mistral-g2-f32");
    const LoadedModel qwen = load_model((fixtures / "qwen2-g7-bf16").string());  // biases, bf16, one KV head
    expect_tp_matches(qwen, 1, "qwen2-g7-bf16");
    // Biases with several KV heads, uneven feed-forward (100) and vocabulary (500) splits.
    ModelConfig c = shape(8, 4, 100, 500);
    c.qkv_bias = true;
    const LoadedModel random = make_synthetic_model(c, "tp-random");
    for (int n : {2, 4}) expect_tp_matches(random, n, "random 8/4 heads with biases");
}

// A synthetic model's shard made alone equals the same shard cut from the whole synthetic model,
// tensor for tensor and byte for byte (row and column splits, biases, uneven vocabulary).
TEST(TpShard, SyntheticShardMadeAloneEqualsTheCutShard) {
    ModelConfig c = shape(8, 4, 100, 500);
    c.qkv_bias = true;
    const LoadedModel whole = make_synthetic_model(c, "tp-random", 7);
    const TpPlan plan = make_tp_plan(c, 4);
    auto same = [](const WeightView& a, const WeightView& b) {
        return a.shape == b.shape && a.dtype == b.dtype && std::memcmp(a.data, b.data, static_cast<size_t>(a.rows() * a.row_bytes())) == 0;
    };
    for (const TpRank& r : plan.ranks) {
        const TpShard cut = shard_llama_weights(whole.model->weights(), c, r);
        const TpShard alone = make_synthetic_shard(c, 7, r);
        EXPECT_TRUE(same(cut.weights.token_embd, alone.weights.token_embd)) << r.rank;
        EXPECT_TRUE(same(cut.weights.output, alone.weights.output)) << r.rank;
        EXPECT_TRUE(same(cut.weights.output_norm, alone.weights.output_norm)) << r.rank;
        for (size_t il = 0; il < cut.weights.layers.size(); ++il) {
            const LlamaLayerWeights &a = cut.weights.layers[il], &b = alone.weights.layers[il];
            for (auto [x, y, name] : {std::tuple{&a.wq, &b.wq, "wq"}, {&a.wk, &b.wk, "wk"}, {&a.wv, &b.wv, "wv"}, {&a.wo, &b.wo, "wo"},
                                      {&a.bq, &b.bq, "bq"}, {&a.bk, &b.bk, "bk"}, {&a.bv, &b.bv, "bv"}, {&a.w_gate, &b.w_gate, "gate"},
                                      {&a.w_up, &b.w_up, "up"}, {&a.w_down, &b.w_down, "down"}, {&a.attn_norm, &b.attn_norm, "norm"}})
                EXPECT_TRUE(same(*x, *y)) << "rank " << r.rank << " layer " << il << " " << name;
        }
    }
}

// The whole 70B shape (141 GB of bf16) is refused up front where it does not fit, naming what to change.
TEST(TpShard, ASyntheticModelThatDoesNotFitIsRefused) {
    const ModelConfig c = named_shape("llama-3.1-70b");
    EXPECT_EQ(c.n_layer, 80);
    const int64_t available = system_memory().available;
    if (available <= 0 || available > (int64_t{150} << 30)) GTEST_SKIP() << "this host could hold the whole 70B shape";
    try {
        make_synthetic_model(c, "llama-3.1-70b");
        FAIL() << "141 GB of weights on a host with " << available << " bytes available";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("GiB of host memory"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("--shape"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace freekv
