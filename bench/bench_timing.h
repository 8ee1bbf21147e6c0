// bench_timing.h: the micro-benchmarks' timer: mean milliseconds per call of f over `reps` calls
// on the default stream, between two events, after one untimed warm-up call.
#pragma once

#include <cuda_runtime.h>

#include "bench_cuda_check.h"

template <class F>
double time_ms(F&& f, int reps) {
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    f();
    CHECK(cudaEventRecord(a));
    for (int r = 0; r < reps; ++r) f();
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    CHECK(cudaEventDestroy(a));
    CHECK(cudaEventDestroy(b));
    return ms / reps;
}
