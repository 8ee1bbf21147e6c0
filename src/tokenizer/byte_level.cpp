// byte_level.cpp: the GPT-2 byte mapping (printable Latin-1 bytes map to themselves, the other 68
// bytes to U+0100 upwards in byte order) and UTF-8 helpers.
#include "tokenizer/byte_level.h"

#include <array>

namespace freekv {

namespace {

struct ByteTables {
    std::array<char32_t, 256> to_unicode{};
    std::array<int16_t, 512> to_byte{};  // code points < 512 only
    ByteTables() {
        to_byte.fill(-1);
        char32_t next = 256;
        for (int b = 0; b < 256; ++b) {
            const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            to_unicode[static_cast<size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
            to_byte[to_unicode[static_cast<size_t>(b)]] = static_cast<int16_t>(b);
        }
    }
};

const ByteTables& tables() {
    static const ByteTables t;
    return t;
}

// Length of the UTF-8 sequence starting with lead byte c, or 0 if c cannot start one.
size_t utf8_length(unsigned char c) {
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0;
}

// Checks one sequence of length n at s (continuation bytes, overlong and surrogate rules).
bool valid_sequence(const unsigned char* s, size_t n) {
    for (size_t i = 1; i < n; ++i)
        if ((s[i] & 0xC0) != 0x80) return false;
    if (n == 3) {
        if (s[0] == 0xE0 && s[1] < 0xA0) return false;
        if (s[0] == 0xED && s[1] > 0x9F) return false;
    }
    if (n == 4) {
        if (s[0] == 0xF0 && s[1] < 0x90) return false;
        if (s[0] == 0xF4 && s[1] > 0x8F) return false;
    }
    return true;
}

}  // namespace

char32_t byte_to_unicode(uint8_t b) { return tables().to_unicode[b]; }

std::optional<uint8_t> unicode_to_byte(char32_t cp) {
    if (cp >= 512) return std::nullopt;
    const int16_t b = tables().to_byte[cp];
    if (b < 0) return std::nullopt;
    return static_cast<uint8_t>(b);
}

void append_utf8(std::string& out, char32_t cp) {
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

std::vector<char32_t> decode_utf8(std::string_view s) {
    std::vector<char32_t> out;
    out.reserve(s.size());
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    size_t i = 0;
    while (i < s.size()) {
        const size_t n = utf8_length(p[i]);
        char32_t cp = 0;
        if (n == 1) cp = p[i];
        if (n == 2) cp = static_cast<char32_t>(((p[i] & 0x1F) << 6) | (p[i + 1] & 0x3F));
        if (n == 3) cp = static_cast<char32_t>(((p[i] & 0x0F) << 12) | ((p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F));
        if (n == 4)
            cp = static_cast<char32_t>(((p[i] & 0x07) << 18) | ((p[i + 1] & 0x3F) << 12) | ((p[i + 2] & 0x3F) << 6) |
                                       (p[i + 3] & 0x3F));
        out.push_back(cp);
        i += n == 0 ? 1 : n;
    }
    return out;
}

size_t valid_utf8_prefix(std::string_view s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    size_t i = 0;
    while (i < s.size()) {
        const size_t n = utf8_length(p[i]);
        if (n == 0 || i + n > s.size() || !valid_sequence(p + i, n)) break;
        i += n;
    }
    return i;
}

bool is_valid_utf8(std::string_view s) { return valid_utf8_prefix(s) == s.size(); }

std::string bytes_to_byte_level(std::string_view bytes) {
    std::string out;
    out.reserve(bytes.size() * 2);
    for (char c : bytes) append_utf8(out, byte_to_unicode(static_cast<uint8_t>(c)));
    return out;
}

std::optional<std::string> byte_level_to_bytes(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (char32_t cp : decode_utf8(text)) {
        auto b = unicode_to_byte(cp);
        if (!b) return std::nullopt;
        out.push_back(static_cast<char>(*b));
    }
    return out;
}

}  // namespace freekv
