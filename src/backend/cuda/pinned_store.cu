// pinned_store.cu: chunked cudaHostAlloc(Mapped) with an actionable failure message.
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/pinned_store.cuh"
#include "core/system_memory.h"

namespace freekv::cuda {

namespace {

double gib(int64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0); }

}  // namespace

PinnedStore::PinnedStore(int64_t bytes, int64_t unit_bytes, int64_t chunk_bytes) {
    FREEKV_CHECK(bytes > 0 && unit_bytes > 0 && unit_bytes <= chunk_bytes,
                 "pinned store of {} bytes with units of {} and chunks of {}", bytes, unit_bytes, chunk_bytes);
    // Whole units, and no larger than the store needs: a small store (a short context) pins only
    // what it uses instead of a whole default chunk (1 GiB took ~0.5 s per session to pin).
    const int64_t needed = (bytes + unit_bytes - 1) / unit_bytes * unit_bytes;
    chunk_bytes_ = std::min(chunk_bytes / unit_bytes * unit_bytes, needed);
    const int64_t n = (bytes + chunk_bytes_ - 1) / chunk_bytes_;
    const char* fail_at = std::getenv("FREEKV_FAIL_PINNED_CHUNK");
    for (int64_t i = 0; i < n; ++i) {
        void* host = nullptr;
        cudaError_t e = fail_at != nullptr && std::atoll(fail_at) == i
                            ? cudaErrorMemoryAllocation
                            : cudaHostAlloc(&host, static_cast<size_t>(chunk_bytes_), cudaHostAllocMapped | cudaHostAllocPortable);
        void* device = nullptr;
        if (e == cudaSuccess) e = cudaHostGetDevicePointer(&device, host, 0);
        if (e != cudaSuccess) {
            if (host != nullptr) cudaFreeHost(host);
            for (void* h : host_) cudaFreeHost(h);
            host_.clear();
            const SystemMemory mem = system_memory();
            FREEKV_FAIL("could not pin {:.2f} GiB of system RAM for the CPU KV store: chunk {} of {} ({:.2f} GiB each) "
                        "failed with {}; the machine has {:.1f} GiB of RAM, {:.1f} GiB available, and pinned memory is "
                        "often limited to about half of it (or by the container's locked-memory limit). Lower "
                        "--cpu-kv-gib, or the batch size or context that it is derived from.",
                        gib(n * chunk_bytes_), i + 1, n, gib(chunk_bytes_), cudaGetErrorString(e), gib(mem.total),
                        gib(mem.available));
        }
        host_.push_back(host);
        device_.push_back(device);
    }
}

PinnedStore::~PinnedStore() {
    for (void* h : host_) cudaFreeHost(h);
}

}  // namespace freekv::cuda
