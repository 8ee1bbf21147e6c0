// bpe_tokenizer.cpp: encode and decode for byte-level BPE (see bpe_tokenizer.h).
// Encode pipeline, as in Hugging Face tokenizers: split out added tokens (leftmost-longest) ->
// NFC-normalize the rest -> pre-tokenizer steps, each applied to every piece -> BPE per piece
// (merges by rank, leftmost first on ties) -> post-processor prefix/suffix.
#include "tokenizer/bpe_tokenizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>
#include <queue>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/regex.h"

namespace freekv {

namespace {

uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

bool is_space_byte(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string nfc(std::string_view s) {
    utf8proc_uint8_t* out = nullptr;
    const utf8proc_ssize_t n =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()),
                     &out, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (n < 0) FREEKV_FAIL("NFC normalization failed: {}", utf8proc_errmsg(n));
    std::string result(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
    std::free(out);
    return result;
}

// Applies one split (regex matches + behavior) to a piece, appending the resulting pieces.
void split_piece(const std::string& piece, const Regex& re, SplitBehavior behavior, bool invert,
                 std::vector<std::string>& out) {
    struct Segment {
        size_t begin, end;
        bool match;
    };
    std::vector<Segment> segs;
    size_t last = 0;
    for (auto [b, e] : re.find_all(piece)) {
        if (b > last) segs.push_back({last, b, invert});
        segs.push_back({b, e, !invert});
        last = e;
    }
    if (last < piece.size()) segs.push_back({last, piece.size(), invert});

    std::vector<std::pair<size_t, size_t>> ranges;
    switch (behavior) {
        case SplitBehavior::kIsolated:
            for (const auto& s : segs) ranges.emplace_back(s.begin, s.end);
            break;
        case SplitBehavior::kRemoved:
            for (const auto& s : segs)
                if (!s.match) ranges.emplace_back(s.begin, s.end);
            break;
        case SplitBehavior::kMergedWithPrevious: {
            bool previous_was_match = false;
            for (const auto& s : segs) {
                if (s.match && !ranges.empty() && !previous_was_match) ranges.back().second = s.end;
                else ranges.emplace_back(s.begin, s.end);
                previous_was_match = s.match;
            }
            break;
        }
        case SplitBehavior::kMergedWithNext: {
            bool previous_was_match = false;
            for (const auto& s : segs) {
                if (!s.match && !ranges.empty() && previous_was_match) ranges.back().second = s.end;
                else ranges.emplace_back(s.begin, s.end);
                previous_was_match = s.match;
            }
            break;
        }
        case SplitBehavior::kContiguous: {
            bool previous_was_match = false;
            for (const auto& s : segs) {
                if (s.match && previous_was_match && !ranges.empty()) ranges.back().second = s.end;
                else ranges.emplace_back(s.begin, s.end);
                previous_was_match = s.match;
            }
            break;
        }
    }
    for (auto [b, e] : ranges)
        if (e > b) out.push_back(piece.substr(b, e - b));
}

}  // namespace

Tokenizer::Tokenizer(const TokenizerSpec& spec)
    : ignore_merges_(spec.ignore_merges),
      normalize_nfc_(spec.normalize_nfc),
      prefix_ids_(spec.prefix_ids),
      suffix_ids_(spec.suffix_ids),
      unk_id_(spec.unk_id),
      bos_id_(spec.bos_id),
      eos_id_(spec.eos_id) {
    int32_t max_id = -1;
    for (const auto& [text, id] : spec.vocab) max_id = std::max(max_id, id);
    for (const auto& t : spec.added_tokens) {
        FREEKV_CHECK(t.id >= 0, "added token '{}' has negative id {}", t.content, t.id);
        max_id = std::max(max_id, t.id);
    }
    FREEKV_CHECK(max_id >= 0, "tokenizer has an empty vocabulary");
    // Ids index a table: a real vocabulary numbers its tokens densely (added tokens after it), so an
    // id far past the count of defined tokens is a malformed file, not a reason to allocate gigabytes.
    const int64_t defined = static_cast<int64_t>(spec.vocab.size() + spec.added_tokens.size());
    FREEKV_CHECK(max_id < 2 * defined + 1024,
                 "tokenizer token id {} is far beyond the {} tokens the file defines (ids must number the vocabulary "
                 "densely); the tokenizer file is malformed",
                 max_id, defined);
    id_to_bytes_.resize(static_cast<size_t>(max_id) + 1);
    id_is_special_.assign(id_to_bytes_.size(), 0);
    for (const auto& [text, id] : spec.vocab) {
        FREEKV_CHECK(id >= 0, "tokenizer vocabulary entry '{}' has negative id {}", text, id);
        token_to_id_[text] = id;
        auto bytes = byte_level_to_bytes(text);
        id_to_bytes_[static_cast<size_t>(id)] = bytes ? *bytes : text;
        if (decode_utf8(text).size() == 1) char_to_id_[text] = id;
    }
    for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
        const auto& [a, b] = spec.merges[rank];
        auto ia = token_to_id_.find(a), ib = token_to_id_.find(b), im = token_to_id_.find(a + b);
        if (ia == token_to_id_.end() || ib == token_to_id_.end() || im == token_to_id_.end())
            FREEKV_FAIL("tokenizer merge #{} '{} {}' uses a token that is not in the vocabulary", rank, a, b);
        merges_.try_emplace(pair_key(ia->second, ib->second), static_cast<int32_t>(rank), im->second);
    }
    added_ = spec.added_tokens;
    for (const auto& t : added_) {
        FREEKV_CHECK(!t.content.empty(), "added token {} has empty content", t.id);
        id_to_bytes_[static_cast<size_t>(t.id)] = t.content;
        id_is_special_[static_cast<size_t>(t.id)] = t.special ? 1 : 0;
    }
    std::stable_sort(added_.begin(), added_.end(),
                     [](const AddedToken& x, const AddedToken& y) { return x.content.size() > y.content.size(); });
    pre_steps_ = spec.pre_tokenizer;
    for (const auto& step : pre_steps_) {
        if (step.kind == PreTokenizerStep::Kind::kSplit) {
            pre_regexes_.push_back(std::make_unique<Regex>(step.pattern, step.literal));
        } else if (step.kind == PreTokenizerStep::Kind::kByteLevel) {
            pre_regexes_.push_back(step.use_regex ? std::make_unique<Regex>(kGpt2Pattern, false) : nullptr);
        } else {
            pre_regexes_.push_back(std::make_unique<Regex>(step.individual_digits ? "\\p{N}" : "\\p{N}+", false));
        }
    }
}

Tokenizer::~Tokenizer() = default;

std::optional<int32_t> Tokenizer::find_token(std::string_view byte_level_text) const {
    auto it = token_to_id_.find(std::string(byte_level_text));
    if (it != token_to_id_.end()) return it->second;
    for (const auto& t : added_)
        if (t.content == byte_level_text) return t.id;
    return std::nullopt;
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
    FREEKV_CHECK(id >= 0 && id < n_vocab(), "token id {} outside the vocabulary of {}", id, n_vocab());
    return id_to_bytes_[static_cast<size_t>(id)];
}

bool Tokenizer::is_special(int32_t id) const {
    return id >= 0 && id < n_vocab() && id_is_special_[static_cast<size_t>(id)] != 0;
}

std::vector<Tokenizer::Piece> Tokenizer::split_added_tokens(std::string_view text) const {
    std::vector<Piece> pieces;
    size_t plain_begin = 0, i = 0;
    while (i < text.size()) {
        const AddedToken* hit = nullptr;
        for (const auto& t : added_) {  // longest first, so the first hit is the longest match here
            if (text.compare(i, t.content.size(), t.content) == 0) {
                hit = &t;
                break;
            }
        }
        if (hit == nullptr) {
            ++i;
            continue;
        }
        size_t plain_end = i, next = i + hit->content.size();
        if (hit->lstrip)
            while (plain_end > plain_begin && is_space_byte(text[plain_end - 1])) --plain_end;
        if (hit->rstrip)
            while (next < text.size() && is_space_byte(text[next])) ++next;
        if (plain_end > plain_begin) pieces.push_back({std::string(text.substr(plain_begin, plain_end - plain_begin)), -1});
        pieces.push_back({hit->content, hit->id});
        plain_begin = i = next;
    }
    if (plain_begin < text.size()) pieces.push_back({std::string(text.substr(plain_begin)), -1});
    return pieces;
}

std::vector<std::string> Tokenizer::pre_tokenize(const std::string& text) const {
    std::vector<std::string> pieces{text};
    bool mapped = false;  // whether pieces are already byte-level mapped
    for (size_t s = 0; s < pre_steps_.size(); ++s) {
        const PreTokenizerStep& step = pre_steps_[s];
        std::vector<std::string> next;
        for (auto& piece : pieces) {
            if (step.kind == PreTokenizerStep::Kind::kByteLevel) {
                std::string p = piece;
                if (step.add_prefix_space && (p.empty() || p[0] != ' ')) p.insert(p.begin(), ' ');
                std::vector<std::string> parts;
                if (pre_regexes_[s]) split_piece(p, *pre_regexes_[s], SplitBehavior::kIsolated, false, parts);
                else parts.push_back(p);
                for (auto& part : parts) next.push_back(mapped ? part : bytes_to_byte_level(part));
            } else {
                const SplitBehavior behavior =
                    step.kind == PreTokenizerStep::Kind::kDigits ? SplitBehavior::kIsolated : step.behavior;
                split_piece(piece, *pre_regexes_[s], behavior, step.invert, next);
            }
        }
        if (step.kind == PreTokenizerStep::Kind::kByteLevel) mapped = true;
        pieces = std::move(next);
    }
    if (!mapped)
        for (auto& p : pieces) p = bytes_to_byte_level(p);
    return pieces;
}

void Tokenizer::bpe_word(const std::string& word, std::vector<int32_t>& out) const {
    if (ignore_merges_) {
        auto it = token_to_id_.find(word);
        if (it != token_to_id_.end()) {
            out.push_back(it->second);
            return;
        }
    }
    {
        std::lock_guard<std::mutex> lock(cache_mutex_);
        auto it = word_cache_.find(word);
        if (it != word_cache_.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            return;
        }
    }
    // Symbols as a linked list over code points; a min-heap of candidate merges ordered by
    // (rank, position) reproduces Hugging Face's merge order.
    struct Symbol {
        int32_t id;
        int32_t prev, next;
    };
    std::vector<Symbol> syms;
    std::string cp_text;
    for (char32_t cp : decode_utf8(word)) {
        cp_text.clear();
        append_utf8(cp_text, cp);
        auto it = char_to_id_.find(cp_text);
        if (it == char_to_id_.end()) {
            if (unk_id_) syms.push_back({*unk_id_, 0, 0});
            continue;  // no unk token: the character is dropped, as Hugging Face does
        }
        syms.push_back({it->second, 0, 0});
    }
    const auto n = static_cast<int32_t>(syms.size());
    for (int32_t i = 0; i < n; ++i) {
        syms[static_cast<size_t>(i)].prev = i - 1;
        syms[static_cast<size_t>(i)].next = i + 1 < n ? i + 1 : -1;
    }
    struct Candidate {
        int32_t rank, pos, left_id, right_id;
        bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
    auto push = [&](int32_t pos) {
        if (pos < 0) return;
        const int32_t nx = syms[static_cast<size_t>(pos)].next;
        if (nx < 0) return;
        auto it = merges_.find(pair_key(syms[static_cast<size_t>(pos)].id, syms[static_cast<size_t>(nx)].id));
        if (it != merges_.end())
            heap.push({it->second.first, pos, syms[static_cast<size_t>(pos)].id, syms[static_cast<size_t>(nx)].id});
    };
    for (int32_t i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
        const Candidate c = heap.top();
        heap.pop();
        Symbol& left = syms[static_cast<size_t>(c.pos)];
        if (left.id != c.left_id || left.next < 0 || syms[static_cast<size_t>(left.next)].id != c.right_id) continue;
        Symbol& right = syms[static_cast<size_t>(left.next)];
        left.id = merges_.at(pair_key(c.left_id, c.right_id)).second;
        right.id = -1;  // dead
        left.next = right.next;
        if (right.next >= 0) syms[static_cast<size_t>(right.next)].prev = c.pos;
        if (left.prev >= 0) push(left.prev);
        push(c.pos);
    }
    std::vector<int32_t> ids;
    for (int32_t i = n > 0 ? 0 : -1; i >= 0; i = syms[static_cast<size_t>(i)].next) ids.push_back(syms[static_cast<size_t>(i)].id);
    out.insert(out.end(), ids.begin(), ids.end());
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (word_cache_.size() > 200000) word_cache_.clear();
    word_cache_.emplace(word, std::move(ids));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special) const {
    const size_t valid = valid_utf8_prefix(text);
    if (valid != text.size())
        FREEKV_FAIL("input text is not valid UTF-8 (first bad byte at offset {}); convert it to UTF-8 first", valid);
    std::vector<int32_t> ids;
    if (add_special) ids.insert(ids.end(), prefix_ids_.begin(), prefix_ids_.end());
    for (const Piece& piece : split_added_tokens(text)) {
        if (piece.added_id >= 0) {
            ids.push_back(piece.added_id);
            continue;
        }
        const std::string normalized = normalize_nfc_ ? nfc(piece.text) : piece.text;
        for (const std::string& word : pre_tokenize(normalized)) bpe_word(word, ids);
    }
    if (add_special) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
    return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
    std::string out;
    for (int32_t id : ids) {
        if (skip_special && is_special(id)) continue;
        out += token_bytes(id);
    }
    return out;
}

}  // namespace freekv
