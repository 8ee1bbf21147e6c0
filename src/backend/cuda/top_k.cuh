// top_k.cuh: the k largest entries of each row of a float matrix, on the device (sampling's
// candidates: the logits then never leave the GPU whole, only k ids and values per row do).
// Invariants: entries are ordered by value descending, then by index ascending on equal values,
// exactly as the CPU Sampler orders them, so that both pick the same token; NaN entries are never
// picked; 1 <= k <= min(n, kMaxTopK).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace freekv::cuda {

constexpr int32_t kMaxTopK = 256;

/// Elements of each of the two scratch buffers (floats and int32s alike) that top_k needs.
int64_t top_k_scratch_elems(int32_t n_rows, int64_t n, int32_t k);

/// values: [n_rows][n]; ids_out, values_out: [n_rows][k]; scratch_*: top_k_scratch_elems each.
void top_k(const float* values, int32_t n_rows, int64_t n, int32_t k, float* scratch_values, int32_t* scratch_ids,
           int32_t* ids_out, float* values_out, cudaStream_t s);

}  // namespace freekv::cuda
