// streaming_decoder.h: turns generated token ids into text piece by piece without ever emitting a
// partial UTF-8 character (a character may span several byte-level tokens).
// Invariant: the concatenation of everything push() and flush() return equals
// tokenizer.decode(all ids, skip_special) with invalid trailing bytes replaced at flush.
#pragma once

#include <string>

#include "tokenizer/bpe_tokenizer.h"

namespace freekv {

class StreamingDecoder {
public:
    explicit StreamingDecoder(const Tokenizer& tokenizer, bool skip_special = true)
        : tokenizer_(tokenizer), skip_special_(skip_special) {}
    /// Adds one token; returns the text that is now complete (possibly empty).
    std::string push(int32_t id);
    /// Returns what is left; incomplete bytes become U+FFFD.
    std::string flush();

private:
    const Tokenizer& tokenizer_;
    bool skip_special_;
    std::string pending_;
};

}  // namespace freekv
