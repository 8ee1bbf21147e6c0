// test_ref_model.cpp: the CPU engine against transformers' outputs for ../shared/models/freekv-ref-28m
// (golden.json): last-position logits of every case, the greedy 32-token continuation, and the
// tokenizer cases. Skips with a message when ../shared is absent (a user's machine).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/mapped_file.h"
#include "engine/sampler.h"
#include "model/model_loader.h"
#include "test_util.h"

namespace freekv {
namespace {

// NOTE: 1e-4 is the bound. With exact fp32 rotary frequencies (the default) we observe
// 1e-12, 1.2e-7 and 1.9e-5 for the 1-, 16- and 1500-token cases, exactly what transformers in fp32
// gives against golden.json; the residual is golden.json's bf16-rounded frequencies (see below).
constexpr double kLogitsNmseTolerance = 1e-4;

class RefModel : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        auto dir = test::ref_model_dir();
        if (!dir) return;
        model_ = new LoadedModel(load_model(dir->string()));
        golden_ = new nlohmann::json(nlohmann::json::parse(read_text_file((*dir / "golden.json").string())));
    }
    static void TearDownTestSuite() {
        delete model_;
        delete golden_;
    }
    void SetUp() override {
        if (model_ == nullptr) GTEST_SKIP() << "../shared/models/freekv-ref-28m not found (set FREEKV_SHARED_DIR)";
    }
    static LoadedModel* model_;
    static nlohmann::json* golden_;
};
LoadedModel* RefModel::model_ = nullptr;
nlohmann::json* RefModel::golden_ = nullptr;

std::vector<float> prefill_logits(const LoadedModel& m, const std::vector<int32_t>& ids, int64_t chunk) {
    PagedKvCache kv(m.config.n_layer, m.config.n_head_kv, m.config.head_dim, 32, static_cast<int64_t>(ids.size()) / 32 + 2);
    const int32_t seq = kv.add_sequence();
    std::vector<float> logits;
    for (size_t done = 0; done < ids.size(); done += static_cast<size_t>(chunk)) {
        const size_t n = std::min(ids.size() - done, static_cast<size_t>(chunk));
        m.model->forward(std::span(ids).subspan(done, n), seq, kv, done + n == ids.size() ? 1 : 0, logits);
    }
    return logits;
}

TEST_F(RefModel, LastLogitsMatchTransformers) {
    for (const auto& c : (*golden_)["cases"]) {
        const auto ids = c["prompt_ids"].get<std::vector<int32_t>>();
        const auto want = c["last_logits"].get<std::vector<float>>();
        for (int64_t chunk : {int64_t{512}, int64_t{7}}) {  // chunked prefill must not change the result
            if (chunk == 7 && ids.size() > 200) continue;
            const auto got = prefill_logits(*model_, ids, chunk);
            ASSERT_EQ(got.size(), want.size());
            const double e = test::nmse(got, want);
            EXPECT_LE(e, kLogitsNmseTolerance) << "prompt of " << ids.size() << " tokens, chunk " << chunk;
            EXPECT_EQ(Sampler::argmax(got), Sampler::argmax(want));
        }
    }
}

std::vector<int32_t> greedy_32(const LoadedModel& m, const std::vector<int32_t>& ids) {
    const size_t n_new = 32;
    PagedKvCache kv(m.config.n_layer, m.config.n_head_kv, m.config.head_dim, 32,
                    static_cast<int64_t>(ids.size() + n_new) / 32 + 2);
    const int32_t seq = kv.add_sequence();
    std::vector<float> logits;
    m.model->forward(ids, seq, kv, 1, logits);
    std::vector<int32_t> got;
    for (size_t i = 0; i < n_new; ++i) {
        got.push_back(Sampler::argmax(logits));
        const int32_t t[1] = {got.back()};
        m.model->forward(t, seq, kv, 1, logits);
    }
    return got;
}

