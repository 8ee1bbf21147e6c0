// pdl.cuh: programmatic dependent launch (Hopper) for the decode chain. A kernel launched with
// launch_maybe_dependent(..., dependent = true) may start while the kernel before it on the stream
// is still running; it must call grid_dependency_wait() before it reads anything that kernel wrote
// or writes anything it reads (the GEMVs load their first weights, which nothing writes, first).
// A kernel that calls launch_dependents() lets such a successor start once all its blocks have
// called it; the successor's wait still waits for the whole grid and its memory.
// Invariant: without the launch attribute both calls are no-ops, so every kernel stays correct
// launched either way.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "backend/cuda/cuda_check.h"

namespace freekv::cuda {

__device__ __forceinline__ void grid_dependency_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void launch_dependents() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }

/// Launches kernel<<<grid, block, smem, s>>>(args...), with programmatic stream serialization when
/// `dependent` (the kernel calls grid_dependency_wait() before touching its predecessor's data).
template <class... KArgs, class... Args>
void launch_maybe_dependent_smem(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, bool dependent,
                                 Args&&... args) {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = dependent ? 1 : 0;
    FREEKV_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...));
}

/// The same without dynamic shared memory.
template <class... KArgs, class... Args>
void launch_maybe_dependent(void (*kernel)(KArgs...), dim3 grid, dim3 block, cudaStream_t s, bool dependent, Args&&... args) {
    launch_maybe_dependent_smem(kernel, grid, block, 0, s, dependent, std::forward<Args>(args)...);
}

}  // namespace freekv::cuda
