// test_tokenizer.cpp: the byte-level BPE pieces on hand-made vocabularies whose right answers are
// worked out by hand: merge order, ignore_merges, added tokens (lstrip/rstrip), NFC, split
// behaviors, invalid UTF-8, and streaming detokenization of characters split across tokens.
#include <gtest/gtest.h>

#include <set>

#include "core/error.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/streaming_decoder.h"

namespace freekv {
namespace {

// A vocabulary of the 256 byte symbols (ids 0..255) plus the given merged tokens (ids 256...).
TokenizerSpec byte_spec(const std::vector<std::pair<std::string, std::string>>& merges) {
    TokenizerSpec spec;
    for (int i = 0; i < 256; ++i) {
        std::string s;
        append_utf8(s, byte_to_unicode(static_cast<uint8_t>(i)));
        spec.vocab.emplace_back(s, i);
    }
    int32_t id = 256;
    for (const auto& [a, b] : merges) {
        spec.merges.emplace_back(a, b);
        spec.vocab.emplace_back(a + b, id++);
    }
    PreTokenizerStep bl;
    bl.kind = PreTokenizerStep::Kind::kByteLevel;
    spec.pre_tokenizer.push_back(bl);
    return spec;
}

TEST(ByteLevel, MappingIsABijection) {
    std::set<char32_t> seen;
    for (int b = 0; b < 256; ++b) {
        const char32_t cp = byte_to_unicode(static_cast<uint8_t>(b));
        EXPECT_TRUE(seen.insert(cp).second);
        EXPECT_EQ(unicode_to_byte(cp), b);
    }
    EXPECT_EQ(byte_to_unicode(' '), U'\u0120');  // 'Ġ'
    EXPECT_EQ(byte_to_unicode('A'), U'A');
}

TEST(Bpe, MergesApplyInRankOrder) {
    // merges: (a,b)=rank0 -> "ab", (b,c)=rank1 -> "bc", (ab,c)=rank2 -> "abc"
    Tokenizer tok(byte_spec({{"a", "b"}, {"b", "c"}, {"ab", "c"}}));
    EXPECT_EQ(tok.encode("abc"), (std::vector<int32_t>{258}));            // ab then abc
    EXPECT_EQ(tok.encode("bc"), (std::vector<int32_t>{257}));
    EXPECT_EQ(tok.encode("abab"), (std::vector<int32_t>{256, 256}));
    EXPECT_EQ(tok.encode("cab"), (std::vector<int32_t>{'c', 256}));
}

TEST(Bpe, TiesGoToTheLeftmostPair) {
    // "aaa" with merge (a,a): the left pair merges first -> [aa, a]
    Tokenizer tok(byte_spec({{"a", "a"}}));
    EXPECT_EQ(tok.encode("aaa"), (std::vector<int32_t>{256, 'a'}));
    EXPECT_EQ(tok.encode("aaaa"), (std::vector<int32_t>{256, 256}));
}

TEST(Bpe, IgnoreMergesTakesWholeWordsFromTheVocabulary) {
    // "abc" is in the vocabulary but no merge sequence reaches it.
    TokenizerSpec spec = byte_spec({{"a", "b"}});
    spec.vocab.emplace_back("abc", 300);
    Tokenizer plain(spec);
    EXPECT_EQ(plain.encode("abc"), (std::vector<int32_t>{256, 'c'}));
    spec.ignore_merges = true;
    Tokenizer ignoring(spec);
    EXPECT_EQ(ignoring.encode("abc"), (std::vector<int32_t>{300}));
}

TEST(Bpe, SpacesAreByteLevelMapped) {
    Tokenizer tok(byte_spec({{"\u0120", "a"}}));  // "Ġa"
    EXPECT_EQ(tok.encode(" a a"), (std::vector<int32_t>{256, 256}));
    EXPECT_EQ(tok.decode({256, 256}), " a a");
}

TEST(Bpe, AddedTokensSplitFirstWithStrip) {
    TokenizerSpec spec = byte_spec({});
    spec.added_tokens.push_back({500, "<s>", true, false, false, false, false});
    spec.added_tokens.push_back({501, "<sep>", true, true, true, false, false});  // lstrip + rstrip
    spec.added_tokens.push_back({502, "<sepx>", false, false, false, false, false});
    Tokenizer tok(spec);
    EXPECT_EQ(tok.encode("<s>a"), (std::vector<int32_t>{500, 'a'}));
    EXPECT_EQ(tok.encode("a  <sep>  b"), (std::vector<int32_t>{'a', 501, 'b'}));
    EXPECT_EQ(tok.encode("<sepx>"), (std::vector<int32_t>{502}));  // longest match wins
    EXPECT_TRUE(tok.is_special(500));
    EXPECT_FALSE(tok.is_special(502));
    EXPECT_EQ(tok.decode({500, 'a'}, /*skip_special=*/true), "a");
    EXPECT_EQ(tok.decode({500, 'a'}), "<s>a");
}

TEST(Bpe, NfcNormalizationComposes) {
    TokenizerSpec spec = byte_spec({});
    spec.normalize_nfc = true;
    Tokenizer nfc(spec);
    // "e" + combining acute (3 bytes) -> "é" (2 bytes: C3 A9)
    EXPECT_EQ(nfc.encode("e\xCC\x81"), (std::vector<int32_t>{0xC3, 0xA9}));
    Tokenizer raw(byte_spec({}));
    EXPECT_EQ(raw.encode("e\xCC\x81").size(), 3u);
}

TEST(Bpe, SplitBehaviors) {
    auto with_split = [](SplitBehavior b) {
        TokenizerSpec spec = byte_spec({{"a", "-"}, {"-", "b"}});
        PreTokenizerStep split;
        split.kind = PreTokenizerStep::Kind::kSplit;
        split.pattern = "-";
        split.behavior = b;
        spec.pre_tokenizer.back().use_regex = false;  // only the Split under test splits
        spec.pre_tokenizer.insert(spec.pre_tokenizer.begin(), split);
        return std::make_unique<Tokenizer>(spec);
    };
    // "a-b": Isolated -> a | - | b; Removed -> a | b; MergedWithPrevious -> a- | b; MergedWithNext -> a | -b
    EXPECT_EQ(with_split(SplitBehavior::kIsolated)->encode("a-b"), (std::vector<int32_t>{'a', '-', 'b'}));
    EXPECT_EQ(with_split(SplitBehavior::kRemoved)->encode("a-b"), (std::vector<int32_t>{'a', 'b'}));
    EXPECT_EQ(with_split(SplitBehavior::kMergedWithPrevious)->encode("a-b"), (std::vector<int32_t>{256, 'b'}));
    EXPECT_EQ(with_split(SplitBehavior::kMergedWithNext)->encode("a-b"), (std::vector<int32_t>{'a', 257}));
}

TEST(Bpe, DigitsIndividually) {
    TokenizerSpec spec = byte_spec({{"1", "2"}});
    PreTokenizerStep digits;
    digits.kind = PreTokenizerStep::Kind::kDigits;
    digits.individual_digits = true;
    spec.pre_tokenizer.insert(spec.pre_tokenizer.begin(), digits);
    EXPECT_EQ(Tokenizer(spec).encode("12"), (std::vector<int32_t>{'1', '2'}));
    EXPECT_EQ(Tokenizer(byte_spec({{"1", "2"}})).encode("12"), (std::vector<int32_t>{256}));
}

TEST(Bpe, InvalidUtf8IsAnError) {
    Tokenizer tok(byte_spec({}));
    try {
        tok.encode("ok\xFF");
        ADD_FAILURE();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("offset 2"), std::string::npos) << e.what();
    }
    EXPECT_THROW(tok.encode("\xED\xA0\x80"), Error);  // encoded surrogate
}

// A token id far past the tokens a file defines would size the id table by it (the fuzzer's
// input asked for 53 GB): an Error instead. Ids just past the vocabulary (added tokens) are fine.
TEST(Bpe, AnIdFarBeyondTheVocabularyIsAnError) {
    TokenizerSpec spec = byte_spec({});
    spec.added_tokens.push_back({1000, "<|far|>", true, false, false, false, false});
    EXPECT_NO_THROW(Tokenizer{spec});
    spec.vocab.emplace_back("zz", 1666666661);
    try {
        Tokenizer tok(spec);
        ADD_FAILURE() << "a sparse id was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("token id 1666666661 is far beyond the 258 tokens"), std::string::npos) << e.what();
    }
}

TEST(Bpe, TemplatePostProcessorAddsPrefix) {
    TokenizerSpec spec = byte_spec({});
    spec.added_tokens.push_back({600, "<|begin|>", true, false, false, false, false});
    spec.prefix_ids = {600};
    Tokenizer tok(spec);
    EXPECT_EQ(tok.encode("a", true), (std::vector<int32_t>{600, 'a'}));
    EXPECT_EQ(tok.encode("a", false), (std::vector<int32_t>{'a'}));
}

TEST(StreamingDecoder, HoldsBackPartialCharacters) {
    Tokenizer tok(byte_spec({}));
    StreamingDecoder dec(tok);
    // "é🙂" = C3 A9 F0 9F 99 82, fed one byte token at a time
    std::string out;
    std::vector<std::string> pieces;
    for (int b : {0xC3, 0xA9, 0xF0, 0x9F, 0x99, 0x82}) pieces.push_back(dec.push(b));
    EXPECT_EQ(pieces, (std::vector<std::string>{"", "\xC3\xA9", "", "", "", "\xF0\x9F\x99\x82"}));
    EXPECT_EQ(dec.flush(), "");
    dec.push(0xE6);  // a dangling lead byte becomes U+FFFD at the end
    EXPECT_EQ(dec.flush(), "\xEF\xBF\xBD");
}

}  // namespace
}  // namespace freekv

namespace freekv {
namespace {

// Token ids from tokenizer.json must be integers in range: a float, a number past int32 or a
// negative added-token id is an Error naming the field (found by fuzz_parsers: they converted with
// undefined behaviour and indexed outside the vocabulary).
TEST(TokenizerJson, TokenIdsOutOfRangeAreErrors) {
    const std::string head = R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}, "added_tokens": [)";
    for (const char* added : {R"({"id": 3.5, "content": "<x>"})", R"({"id": 4999999999999999999999999, "content": "<x>"})",
                              R"({"id": -4, "content": "<x>"})", R"({"id": 2147483648, "content": "<x>"})"}) {
        try {
            const TokenizerSpec spec = parse_tokenizer_json(head + added + "]}", "tokenizer.json");
            Tokenizer tok(spec);
            ADD_FAILURE() << added << " was accepted";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("id"), std::string::npos) << e.what();
        }
    }
    const TokenizerSpec ok = parse_tokenizer_json(head + R"({"id": 3, "content": "<x>"}]})", "tokenizer.json");
    EXPECT_EQ(Tokenizer(ok).n_vocab(), 4);
}

}  // namespace
}  // namespace freekv
