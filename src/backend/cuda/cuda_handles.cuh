// cuda_handles.cuh: RAII owners of the CUDA objects the engine holds besides device arrays
// (device_array.cuh): streams, events and pinned host arrays. Host code of the CUDA backend.
// Invariants: each handle is released exactly once, by its owner's destructor, also when the
// engine's constructor throws half-way; owners move, never copy; a failed creation throws Error
// with CUDA's reason (a pinned allocation also says how much was asked).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "backend/cuda/cuda_check.h"
#include "core/error.h"

namespace freekv::cuda {

/// A non-blocking stream with a scheduling priority (lower numbers run first).
class Stream {
public:
    Stream() = default;
    explicit Stream(int priority) { FREEKV_CUDA_CHECK(cudaStreamCreateWithPriority(&s_, cudaStreamNonBlocking, priority)); }
    ~Stream() {
        if (s_ != nullptr) cudaStreamDestroy(s_);
    }
    Stream(Stream&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
    Stream& operator=(Stream&& o) noexcept {
        std::swap(s_, o.s_);
        return *this;
    }
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    operator cudaStream_t() const { return s_; }  // NOLINT: used wherever CUDA takes a stream
    bool valid() const { return s_ != nullptr; }

private:
    cudaStream_t s_ = nullptr;
};

/// An event; `timing` false makes it a pure ordering event (cheaper to record and wait on).
class Event {
public:
    explicit Event(bool timing) {
        FREEKV_CUDA_CHECK(cudaEventCreateWithFlags(&e_, timing ? cudaEventDefault : cudaEventDisableTiming));
    }
    ~Event() {
        if (e_ != nullptr) cudaEventDestroy(e_);
    }
    Event(Event&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
    Event& operator=(Event&& o) noexcept {
        std::swap(e_, o.e_);
        return *this;
    }
    Event(const Event&) = delete;
    Event& operator=(const Event&) = delete;
    operator cudaEvent_t() const { return e_; }  // NOLINT: used wherever CUDA takes an event

private:
    cudaEvent_t e_ = nullptr;
};

/// n elements of page-locked host memory (cudaMallocHost), for copies the host reads or writes.
template <typename T>
class PinnedArray {
public:
    PinnedArray() = default;
    explicit PinnedArray(int64_t n) {
        void* p = nullptr;
        const cudaError_t e = cudaMallocHost(&p, static_cast<size_t>(n) * sizeof(T));
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            FREEKV_FAIL("pinned host allocation of {} bytes failed ({})", static_cast<int64_t>(n * static_cast<int64_t>(sizeof(T))),
                        cudaGetErrorString(e));
        }
        p_ = static_cast<T*>(p);
    }
    ~PinnedArray() {
        if (p_ != nullptr) cudaFreeHost(p_);
    }
    PinnedArray(PinnedArray&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
    PinnedArray& operator=(PinnedArray&& o) noexcept {
        std::swap(p_, o.p_);
        return *this;
    }
    PinnedArray(const PinnedArray&) = delete;
    PinnedArray& operator=(const PinnedArray&) = delete;
    T* get() const { return p_; }
    bool valid() const { return p_ != nullptr; }

private:
    T* p_ = nullptr;
};

}  // namespace freekv::cuda
