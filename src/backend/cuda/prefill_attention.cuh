// prefill_attention.cuh: causal attention of a whole prompt on the GPU, chunked over queries and
// run as two fp32 GEMMs per chunk (cuBLAS, strided-batched over the KV heads) around a masked
// softmax kernel: S = scale * Q_chunk K^T, P = softmax(S) with keys after each query masked, O = P V.
// Invariants:
//   - q, out: [n][n_head][head_dim]; k, v: [q_pos0 + n][n_head_kv][head_dim], fp32 holding the
//     values the KV cache stores (rounded to bf16 by the caller), so that prefill attends to the
//     same keys and values as the decode steps after it;
//   - query token t sits at position q_pos0 + t and attends to keys 0..q_pos0 + t (a later chunk
//     of a prompt sees every earlier one); fp32 scores, softmax and accumulation;
//   - scratch holds prefill_scores_floats(q_pos0 + n, n_head_kv, chunk) floats; chunk from
//     prefill_chunk(q_pos0 + n, ...).
#pragma once

#include <cstdint>

namespace freekv::cuda {

struct PrefillAttentionArgs {
    const float* q = nullptr;
    const float* k = nullptr;
    const float* v = nullptr;
    float* out = nullptr;
    float* scores = nullptr;  // scratch
    int32_t n = 0, n_head = 0, n_head_kv = 0, head_dim = 0, chunk = 0;
    int32_t q_pos0 = 0;
};

/// Queries per chunk: the largest that keeps one chunk's scores of all KV heads within
/// max_scratch_bytes (at least 16, at most n).
int32_t prefill_chunk(int64_t n, int64_t n_head_kv, int64_t max_scratch_bytes);
int64_t prefill_scores_floats(int64_t n, int64_t n_head_kv, int64_t chunk);
void prefill_attention(const PrefillAttentionArgs& a, void* stream);

}  // namespace freekv::cuda
