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

/// K/V of one (layer, sequence) as a list of pages in some storage; owns nothing. Layout inside a
/// page is NHD: element (page, token r, kv head h, dim i) of K is at
/// k[page_ids[...] * stride_page + r * stride_tok + h * head_dim + i], V likewise.
/// With stride_head_list == 0 all KV heads share one page list of n_pages entries; otherwise KV head
/// h uses page_ids + h * stride_head_list (per-head contents, as in the budget cache's middle slots).
/// The last listed page holds last_page_len valid tokens, every other page page_size.
struct PagedKvView {
    const float* k = nullptr;
    const float* v = nullptr;
    const int32_t* page_ids = nullptr;  // [n_pages] or [n_head_kv][stride_head_list]
    int64_t n_pages = 0;
    int64_t last_page_len = 0;
    int64_t page_size = 0;
    int64_t stride_page = 0, stride_tok = 0;  // elements
    int64_t stride_head_list = 0;

    const int32_t* pages_of(int64_t ikv) const { return page_ids + ikv * stride_head_list; }
};

/// Shapes of one attention call.
struct AttentionArgs {
    int64_t n_tok = 0;       // query tokens
    int64_t n_head = 0;      // query heads
    int64_t n_head_kv = 0;   // KV heads; n_head % n_head_kv == 0
    int64_t head_dim = 0;
    const int32_t* positions = nullptr;  // attention(): [n_tok]; token t sees view tokens [0, positions[t]]
};

/// Codes of an 8-bit CPU KV store: int8 (symmetric, scale = absmax / 127) or fp8 E4M3FN
/// (scale = absmax / 448, so the largest value of a group is the largest finite fp8).
enum class KvCode : uint8_t { kInt8, kFp8E4m3 };
/// One (page, KV head) block of the CPU store, [2][page_size][head_dim] (K rows, then V rows), in
/// 8 bits: codes in the same order, then fp32 scales: head_dim for K (one per channel: key outliers
/// live in channels) and page_size for V (one per token). An all-zero group has scale 0.
inline int64_t kv_block_scales(int64_t page_size, int64_t head_dim) { return head_dim + page_size; }
/// Bytes of such a block in the GPU engine's pinned store: codes, then scales, padded to 16 bytes
/// (the gather kernel's vector loads).
inline int64_t kv_coded_block_bytes(int64_t page_size, int64_t head_dim) {
    return (2 * page_size * head_dim + 4 * kv_block_scales(page_size, head_dim) + 15) / 16 * 16;
}

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
/// Causal attention: out[n_tok, n_head, head_dim] from q[n_tok, n_head, head_dim]; token t attends
/// to view tokens [0, positions[t]] (token j = row j % page_size of listed page j / page_size);
/// scale 1/sqrt(head_dim), fp32 softmax. The view's page list is shared by all KV heads.
void attention(const float* q, const AttentionArgs& args, const PagedKvView& kv, float* out);
/// One query token per call attending to every token of its KV head's listed pages (decode over a
/// page set, e.g. budget slots): out[n_head, head_dim] from q[n_head, head_dim]; args.n_tok == 1.
void attention_pages(const float* q, const AttentionArgs& args, const PagedKvView& kv, float* out);
/// block [2][page_size][head_dim] -> codes (same shape) and scales [kv_block_scales()].
void quantize_kv_block(const float* block, int64_t page_size, int64_t head_dim, KvCode code, uint8_t* codes, float* scales);
/// The inverse: value = code * scale (int8) or fp8(code) * scale.
void dequantize_kv_block(const uint8_t* codes, const float* scales, int64_t page_size, int64_t head_dim, KvCode code,
                         float* block);
}  // namespace ref

// The optimized CPU backend: OpenBLAS GEMM on converted weight tiles, OpenMP.
namespace cpu {
void matmul(const float* x, int64_t m, const WeightView& w, float* y, const WeightView* bias = nullptr);
/// matmul over consecutive row groups of x (group_rows[i] rows each, all > 0), each multiplied on
/// its own: a row's result depends only on the rows of its group (batch invariance).
void matmul_grouped(const float* x, std::span<const int64_t> group_rows, const WeightView& w, float* y,
                    const WeightView* bias = nullptr);
void rms_norm(const float* x, int64_t m, int64_t n, const WeightView& w, float eps, float* y);
void rope(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          std::span<const float> inv_freq, RopeStyle style);
void silu_mul(float* gate, const float* up, int64_t n);
void embedding(const WeightView& table, const int32_t* ids, int64_t n_tok, float* out);
void attention(const float* q, const AttentionArgs& args, const PagedKvView& kv, float* out);
void attention_pages(const float* q, const AttentionArgs& args, const PagedKvView& kv, float* out);
void quantize_kv_block(const float* block, int64_t page_size, int64_t head_dim, KvCode code, uint8_t* codes, float* scales);
void dequantize_kv_block(const uint8_t* codes, const float* scales, int64_t page_size, int64_t head_dim, KvCode code,
                         float* block);
}  // namespace cpu

}  // namespace freekv
