// regex.h: a compiled PCRE2 pattern (UTF + Unicode properties, JIT when available), RAII.
// Invariant: subjects passed to find_all() are valid UTF-8 (checked once by the caller), so
// matching runs with PCRE2_NO_UTF_CHECK.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace freekv {

class Regex {
public:
    /// Compiles `pattern`; literal = match the text as is. Throws Error with PCRE2's message.
    Regex(const std::string& pattern, bool literal);
    ~Regex();
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;

    /// Byte ranges [begin, end) of all non-overlapping, non-empty matches, left to right.
    std::vector<std::pair<size_t, size_t>> find_all(std::string_view subject) const;

private:
    void* code_ = nullptr;  // pcre2_code_8*
};

}  // namespace freekv
