// regex.cpp: PCRE2 wrapper (see regex.h).
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include "core/error.h"

namespace freekv {

Regex::Regex(const std::string& pattern, bool literal) {
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    const uint32_t options = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0u);
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options,
                                     &error_code, &error_offset, nullptr);
    if (code == nullptr) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(error_code, message, sizeof(message));
        FREEKV_FAIL("tokenizer regex '{}' does not compile at offset {}: {}", pattern, error_offset,
                    reinterpret_cast<const char*>(message));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when JIT is unavailable
    code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view subject) const {
    auto* code = static_cast<pcre2_code*>(code_);
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
    FREEKV_CHECK(md != nullptr, "out of memory creating PCRE2 match data");
    std::vector<std::pair<size_t, size_t>> out;
    size_t start = 0;
    const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
    while (start <= subject.size()) {
        const int rc = pcre2_match(code, s, subject.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            pcre2_match_data_free(md);
            FREEKV_FAIL("tokenizer regex match failed with PCRE2 error {}", rc);
        }
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        if (ov[1] > ov[0]) {
            out.emplace_back(ov[0], ov[1]);
            start = ov[1];
        } else {  // empty match: step over one code point
            start = ov[0] + 1;
            while (start < subject.size() && (static_cast<unsigned char>(subject[start]) & 0xC0) == 0x80) ++start;
        }
    }
    pcre2_match_data_free(md);
    return out;
}

}  // namespace freekv
