// streaming_decoder.cpp: holds back an incomplete UTF-8 tail until its last byte arrives.
#include "tokenizer/streaming_decoder.h"

#include "tokenizer/byte_level.h"

namespace freekv {

std::string StreamingDecoder::push(int32_t id) {
    if (skip_special_ && tokenizer_.is_special(id)) return {};
    pending_ += tokenizer_.token_bytes(id);
    size_t valid = valid_utf8_prefix(pending_);
    // A tail that can never become valid (a bad lead byte, not a truncated sequence) is replaced
    // now, so one bad token cannot hold back all later text.
    while (valid < pending_.size() && pending_.size() - valid >= 4) {
        pending_.replace(valid, 1, "\xEF\xBF\xBD");
        valid = valid_utf8_prefix(pending_);
    }
    std::string out = pending_.substr(0, valid);
    pending_.erase(0, valid);
    return out;
}

std::string StreamingDecoder::flush() {
    std::string out;
    std::string_view rest = pending_;
    while (!rest.empty()) {
        const size_t valid = valid_utf8_prefix(rest);
        out.append(rest.substr(0, valid));
        rest.remove_prefix(valid);
        if (!rest.empty()) {
            out += "\xEF\xBF\xBD";
            rest.remove_prefix(1);
        }
    }
    pending_.clear();
    return out;
}

}  // namespace freekv
