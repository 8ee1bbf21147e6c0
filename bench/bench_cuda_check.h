// bench_cuda_check.h: the micro-benchmarks' CUDA error check. CHECK(call) prints the call, the
// error and where, and exits with status 2 (a benchmark has nothing to recover).
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CHECK(x)                                                                                             \
    do {                                                                                                     \
        const cudaError_t e_ = (x);                                                                          \
        if (e_ != cudaSuccess) {                                                                             \
            std::fprintf(stderr, "%s failed: %s (%s:%d)\n", #x, cudaGetErrorString(e_), __FILE__, __LINE__); \
            std::exit(2);                                                                                    \
        }                                                                                                    \
    } while (0)
