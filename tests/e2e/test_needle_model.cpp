// test_needle_model.cpp: the retrieval reference model shipped in tests/models/freekv-needle-12m
// (trained by scripts/train_needle_model.py; see its README): the CPU engine against transformers'
// golden outputs, and the ordering of KV modes on a few needle cells (issue 15): full attention (and
// freekv, on passkey) answer, streaming fails where the needle lies outside its sink and window.
// Invariant: the model is part of the repository, so nothing here skips for want of ../shared except
// the passkey cells, whose filler text (../shared/text/eval_wp_tail.txt) is held out from training.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/mapped_file.h"
#include "engine/kv_session.h"
#include "engine/needle.h"
#include "engine/sampler.h"
#include "model/model_loader.h"
#include "test_util.h"

namespace freekv {
namespace {

std::filesystem::path needle_model_dir() { return test::source_dir() / "tests" / "models" / "freekv-needle-12m"; }

class NeedleModel : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        model_ = new LoadedModel(load_model(needle_model_dir().string()));
        golden_ = new nlohmann::json(nlohmann::json::parse(read_text_file((needle_model_dir() / "golden.json").string())));
    }
    static void TearDownTestSuite() {
        delete model_;
        delete golden_;
    }
    static LoadedModel* model_;
    static nlohmann::json* golden_;
};
LoadedModel* NeedleModel::model_ = nullptr;
nlohmann::json* NeedleModel::golden_ = nullptr;

std::vector<float> last_logits(const LoadedModel& m, const std::vector<int32_t>& ids) {
    KvSession s(m, full_kv_mode(), static_cast<int64_t>(ids.size()) + 1);
    std::vector<float> logits;
    s.forward(ids, logits);
    return logits;
}

std::vector<int32_t> greedy(const LoadedModel& m, const std::vector<int32_t>& ids, size_t n_new) {
    KvSession s(m, full_kv_mode(), static_cast<int64_t>(ids.size() + n_new));
    std::vector<float> logits;
    s.forward(ids, logits);
    std::vector<int32_t> got;
    for (size_t i = 0; i < n_new; ++i) {
        got.push_back(Sampler::argmax(logits));
        const int32_t t[1] = {got.back()};
        if (i + 1 < n_new) s.forward(t, logits);
    }
    return got;
}

// golden.json: transformers in fp32 (eager attention) on the bf16 weights upcast, exact fp32 rotary
// frequencies, as freekv's CPU backend computes by default: only the summation order differs.
// NOTE: 1e-8 as test_ref_model's fp32 rerun (1e-9) with room for this model's larger logits.
constexpr double kLogitsNmseTolerance = 1e-8;

TEST_F(NeedleModel, LastLogitsAndGreedyTokensMatchTransformers) {
    ASSERT_FALSE((*golden_)["cases"].empty());
    for (const auto& c : (*golden_)["cases"]) {
        const auto ids = c["prompt_ids"].get<std::vector<int32_t>>();
        const auto want = c["last_logits"].get<std::vector<float>>();
        const auto got = last_logits(*model_, ids);
        ASSERT_EQ(got.size(), want.size());
        EXPECT_LE(test::nmse(got, want), kLogitsNmseTolerance) << c["prompt_text"];
        const auto want_tokens = c["greedy_32"].get<std::vector<int32_t>>();
        EXPECT_EQ(greedy(*model_, ids, want_tokens.size()), want_tokens) << c["prompt_text"];
    }
}

// The grid settings: budget 1024, sink = window = 128, page 32. At 2048 tokens the sparse
// regime holds (64 pages > 32 budget slots); streaming keeps the first 128 and the last 896 tokens,
// so a needle at 10% or 50% of the filler lies outside what it attends.
KvModeConfig grid_mode(KvMode mode) {
    KvModeConfig c;
    c.mode = mode;
    c.budget = 1024;
    c.sink = 128;
    c.recent = 128;
    c.page_size = 32;
    return c;
}

struct Ordering {
    int full = 0, freekv = 0, streaming = 0, total = 0;
};

Ordering run_cells(const LoadedModel& m, NeedleTask task, const std::vector<int32_t>& haystack, bool with_freekv) {
    NeedleParams p;
    p.task = task;
    p.lengths = {2048};
    p.depths = {10, 50};
    p.trials = 2;
    p.seed = 99;
    auto correct = [&](KvMode mode) {
        p.mode = mode == KvMode::kFull ? full_kv_mode() : grid_mode(mode);
        int sum = 0;
        for (const NeedleCell& c : run_needle(m, haystack, p)) sum += c.correct;
        return sum;
    };
    Ordering o;
    o.total = static_cast<int>(p.lengths.size() * p.depths.size()) * p.trials;
    o.full = correct(KvMode::kFull);
    if (with_freekv) o.freekv = correct(KvMode::kFreekv);
    o.streaming = correct(KvMode::kStreaming);
    return o;
}

TEST_F(NeedleModel, PasskeyFullAndFreekvAnswerWhereStreamingCannot) {
    const auto shared = test::shared_dir();
    if (!shared) GTEST_SKIP() << "../shared/text/eval_wp_tail.txt (held-out filler) not found (set FREEKV_SHARED_DIR)";
    const auto haystack = model_->tokenizer->encode(read_text_file((*shared / "text" / "eval_wp_tail.txt").string()));
    const Ordering o = run_cells(*model_, NeedleTask::kPasskey, haystack, true);
    // Full attention answers (one miss of four allowed: the model is not perfect); freekv loses at
    // most one case against it; streaming, blind to the needle, answers none.
    EXPECT_GE(o.full, o.total - 1);
    EXPECT_GE(o.freekv, o.full - 1);
    EXPECT_EQ(o.streaming, 0);
}

// Key-value answers are 20-odd tokens copied from one pair among hundreds of random identifiers.
// Full attention copies them; streaming cannot see the pair. The page-selection modes are not
// asserted here: at this budget they lose most of these cases on this model (softmax-mean
// aggregation over its 6 query heads per KV head most of all; bench/results has the grid).
TEST_F(NeedleModel, KeyValueFullAnswersWhereStreamingCannot) {
    const Ordering o = run_cells(*model_, NeedleTask::kKeyValue, {}, false);
    EXPECT_GE(o.full, o.total - 1);
    EXPECT_EQ(o.streaming, 0);
}

}  // namespace
}  // namespace freekv
