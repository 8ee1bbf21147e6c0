// byte_level.h: GPT-2's reversible byte <-> printable-unicode mapping used by byte-level BPE, and
// small UTF-8 helpers.
// Invariant: byte_to_unicode is a bijection from the 256 byte values to 256 code points; every
// vocabulary string of a byte-level BPE model is a sequence of those code points.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace freekv {

/// The code point that stands for byte b.
char32_t byte_to_unicode(uint8_t b);
/// The byte a code point stands for, or nullopt for code points outside the mapping.
std::optional<uint8_t> unicode_to_byte(char32_t cp);

/// Maps raw bytes to the UTF-8 encoding of their byte-level code points.
std::string bytes_to_byte_level(std::string_view bytes);
/// Inverse of bytes_to_byte_level; nullopt when `text` holds code points outside the mapping.
std::optional<std::string> byte_level_to_bytes(std::string_view text);

void append_utf8(std::string& out, char32_t cp);
/// Splits valid UTF-8 into code points.
std::vector<char32_t> decode_utf8(std::string_view s);
/// Length of the longest prefix of s that is complete, valid UTF-8.
size_t valid_utf8_prefix(std::string_view s);
bool is_valid_utf8(std::string_view s);

}  // namespace freekv
