// mapped_file.h: a read-only memory map of a whole file (RAII).
// Why: model weights are used in place from the page cache, never copied into process memory.
// Invariant: data() stays valid for the life of the object; size() is the file size at open.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace freekv {

class MappedFile {
public:
    /// Maps `path` read-only; throws Error naming the path when it cannot be opened or mapped.
    explicit MappedFile(const std::string& path);
    ~MappedFile();
    MappedFile(MappedFile&& other) noexcept;
    MappedFile& operator=(MappedFile&&) = delete;
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }
    std::span<const uint8_t> bytes() const { return {data_, size_}; }
    const std::string& path() const { return path_; }
    /// Reads every page of [begin, begin + n) once so that the first forward pass does not stall
    /// on disk; on_bytes(n) is called after each chunk.
    template <typename OnBytes>
    void prefetch(size_t begin, size_t n, OnBytes&& on_bytes) const {
        constexpr size_t kChunk = size_t{64} << 20, kPage = 4096;
        for (size_t off = begin; off < begin + n && off < size_; off += kChunk) {
            const size_t len = std::min(kChunk, std::min(begin + n, size_) - off);
            advise_will_need(off, len);
            volatile uint8_t sink = 0;
            for (size_t p = off; p < off + len; p += kPage) sink = static_cast<uint8_t>(sink + data_[p]);
            on_bytes(len);
        }
    }

private:
    void advise_will_need(size_t offset, size_t length) const;
    std::string path_;
    const uint8_t* data_ = nullptr;
    size_t size_ = 0;
};

/// Reads a whole (small) text file; throws Error naming the path on failure.
std::string read_text_file(const std::string& path);

}  // namespace freekv
