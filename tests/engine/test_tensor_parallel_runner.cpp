// test_tensor_parallel_runner.cpp: tensor parallelism on the CPU, end to end. The host collectives
// (parallel/host_collective.h) sum in rank order with the same bits on every rank, gather columns,
// survive many back-to-back calls and wake every waiting rank when one fails; the tensor-parallel
// runner (engine/tensor_parallel_runner.h) with 2 and 4 ranks decodes the same greedy tokens as one
// rank in every KV mode, batched and prefilled in chunks, its logits equal up to summation order,
// its per-head recall counters in the whole model's head order; errors say what was wrong.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <thread>

#include "core/error.h"
#include "engine/engine.h"
#include "engine/gpu_tensor_parallel_runner.h"
#include "engine/model_runner.h"
#include "engine/rank_threads.h"
#include "engine/sampler.h"
#include "engine/tensor_parallel_runner.h"
#include "model/model_loader.h"
#include "model/synthetic_model.h"
#include "parallel/host_collective.h"
#include "decode_helpers.h"
#include "test_util.h"

namespace freekv {
namespace {

// Runs fn(rank) on n threads at once.
template <class F>
void on_threads(int n, F fn) {
    std::vector<std::thread> threads;
    for (int r = 0; r < n; ++r) threads.emplace_back(fn, r);
    for (auto& t : threads) t.join();
}

TEST(HostCollective, SumsInRankOrderWithTheSameBitsOnEveryRank) {
    const int n = 3;
    HostCollective group(n);
    for (int64_t len : {int64_t{1}, int64_t{2}, int64_t{1000}, int64_t{0}}) {
        for (int round = 0; round < 50; ++round) {  // back-to-back calls: the barriers keep them apart
            std::vector<std::vector<float>> data(n);
            for (int r = 0; r < n; ++r)
                for (int64_t i = 0; i < len; ++i)  // magnitudes far apart: the order of the sum shows in the bits
                    data[static_cast<size_t>(r)].push_back(std::ldexp(1.0f + 0.001f * static_cast<float>(i + round), 12 * r - 12) *
                                                          (r == 1 ? -1.0f : 1.0f));
            std::vector<float> want(static_cast<size_t>(len));
            for (int64_t i = 0; i < len; ++i) {
                const auto k = static_cast<size_t>(i);
                want[k] = (data[0][k] + data[1][k]) + data[2][k];
            }
            on_threads(n, [&](int r) { group.rank(r).all_reduce_sum(data[static_cast<size_t>(r)].data(), len); });
            for (int r = 0; r < n; ++r)
                for (int64_t i = 0; i < len; ++i)
                    ASSERT_EQ(data[static_cast<size_t>(r)][static_cast<size_t>(i)], want[static_cast<size_t>(i)])
                        << "rank " << r << " element " << i << " of " << len;
        }
    }
}

TEST(HostCollective, GathersEveryRanksColumns) {
    const int n = 3;
    HostCollective group(n);
    const int64_t rows = 4, cols[3] = {2, 5, 1}, col0[3] = {0, 2, 7}, total = 8;
    std::vector<std::vector<float>> parts(n), outs(n, std::vector<float>(static_cast<size_t>(rows * total), -1.0f));
    for (int r = 0; r < n; ++r)
        for (int64_t row = 0; row < rows; ++row)
            for (int64_t c = 0; c < cols[r]; ++c) parts[static_cast<size_t>(r)].push_back(static_cast<float>(100 * row + col0[r] + c));
    on_threads(n, [&](int r) {
        group.rank(r).gather_columns(parts[static_cast<size_t>(r)].data(), rows, col0[r], cols[r], outs[static_cast<size_t>(r)].data(),
                                     total);
    });
    for (int r = 0; r < n; ++r)
        for (int64_t row = 0; row < rows; ++row)
            for (int64_t c = 0; c < total; ++c)
                EXPECT_EQ(outs[static_cast<size_t>(r)][static_cast<size_t>(row * total + c)], static_cast<float>(100 * row + c))
                    << "rank " << r << " row " << row << " column " << c;
}

TEST(HostCollective, AFailedRankWakesItsPeersAndResetRecovers) {
    const int n = 3;
    HostCollective group(n);
    std::vector<std::string> errors(n);
    std::vector<float> data(10, 1.0f);
    on_threads(n, [&](int r) {
        if (r == 2) {  // fails before its first collective: ranks 0 and 1 would wait forever
            group.fail("rank 2 ran out of memory");
            return;
        }
        std::vector<float> mine = data;
        try {
            group.rank(r).all_reduce_sum(mine.data(), 10);
        } catch (const Error& e) {
            errors[static_cast<size_t>(r)] = e.what();
        }
    });
    for (int r = 0; r < 2; ++r) EXPECT_NE(errors[static_cast<size_t>(r)].find("rank 2 ran out of memory"), std::string::npos) << r;
    // Later calls fail at once until reset; then the group works again.
    EXPECT_THROW(group.rank(0).all_reduce_sum(data.data(), 10), Error);
    group.reset();
    std::vector<std::vector<float>> all(n, data);
    on_threads(n, [&](int r) { group.rank(r).all_reduce_sum(all[static_cast<size_t>(r)].data(), 10); });
    for (int r = 0; r < n; ++r) EXPECT_EQ(all[static_cast<size_t>(r)][9], 3.0f) << r;
}

// A rank that fails while its peers wait in a sum: the peers are woken, the failing rank's own error
// comes back (not a peer's "another rank failed"), and the group works again after recovery.
TEST(RankThreads, AFailingRankStopsItsPeersAndItsErrorComesBack) {
    const int n = 3;
    HostCollective group(n);
    RankThreads threads(n);
    const auto stop = [&](const std::string& why) { group.fail(why); };
    const auto recover = [&] { group.reset(); };
    try {
        threads.run_all(
            [&](int r) {
                if (r == 1) FREEKV_FAIL("rank one ran out of memory");
                std::vector<float> v(8, 1.0f);
                group.rank(r).all_reduce_sum(v.data(), 8);  // waits for rank 1 forever unless woken
            },
            stop, recover);
        FAIL() << "rank 1 failed";
    } catch (const Error& e) {
        EXPECT_STREQ(e.what(), "rank one ran out of memory");
    }
    std::vector<std::vector<float>> all(n, std::vector<float>(8, 2.0f));
    threads.run_all([&](int r) { group.rank(r).all_reduce_sum(all[static_cast<size_t>(r)].data(), 8); }, stop, recover);
    for (int r = 0; r < n; ++r) EXPECT_EQ(all[static_cast<size_t>(r)][7], 6.0f) << r;
}

KvModeConfig mode_for(KvMode kind) {
    KvModeConfig c = test::small_budget_mode(kind);
    if (kind != KvMode::kFull) c.attention_mass_recall = true;
    return c;
}

// Two sequences prefilled in chunks of 64 (decode_helpers.h), then 24 greedy steps of both.
test::Decoded decode_two(const LoadedModel& m, const KvModeConfig& mode, int tensor_parallel) {
    auto runner = make_model_runner(m, mode, 2, 240, nullptr, {}, {}, tensor_parallel);
    return test::decode_two(*runner, m.config.n_vocab, 500, 64);
}

LoadedModel random_model() {  // 4 KV heads (TP up to 4), biases, uneven feed-forward and vocabulary splits
    ModelConfig c = named_shape("tiny");
    c.n_head = 8, c.n_head_kv = 4, c.n_ff = 100, c.n_vocab = 500, c.qkv_bias = true;
    return make_synthetic_model(c, "tp-random");
}

TEST(TensorParallelRunner, RanksDecodeTheTokensOfOneRankInEveryMode) {
    const LoadedModel random = random_model();
    const LoadedModel mistral = load_model((test::source_dir() / "tests/fixtures/models/mistral-g2-f32").string());
    for (const auto& [m, ranks] : {std::pair{&random, std::vector<int>{2, 4}}, std::pair{&mistral, std::vector<int>{2}}}) {
        for (KvMode kind : {KvMode::kFull, KvMode::kFreekv, KvMode::kQuest, KvMode::kStreaming}) {
            const std::string what = fmt::format("{}, {}", m->config.arch, kv_mode_name(kind));
            const test::Decoded one = decode_two(*m, mode_for(kind), 1);
            for (int n : ranks) {
                const test::Decoded split = decode_two(*m, mode_for(kind), n);
                EXPECT_EQ(split.tokens, one.tokens) << what << ", " << n << " ranks";
                ASSERT_EQ(split.logits.size(), one.logits.size());
                // Each rank's partial products add up in another order than one rank's sums: fp32 rounding only.
                EXPECT_LE(test::nmse(split.logits, one.logits), 1e-10) << what << ", " << n << " ranks";
                if (kind == KvMode::kFull) continue;
                // Every KV head selects and recalls on its own, so the per-head counters are one rank's, in head order.
                EXPECT_EQ(split.stats.recalled_sync, one.stats.recalled_sync) << what << ", " << n << " ranks";
                EXPECT_EQ(split.stats.recalled_background, one.stats.recalled_background) << what << ", " << n << " ranks";
                EXPECT_EQ(split.stats.head_tests, one.stats.head_tests) << what;
                EXPECT_EQ(split.stats.head_flags, one.stats.head_flags) << what;
                EXPECT_EQ(split.stats.transfer.sync_bytes + split.stats.transfer.background_bytes,
                          one.stats.transfer.sync_bytes + one.stats.transfer.background_bytes) << what;
                ASSERT_EQ(split.stats.mass_recall.size(), one.stats.mass_recall.size()) << what;
                ASSERT_FALSE(one.stats.mass_recall.empty()) << what << ": the prompts must run sparse";
                for (size_t i = 0; i < one.stats.mass_recall.size(); ++i)
                    ASSERT_NEAR(split.stats.mass_recall[i], one.stats.mass_recall[i], 1e-5) << what << " value " << i;
            }
        }
    }
}

// Three requests at once through the engine (scheduler, chunked prefill, batched decode) with
// --tensor-parallel 2: each request's greedy tokens are those of one rank.
std::vector<std::vector<int32_t>> serve_three(const LoadedModel& m, int tensor_parallel) {
    EngineConfig config;
    config.kv_mode = mode_for(KvMode::kFreekv);
    config.n_ctx = 256;
    config.max_batch = 3;
    config.prefill_chunk = 64;
    config.tensor_parallel = tensor_parallel;
    std::vector<std::vector<int32_t>> prompts;
    for (uint32_t i = 0; i < 3; ++i) prompts.push_back(test::random_tokens(100 + 40 * i, m.config.n_vocab, 70 + i));
    return test::serve_greedy(m, config, prompts, 20);
}

TEST(TensorParallelRunner, TheEngineServesRanksLikeOne) {
    const LoadedModel random = random_model();
    const auto one = serve_three(random, 1), two = serve_three(random, 2);
    EXPECT_EQ(one[2].size(), 20u);
    EXPECT_EQ(two, one);
}

TEST(TensorParallelRunner, ErrorsSayWhatWasWrong) {
    const LoadedModel random = random_model();
    // 4 KV heads do not split over 3 ranks: make_tp_plan's refusal.
    try {
        make_model_runner(random, mode_for(KvMode::kFull), 1, 64, nullptr, {}, {}, 3);
        FAIL() << "4 KV heads over 3 ranks";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("4 KV heads"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("--tensor-parallel 3"), std::string::npos) << e.what();
    }
    EXPECT_THROW(make_model_runner(random, mode_for(KvMode::kFull), 1, 64, nullptr, {}, {}, 0), Error);
    // A span past the context fails on every rank with the one-rank runner's message, and the ranks go on.
    auto runner = make_model_runner(random, mode_for(KvMode::kFreekv), 1, 160, nullptr, {}, {}, 2);
    const int32_t seq = runner->add_sequence();
    const auto prompt = test::random_tokens(170, random.config.n_vocab, 3);
    std::vector<float> logits;
    const int64_t last = 169;
    SequenceSpan span{seq, 0, 170, 0};
    try {
        runner->forward(prompt, std::span(&span, 1), std::span(&last, 1), logits);
        FAIL() << "170 tokens in a context of 160";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("-c/--ctx-size"), std::string::npos) << e.what();
    }
    span.n_tok = 40;
    const int64_t last40 = 39;
    runner->forward(std::span(prompt).first(40), std::span(&span, 1), std::span(&last40, 1), logits);
    EXPECT_EQ(logits.size(), static_cast<size_t>(random.config.n_vocab));
}

// The GPU ranks' top candidates of their vocabulary slices, merged, are the whole row's top-k in
// Sampler::top_candidates' order, ties (lower id first) across slice borders included.
TEST(TensorParallelRunner, MergedSliceTopsAreTheWholeRowsTop) {
    const int64_t rows = 3, n_vocab = 50;
    const std::vector<int64_t> begin = {0, 16, 40}, count = {16, 24, 10};
    std::mt19937 rng(4);
    std::normal_distribution<float> normal;
    std::vector<float> logits(static_cast<size_t>(rows * n_vocab));
    for (float& v : logits) v = normal(rng);
    for (int64_t r = 0; r < rows; ++r) {  // ties inside a slice and across slices
        float* row = logits.data() + r * n_vocab;
        row[3] = row[20] = row[45] = 5.0f;
        row[17] = row[18] = 4.0f;
    }
    for (int32_t k : {1, 3, 6, 10}) {
        std::vector<std::vector<int32_t>> ids(3);
        std::vector<std::vector<float>> values(3);
        std::vector<int32_t> k_of(3);
        for (size_t s = 0; s < 3; ++s) {
            k_of[s] = static_cast<int32_t>(std::min<int64_t>(k, count[s]));
            for (int64_t r = 0; r < rows; ++r) {
                std::vector<int32_t> i;
                std::vector<float> v;
                Sampler::top_candidates(std::span(logits).subspan(static_cast<size_t>(r * n_vocab + begin[s]), static_cast<size_t>(count[s])),
                                        k_of[s], i, v);
                ids[s].insert(ids[s].end(), i.begin(), i.end());
                values[s].insert(values[s].end(), v.begin(), v.end());
            }
        }
        std::vector<int32_t> got_ids;
        std::vector<float> got_values;
        merge_rank_tops(ids, values, k_of, begin, rows, k, got_ids, got_values);
        for (int64_t r = 0; r < rows; ++r) {
            std::vector<int32_t> want_ids;
            std::vector<float> want_values;
            Sampler::top_candidates(std::span(logits).subspan(static_cast<size_t>(r * n_vocab), static_cast<size_t>(n_vocab)), k,
                                    want_ids, want_values);
            EXPECT_EQ(std::vector<int32_t>(got_ids.begin() + r * k, got_ids.begin() + (r + 1) * k), want_ids) << "k " << k << " row " << r;
            EXPECT_EQ(std::vector<float>(got_values.begin() + r * k, got_values.begin() + (r + 1) * k), want_values) << "k " << k;
        }
    }
}

// merge_rank_stats puts per-head counters back in head order and keeps what every rank counts once.
TEST(TensorParallelRunner, MergedCountersAreInTheWholeModelsHeadOrder) {
    KvStats a, b;
    for (KvStats* s : {&a, &b}) {
        s->decode_steps = 5;
        s->sparse_pairs = {4, 4};
        s->forced_pairs = {1, 1};
        s->head_tests = {4, 4};
    }
    a.corrected_pairs = {1, 3}, b.corrected_pairs = {2, 0};
    a.head_flags = {1, 3}, b.head_flags = {2, 0};
    a.recalled_sync = {1, 2, 3, 4};           // 2 layers x rank 0's 2 KV heads
    b.recalled_sync = {10, 30};               // 2 layers x rank 1's 1 KV head
    a.recalled_background = {0, 0, 0, 0}, b.recalled_background = {7, 8};
    a.mass_recall = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f};  // 2 entries x 4 query heads
    b.mass_recall = {0.9f, 1.0f};                                      // 2 entries x 1 query head
    a.attention_ms = 3, b.attention_ms = 5;
    a.store_bytes_per_token = 100, b.store_bytes_per_token = 50;
    const KvStats m = merge_rank_stats({a, b}, {2, 1}, {4, 1}, 2);
    EXPECT_EQ(m.decode_steps, 5);
    EXPECT_EQ(m.sparse_pairs, (std::vector<int64_t>{4, 4}));
    EXPECT_EQ(m.head_tests, (std::vector<int64_t>{8, 8}));
    EXPECT_EQ(m.head_flags, (std::vector<int64_t>{3, 3}));
    EXPECT_EQ(m.corrected_pairs, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(m.recalled_sync, (std::vector<int64_t>{1, 2, 10, 3, 4, 30}));
    EXPECT_EQ(m.recalled_background, (std::vector<int64_t>{0, 0, 7, 0, 0, 8}));
    EXPECT_EQ(m.mass_recall, (std::vector<float>{0.1f, 0.2f, 0.3f, 0.4f, 0.9f, 0.5f, 0.6f, 0.7f, 0.8f, 1.0f}));
    EXPECT_EQ(m.attention_ms, 5);
    EXPECT_EQ(m.store_bytes_per_token, 150);
}

}  // namespace
}  // namespace freekv
