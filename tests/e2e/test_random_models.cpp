// test_random_models.cpp: the CPU engine against transformers on the random-weight fixtures of
// tests/fixtures/models (Qwen2 bias + group size 7, Llama 3.1 rope scaling + head_dim 128,
// Mistral sharded f32): logits of the last 4 prompt positions and 16 greedy tokens.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/mapped_file.h"
#include "engine/sampler.h"
#include "model/model_loader.h"
#include "test_util.h"

namespace freekv {
namespace {

// NOTE: same bound as the reference model (fp32 compute on both sides from identical weights);
// the golden logits are rounded to 5 decimals, which alone contributes ~1e-11.
constexpr double kLogitsNmseTolerance = 1e-4;

class RandomModel : public ::testing::TestWithParam<std::string> {};

TEST_P(RandomModel, MatchesTransformers) {
    const auto dir = test::source_dir() / "tests/fixtures/models" / GetParam();
    LoadedModel m = load_model(dir.string());
    const auto golden = nlohmann::json::parse(read_text_file((dir / "golden.json").string()));
    const auto ids = golden["prompt_ids"].get<std::vector<int32_t>>();
    const auto want = golden["last4_logits"].get<std::vector<std::vector<float>>>();
    const auto want_greedy = golden["greedy_16"].get<std::vector<int32_t>>();
    PagedKvCache kv(m.config.n_layer, m.config.n_head_kv, m.config.head_dim, 16, 32);
    const int32_t seq = kv.add_sequence();
    std::vector<float> logits;
    // Prefill in two uneven chunks so that a chunk boundary falls inside a page.
    m.model->forward(std::span(ids).first(37), seq, kv, 0, logits);
    m.model->forward(std::span(ids).subspan(37), seq, kv, 4, logits);
    const auto n_vocab = static_cast<size_t>(m.config.n_vocab);
    for (size_t r = 0; r < 4; ++r) {
        std::span<const float> got(logits.data() + r * n_vocab, n_vocab);
        EXPECT_LE(test::nmse(got, want[r]), kLogitsNmseTolerance) << GetParam() << " position " << r;
    }
    std::vector<int32_t> greedy;
    std::vector<float> last(logits.end() - static_cast<std::ptrdiff_t>(n_vocab), logits.end());
    for (size_t i = 0; i < want_greedy.size(); ++i) {
        greedy.push_back(Sampler::argmax(last));
        const int32_t t[1] = {greedy.back()};
        m.model->forward(t, seq, kv, 1, last);
    }
    EXPECT_EQ(greedy, want_greedy) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Fixtures, RandomModel,
                         ::testing::Values("qwen2-g7-bf16", "llama31-hd128-f16", "mistral-g2-f32"));

}  // namespace
}  // namespace freekv
