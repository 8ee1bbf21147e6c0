// device_array.cuh: RAII owner of one cudaMalloc'd array (host code of the CUDA backend).
// Invariants: the pointer is freed exactly once; resize() only grows (contents are not kept) and
// throws Error naming the size and what to shrink when the device is out of memory.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/cuda_check.h"

namespace freekv::cuda {

template <typename T>
class DeviceArray {
public:
    DeviceArray() = default;
    explicit DeviceArray(int64_t n) { resize(n); }
    ~DeviceArray() { cudaFree(data_); }
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;

    /// Frees the array now (cudaFree waits for the device); the next resize() allocates again.
    void release() {
        cudaFree(data_);
        data_ = nullptr;
        size_ = 0;
    }

    void resize(int64_t n) {
        if (n <= size_) return;
        cudaFree(data_);
        data_ = nullptr;
        size_ = 0;
        const cudaError_t e = cudaMalloc(&data_, static_cast<size_t>(n) * sizeof(T));
        if (e != cudaSuccess) {
            (void)cudaGetLastError();  // clear the sticky-free error state of a failed allocation
            FREEKV_FAIL("GPU out of memory allocating {:.1f} MiB ({}); use a smaller context (-c/-d), batch or model",
                        static_cast<double>(n * static_cast<int64_t>(sizeof(T))) / 1048576.0, cudaGetErrorString(e));
        }
        size_ = n;
    }
    void upload(const T* host, int64_t n, cudaStream_t stream = nullptr) {
        resize(n);
        FREEKV_CUDA_CHECK(cudaMemcpyAsync(data_, host, static_cast<size_t>(n) * sizeof(T), cudaMemcpyHostToDevice, stream));
    }
    T* get() const { return data_; }
    int64_t size() const { return size_; }
    int64_t bytes() const { return size_ * static_cast<int64_t>(sizeof(T)); }

private:
    T* data_ = nullptr;
    int64_t size_ = 0;
};

}  // namespace freekv::cuda