// golden.json was made from the bf16 checkpoint loaded in bf16 and upcast, which leaves transformers'
// rotary frequencies rounded to bf16. With --rope-freq-dtype checkpoint freekv does the same and
// reproduces golden.json's logits to ~1e-7 and all three greedy continuations token for token.
TEST_F(RefModel, Greedy32MatchesGoldenWithCheckpointRopePrecision) {
    LoadOptions options;
    options.rope_freq_checkpoint_dtype = true;
    const LoadedModel hf_like = load_model(test::ref_model_dir()->string(), options);
    EXPECT_EQ(hf_like.config.rope_freq_dtype, DType::kBF16);
    for (const auto& c : (*golden_)["cases"]) {
        const auto ids = c["prompt_ids"].get<std::vector<int32_t>>();
        EXPECT_EQ(greedy_32(hf_like, ids), c["greedy_32"].get<std::vector<int32_t>>()) << ids.size() << " tokens";
        // NOTE: observed 1e-12, 6e-8, 9e-8; 1e-6 still fails with exact fp32 frequencies (2e-5).
        EXPECT_LE(test::nmse(prefill_logits(hf_like, ids, 512), c["last_logits"].get<std::vector<float>>()), 1e-6);
    }
}

// With the default exact fp32 frequencies freekv matches transformers run in fp32 throughout
// (tests/fixtures/ref_model_fp32). There the 1500-token case's 5th token is a 0.005-logit near-tie
// that goes the other way than in golden.json, for transformers and freekv alike.
TEST_F(RefModel, Greedy32MatchesTransformersFp32) {
    const auto fp32 = nlohmann::json::parse(
        read_text_file((test::source_dir() / "tests/fixtures/ref_model_fp32/golden_fp32.json").string()));
    for (size_t i = 0; i < (*golden_)["cases"].size(); ++i) {
        const auto ids = (*golden_)["cases"][i]["prompt_ids"].get<std::vector<int32_t>>();
        EXPECT_EQ(greedy_32(*model_, ids), fp32["cases"][i]["greedy_32"].get<std::vector<int32_t>>()) << ids.size();
    }
}

TEST_F(RefModel, LastLogitsMatchTransformersFp32Rerun) {
    // Tighter check against transformers fp32 today (same weights, same dtype, summation order only).
    const auto fp32 = nlohmann::json::parse(
        read_text_file((test::source_dir() / "tests/fixtures/ref_model_fp32/golden_fp32.json").string()));
    for (size_t i = 0; i < (*golden_)["cases"].size(); ++i) {
        const auto ids = (*golden_)["cases"][i]["prompt_ids"].get<std::vector<int32_t>>();
        const auto want = fp32["cases"][i]["last_logits"].get<std::vector<float>>();
        EXPECT_LE(test::nmse(prefill_logits(*model_, ids, 512), want), 1e-9) << ids.size() << " tokens";
    }
}

TEST_F(RefModel, ReferenceOpsAgreeWithCpuOps) {
    // The naive twin on the same model: catches a fast-path bug that the goldens might mask.
    auto dir = test::ref_model_dir();
    LoadOptions options;
    options.impl = OpsImpl::kRef;
    LoadedModel ref = load_model(dir->string(), options);
    const auto ids = (*golden_)["cases"][1]["prompt_ids"].get<std::vector<int32_t>>();
    EXPECT_LE(test::nmse(prefill_logits(*model_, ids, 5), prefill_logits(ref, ids, 512)), 1e-9);
}

TEST_F(RefModel, TokenizerMatchesGolden) {
    ASSERT_TRUE(model_->tokenizer);
    for (const auto& c : (*golden_)["tokenizer"]) {
        const auto text = c["text"].get<std::string>();
        EXPECT_EQ(model_->tokenizer->encode(text), c["ids"].get<std::vector<int32_t>>()) << text;
        EXPECT_EQ(model_->tokenizer->decode(c["ids"].get<std::vector<int32_t>>()), text);
    }
    for (const auto& c : (*golden_)["cases"]) {
        if (c["prompt_text"].is_null()) continue;
        EXPECT_EQ(model_->tokenizer->encode(c["prompt_text"].get<std::string>(), true),
                  c["prompt_ids"].get<std::vector<int32_t>>());
        EXPECT_EQ(model_->tokenizer->decode(c["greedy_32"].get<std::vector<int32_t>>()),
                  c["greedy_32_text"].get<std::string>());
    }
}

}  // namespace
}  // namespace freekv
