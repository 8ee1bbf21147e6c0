// ops.h: the model's numeric operations on host memory, with one signature shared by the naive
// reference (freekv::ref, src/backend/ref) and the optimized CPU backend (freekv::cpu, src/backend/cpu).
// Shapes are outermost first; activations are fp32 row-major; weights are WeightViews used as
// stored (f32, f16, bf16 or q8_0) and converted tile by tile, never copied whole.
// Invariant: both namespaces implement every function declared here with identical semantics;
// tests/ops compares them on random inputs.
#pragma once

#include <cstdint>
#include <span>

#include "model/model_config.h"
#include "tensor/weight.h"

namespace freekv {

class PagedKvCache;

/// The K/V positions one query token sees: positions [0, n_kv_pos) of sequence `seq` in layer `il`.
struct AttentionArgs {
    int64_t n_tok = 0;       // query tokens
    int64_t n_head = 0;      // query heads
    int64_t n_head_kv = 0;   // KV heads; n_head % n_head_kv == 0
    int64_t head_dim = 0;
    const int32_t* positions = nullptr;  // [n_tok] position of each query token; it attends to [0, pos]
    int32_t seq = 0;
    int64_t il = 0;
};

// The reference twin: plain loops, fp32 accumulation, never optimized.
namespace ref {
/// y[m, n] = x[m, k] . w[n, k]^T (+ bias[n] when bias is given).
void matmul(const float* x, int64_t m, const WeightView& w, float* y, const WeightView* bias = nullptr);
/// y[m, n] = x[m, n] / rms(x[m, :]) * w[n]; y may alias x.
void rms_norm(const float* x, int64_t m, int64_t n, const WeightView& w, float eps, float* y);
/// Rotary embedding in place on x[n_tok, n_heads, head_dim].
void rope(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          std::span<const float> inv_freq, RopeStyle style);
/// gate[i] = silu(gate[i]) * up[i].
void silu_mul(float* gate, const float* up, int64_t n);
/// out[n_tok, n_embd] = rows `ids` of table[n_vocab, n_embd].
void embedding(const WeightView& table, const int32_t* ids, int64_t n_tok, float* out);
/// Causal attention: out[n_tok, n_head, head_dim] from q[n_tok, n_head, head_dim] and the cache;
/// scale 1/sqrt(head_dim), fp32 softmax.
void attention(const float* q, const AttentionArgs& args, const PagedKvCache& kv, float* out);
}  // namespace ref

// The optimized CPU backend: OpenBLAS GEMM on converted weight tiles, OpenMP.
namespace cpu {
void matmul(const float* x, int64_t m, const WeightView& w, float* y, const WeightView* bias = nullptr);
void rms_norm(const float* x, int64_t m, int64_t n, const WeightView& w, float eps, float* y);
void rope(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          std::span<const float> inv_freq, RopeStyle style);
void silu_mul(float* gate, const float* up, int64_t n);
void embedding(const WeightView& table, const int32_t* ids, int64_t n_tok, float* out);
void attention(const float* q, const AttentionArgs& args, const PagedKvCache& kv, float* out);
}  // namespace cpu

}  // namespace freekv
