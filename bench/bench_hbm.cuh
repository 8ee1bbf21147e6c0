// bench_hbm.cuh: the micro-benchmarks' bandwidth ceiling: the device's HBM read rate, measured by
// streaming 2 GiB with 16-byte loads (grid-stride, 8 blocks of 512 threads per SM), mean of 10 reads
// after one warm-up. Invariant: the buffer is freed before it returns.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "bench_cuda_check.h"

__global__ void bench_read_stream(const uint4* __restrict__ p, int64_t n, unsigned* __restrict__ sink) {
    unsigned acc = 0;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += gridDim.x * static_cast<int64_t>(blockDim.x)) {
        const uint4 v = __ldg(p + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) sink[0] = acc;  // keeps the loads; practically never stores
}

/// GB/s (1e9 bytes per second) of a 2 GiB streaming read on device 0.
inline double measure_hbm_read_gbps() {
    int sms = 0;
    CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const int64_t bytes = int64_t{2} << 30;
    uint4* big = nullptr;
    unsigned* sink = nullptr;
    CHECK(cudaMalloc(&big, bytes));
    CHECK(cudaMalloc(&sink, 4));
    CHECK(cudaMemset(big, 1, bytes));
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    const int reps = 10;
    bench_read_stream<<<sms * 8, 512>>>(big, bytes / 16, sink);
    CHECK(cudaEventRecord(a));
    for (int r = 0; r < reps; ++r) bench_read_stream<<<sms * 8, 512>>>(big, bytes / 16, sink);
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    CHECK(cudaEventDestroy(a));
    CHECK(cudaEventDestroy(b));
    CHECK(cudaFree(big));
    CHECK(cudaFree(sink));
    return static_cast<double>(bytes) / (ms / reps) * 1e-6;
}
