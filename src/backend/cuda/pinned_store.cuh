// pinned_store.cuh: the CPU KV store's memory: pinned, device-mapped host memory allocated in
// chunks (design doc 4.2, section 8 item 4), so no single pinning call is huge and a failure is
// reported per chunk. Host API only; no CUDA types.
// Invariants: every chunk is chunk_bytes long (the last one too), page-aligned and mapped; a CPU
// page never straddles chunks (chunk_bytes is a multiple of the page bytes the caller passes);
// allocation failure frees what was pinned and throws Error naming --cpu-kv-gib, the amount asked,
// the chunk that failed and the machine's RAM.
#pragma once

#include <cstdint>
#include <vector>

namespace freekv::cuda {

class PinnedStore {
public:
    /// Pins ceil(bytes / chunk) chunks, chunk = the largest multiple of unit_bytes <= chunk_bytes,
    /// or bytes rounded up to whole units when that is smaller (one chunk, no more than needed).
    /// FREEKV_FAIL_PINNED_CHUNK=i (tests) makes chunk i fail as if the OS refused it.
    PinnedStore(int64_t bytes, int64_t unit_bytes, int64_t chunk_bytes = int64_t{1} << 30);
    ~PinnedStore();
    PinnedStore(const PinnedStore&) = delete;
    PinnedStore& operator=(const PinnedStore&) = delete;

    int64_t n_chunks() const { return static_cast<int64_t>(host_.size()); }
    int64_t chunk_bytes() const { return chunk_bytes_; }
    void* host_chunk(int64_t i) const { return host_[static_cast<size_t>(i)]; }
    /// Device addresses of the chunks (for a kernel's chunk table).
    const std::vector<void*>& device_chunks() const { return device_; }

private:
    int64_t chunk_bytes_;
    std::vector<void*> host_, device_;
};

}  // namespace freekv::cuda
