// bpe_tokenizer.h: a byte-level BPE tokenizer that reproduces Hugging Face `tokenizers` exactly for
// the GPT-2 / Llama-3 / Qwen family: added (special) tokens, NFC normalization, Split / ByteLevel /
// Digits pre-tokenizers, BPE merges with ignore_merges, a template post-processor and the
// ByteLevel decoder.
// Built from a TokenizerSpec, which tokenizer.json (tokenizer_json.cpp) or GGUF metadata fills.
// Invariants: encode() accepts only valid UTF-8 and throws Error otherwise; decode(encode(s)) == s
// for text without added tokens; the tokenizer is immutable after construction except for its
// word cache, which is guarded, so encode() may run on several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace freekv {

enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizerStep {
    enum class Kind { kSplit, kByteLevel, kDigits };
    Kind kind = Kind::kSplit;
    std::string pattern;        // kSplit: the regex (or literal when `literal`)
    bool literal = false;
    SplitBehavior behavior = SplitBehavior::kIsolated;
    bool invert = false;
    bool add_prefix_space = false;  // kByteLevel
    bool use_regex = true;          // kByteLevel: split with the GPT-2 pattern first
    bool individual_digits = false; // kDigits
};

struct AddedToken {
    int32_t id = -1;
    std::string content;
    bool special = false, lstrip = false, rstrip = false, normalized = false, single_word = false;
};

struct TokenizerSpec {
    std::vector<std::pair<std::string, int32_t>> vocab;        // byte-level token string, id
    std::vector<std::pair<std::string, std::string>> merges;   // in rank order
    bool ignore_merges = false;
    std::vector<AddedToken> added_tokens;
    bool normalize_nfc = false;
    std::vector<PreTokenizerStep> pre_tokenizer;
    std::vector<int32_t> prefix_ids, suffix_ids;  // added around a single sequence by the post-processor
    std::optional<int32_t> unk_id;
    std::optional<int32_t> bos_id, eos_id;
};

class Regex;

class Tokenizer {
public:
    explicit Tokenizer(const TokenizerSpec& spec);
    ~Tokenizer();
    Tokenizer(const Tokenizer&) = delete;
    Tokenizer& operator=(const Tokenizer&) = delete;

    /// Text to ids. add_special: apply the post-processor's template (e.g. Llama 3's BOS).
    std::vector<int32_t> encode(std::string_view text, bool add_special = false) const;
    /// Ids to bytes (valid UTF-8 once the sequence is complete); skip_special drops special tokens.
    std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
    /// The raw bytes of one token (added tokens: their content).
    const std::string& token_bytes(int32_t id) const;
    bool is_special(int32_t id) const;
    int64_t n_vocab() const { return static_cast<int64_t>(id_to_bytes_.size()); }
    std::optional<int32_t> bos_id() const { return bos_id_; }
    std::optional<int32_t> eos_id() const { return eos_id_; }
    std::optional<int32_t> find_token(std::string_view byte_level_text) const;

private:
    struct Piece {
        std::string text;
        int32_t added_id = -1;  // >= 0: an added token, emitted as is
    };
    std::vector<Piece> split_added_tokens(std::string_view text) const;
    std::vector<std::string> pre_tokenize(const std::string& text) const;
    void bpe_word(const std::string& word, std::vector<int32_t>& out) const;

    std::unordered_map<std::string, int32_t> token_to_id_;
    std::vector<std::string> id_to_bytes_;        // [n_vocab] raw bytes of each id
    std::vector<uint8_t> id_is_special_;          // [n_vocab]
    std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left id, right id) -> (rank, merged id)
    std::unordered_map<std::string, int32_t> char_to_id_;  // single code point (UTF-8) -> id
    std::vector<AddedToken> added_;               // sorted by content length, longest first
    std::vector<PreTokenizerStep> pre_steps_;
    std::vector<std::unique_ptr<Regex>> pre_regexes_;  // parallel to pre_steps_ (null where unused)
    bool ignore_merges_, normalize_nfc_;
    std::vector<int32_t> prefix_ids_, suffix_ids_;
    std::optional<int32_t> unk_id_, bos_id_, eos_id_;
    mutable std::mutex cache_mutex_;
    mutable std::unordered_map<std::string, std::vector<int32_t>> word_cache_;
};

/// Loads tokenizer.json; throws Error naming the file and the unsupported component.
std::unique_ptr<Tokenizer> load_tokenizer_json(const std::string& path);
/// Parses tokenizer.json text into a spec (exposed for tests).
TokenizerSpec parse_tokenizer_json(const std::string& json_text, const std::string& path);

/// GPT-2's pre-tokenizer pattern, used by ByteLevel with use_regex.
inline constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace freekv
