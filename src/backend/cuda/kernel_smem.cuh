// kernel_smem.cuh: raising a kernel's dynamic shared-memory limit before its first launch. The
// attribute belongs to a device, so a process that drives several GPUs (one thread per GPU) must
// set it on each: done once per (kernel, current device), under a lock.
// Invariant: after allow_dynamic_smem(k, b) returns, k launches with up to b bytes on this device.
#pragma once

#include <cuda_runtime.h>

#include <mutex>
#include <set>
#include <utility>

#include "backend/cuda/cuda_check.h"

namespace freekv::cuda {

template <class Kernel>
void allow_dynamic_smem(Kernel* kernel, int bytes) {
    static std::mutex lock;
    static std::set<std::pair<const void*, int>> done;  // (kernel, device)
    int device = 0;
    FREEKV_CUDA_CHECK(cudaGetDevice(&device));
    const auto key = std::make_pair(reinterpret_cast<const void*>(kernel), device);
    const std::lock_guard<std::mutex> guard(lock);
    if (done.count(key) != 0) return;
    FREEKV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    done.insert(key);
}

}  // namespace freekv::cuda
