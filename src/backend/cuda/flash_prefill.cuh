// flash_prefill.cuh: causal prefill attention on the tensor cores, flash-attention style: per tile of
// query rows, key/value tiles stream through shared memory, scores stay in registers (online
// softmax), bf16 products with fp32 accumulation: wgmma on a compute-capability 9.0 device at
// head_dim 128 (flash_prefill_wgmma.cu), mma.sync m16n8k16 otherwise. GQA-aware: the rows of one
// block are (query token, group member) pairs of a single KV head, so each K/V tile is loaded once
// for the whole group.
// Invariants:
//   - q, out: [n_q][n_head][head_dim] fp32 (q rounded to bf16 on load); k, v: bf16 (uint16_t),
//     key j of KV head h at k + j * kv_stride + h * head_dim, keys [0, n_keys); k and v 16-byte
//     aligned, kv_stride a multiple of 8 (rows move in 16-byte pieces);
//   - query i sits at position q_pos0 + i and attends to keys 0 .. q_pos0 + i (all earlier chunks and
//     itself): a prompt can be prefilled in chunks, each against every key before it;
//   - n_keys >= q_pos0 + n_q; head_dim 64 or 128; any group size n_head / n_head_kv >= 1;
//   - probabilities are rounded to bf16 before the P.V product; row sums and the output stay fp32
//     (out), or the output is rounded once to bf16 (out_bf16: what the output projection reads).
#pragma once

#include <cstdint>

namespace freekv::cuda {

/// Which kernel runs: the fastest the device has, or one named (tests and benchmarks compare them).
enum class FlashKernel { automatic, mma_sync, wgmma };

struct FlashPrefillArgs {
    const float* q = nullptr;
    const uint16_t* k = nullptr;
    const uint16_t* v = nullptr;
    float* out = nullptr;
    uint16_t* out_bf16 = nullptr;  // when set, the output goes here in bf16 (round to nearest even) instead of to out
    int32_t n_q = 0, q_pos0 = 0, n_keys = 0;
    int32_t n_head = 0, n_head_kv = 0, head_dim = 0;
    int64_t kv_stride = 0;  // elements between consecutive keys (0: n_head_kv * head_dim)
    int32_t rows_per_warp = 0;  // mma_sync: 16 or 32 query rows per warp (0: the measured default, 32)
    FlashKernel kernel = FlashKernel::automatic;
};

/// Whether flash_prefill supports this head_dim.
bool flash_prefill_supports(int64_t head_dim);
/// Whether FlashKernel::wgmma can run here for this head_dim (a 9.0 device, head_dim 128).
bool flash_prefill_has_wgmma(int64_t head_dim);
void flash_prefill(const FlashPrefillArgs& a, void* stream);

}  // namespace freekv::cuda
