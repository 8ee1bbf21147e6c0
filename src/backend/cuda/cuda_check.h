// cuda_check.h: FREEKV_CUDA_CHECK for host code of the CUDA backend: every runtime call is
// checked and a failure throws freekv::Error with the statement and CUDA's error name and text.
#pragma once

#include <cuda_runtime.h>

#include "core/error.h"

#define FREEKV_CUDA_CHECK(expr)                                                                          \
    do {                                                                                                 \
        const cudaError_t freekv_cuda_status_ = (expr);                                                  \
        FREEKV_CHECK(freekv_cuda_status_ == cudaSuccess, "{} failed: {} ({})", #expr,                    \
                     cudaGetErrorName(freekv_cuda_status_), cudaGetErrorString(freekv_cuda_status_));    \
    } while (0)
