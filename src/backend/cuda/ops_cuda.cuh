// ops_cuda.cuh: host-callable CUDA ops, in ops_cuda.cu (norms, element-wise), matmul_cuda.cu and
// gemv_choice.cu (GEMMs, GEMVs, the measured GEMV per shape) and attention_cuda.cu (decode
// attention); device pointers in, device pointers
// out; `stream` is a cudaStream_t passed as void*. Same semantics as the reference twin in
// backend/ops.h, with bf16 (stored as uint16_t) or fp32 weights and KV, fp32 activations; checked
// by tests/cuda against it.
// Invariant: every launcher checks cudaGetLastError and throws freekv::Error on failure.
#pragma once

#include <cstdint>
#include <span>

namespace freekv::cuda {

/// The decode GEMV kernels matmul_bf16 can run for 1..kGemvChoiceRows rows of x (gemv_choice.cu):
/// the SIMT one (a warp per 4 rows), block-k (a block's 8 warps split k for R rows, C 16-byte chunks
/// per lane in flight: 2x2, 4x1, 8x1), the tensor-core one (gemv_mma: 16 or 32 rows per warp, k % 32
/// == 0) and cuBLAS on a bf16 copy of x. All compute the same products.
enum class GemvKernel : uint8_t { kSimt, kBlockK2x2, kBlockK4x1, kBlockK8x1, kMma16, kMma32, kCublas };
constexpr int64_t kGemvChoiceRows = 8;
const char* gemv_kernel_name(GemvKernel kernel);

/// Per weight shape [n, k], the kernel measured fastest for each row count (index m - 1; rows past
/// measured_rows keep the default), with its time and the default's (microseconds per call).
struct GemvChoices {
    int64_t n = 0, k = 0, measured_rows = 0;
    GemvKernel kernel[kGemvChoiceRows] = {GemvKernel::kSimt, GemvKernel::kCublas, GemvKernel::kCublas, GemvKernel::kCublas,
                                          GemvKernel::kCublas, GemvKernel::kCublas, GemvKernel::kCublas, GemvKernel::kCublas};
    float us[kGemvChoiceRows] = {}, default_us[kGemvChoiceRows] = {};
};

/// A weight tensor in device memory: bf16 elements (uint16_t), or fp32 with f32 set; a bf16 weight
/// may carry the measured GEMV choice of its shape (null: the default).
struct WeightRef {
    const void* p = nullptr;
    bool f32 = false;
    const GemvChoices* gemv = nullptr;
};

/// Times every GemvKernel on `matrices` (all [n, k] bf16, used in turn so the calls read them as a
/// decode step does) for 1..max_rows rows of random x and keeps, per row count, the fastest if it
/// beats the default (the SIMT GEMV for one row; for more the tensor-core one where k % 32 == 0, else
/// cuBLAS) by 3%. Synchronizes the device.
GemvChoices measure_gemv_choices(std::span<const uint16_t* const> matrices, int64_t n, int64_t k, int64_t max_rows);
/// One GEMV by the given kernel: y[m, n] = bf16(x[m, :]) . w[n, :]^T (+ bias); x_bf16 (m * k
/// elements) is needed by kCublas only, which rounds x into it first unless x_bf16_ready (the
/// kernel that made x also wrote bf16(x) there).
void gemv_run(GemvKernel kernel, const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k, float* y,
              const uint16_t* bias, uint16_t* x_bf16, void* stream, bool accumulate = false, bool x_bf16_ready = false);
/// The block-k kernel (exposed for tests): rows_per_block x chunks one of 2x2, 4x1, 8x1; 1 <= m <= 8, k % 8 == 0.
/// With x_bf16 (bf16(x), 16-byte aligned) it reads that instead of rounding x: the same products.
void gemv_block_k(const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k, float* y, const uint16_t* bias,
                  int rows_per_block, int chunks, void* stream, bool accumulate = false, const uint16_t* x_bf16 = nullptr);

/// y[m, n] = x[m, n] / rms(x[m, :]) * w[n]; w bf16. With y_bf16, also bf16(y) there (as to_bf16
/// rounds: a decode GEMV through cuBLAS then needs no conversion).
void rms_norm(const float* x, int64_t m, int64_t n, const uint16_t* w, float eps, float* y, void* stream);
void rms_norm(const float* x, int64_t m, int64_t n, WeightRef w, float eps, float* y, void* stream, uint16_t* y_bf16 = nullptr);
/// In-place rotary embedding on x[n_tok, n_heads, head_dim]; neox = rotate-half pairs (i, i + d/2).
void rope(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim, const int32_t* positions, const float* inv_freq,
          bool neox, void* stream);
/// gate[i] = silu(gate[i]) * up[i]; with out_bf16, also its bf16 there (as rms_norm's y_bf16).
void silu_mul(float* gate, const float* up, int64_t n, void* stream, uint16_t* out_bf16 = nullptr);
/// The same over the rows of a fused [gate | up] product (gate_up: [rows][2 width]), into
/// out[rows][width] (not aliasing gate_up); out_bf16 as above.
void silu_mul_rows(const float* gate_up, int64_t rows, int64_t width, float* out, void* stream, uint16_t* out_bf16 = nullptr);
/// out[n_tok, n_embd] = bf16 rows `ids` of table[n_vocab, n_embd], widened to fp32; a negative id
/// gives a zero row (a token another tensor-parallel rank looks up).
void embedding(const uint16_t* table, const int32_t* ids, int64_t n_tok, int64_t n_embd, float* out, void* stream);
void embedding(WeightRef table, const int32_t* ids, int64_t n_tok, int64_t n_embd, float* out, void* stream);

/// Multiprocessors the cuBLAS GEMMs of the calling thread may use (0: all). An engine whose
/// background gather holds some SMs for the whole step leaves them out, so that a one-wave GEMM
/// does not wait for the blocks that share an SM with the gather.
void set_gemm_sm_target(int sms);
/// This thread's block-k GEMVs launch as programmatic dependents of the kernel before them (they
/// stream their first weights while it ends; pdl.cuh); off by default.
void set_gemv_pdl(bool on);
bool gemv_pdl();

/// The prefill GEMM path (m > 8 rows, bf16 weights), where one bf16 copy of an activation feeds
/// several products: rms_norm / silu_mul writing bf16 directly (rounded to nearest even, as
/// matmul_bf16 rounds its input), to_bf16 for any other activation, and gemm_bf16 on a bf16 input:
/// y[m, n] (+)= x_bf16[m, k] . w[n, k]^T (+ bias[n]), fp32 accumulation, y fp32; with accumulate the
/// product is added to y (a residual connection) instead of replacing it.
/// Whether m rows are past the decode GEMVs' measured choices (m > kGemvChoiceRows): matmul_bf16
/// then takes cuBLAS, and the gemm_bf16 path below computes the same products.
bool matmul_rows_use_gemm(int64_t m);
void rms_norm_bf16(const float* x, int64_t m, int64_t n, WeightRef w, float eps, uint16_t* y, void* stream);
void silu_mul_bf16(const float* gate, const float* up, int64_t n, uint16_t* out, void* stream);
void to_bf16(const float* x, int64_t n, uint16_t* out, void* stream);
void gemm_bf16(const uint16_t* x_bf16, int64_t m, const uint16_t* w, int64_t n, int64_t k, float* y, const uint16_t* bias,
               bool accumulate, void* stream);

/// y[m, n] = x[m, k] . w[n, k]^T (+ bias[n]) with w bf16 through cuBLAS: x is rounded to bf16 into
/// `x_bf16` (device scratch of m * k elements), products accumulate in fp32, y is fp32.
/// With `choices` (the weight's measured GemvChoices) and m <= kGemvChoiceRows, the kernel chosen for m rows.
/// x_bf16_ready: x_bf16 already holds bf16(x) (see gemv_run).
void matmul_bf16(const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k, float* y, const uint16_t* bias,
                 uint16_t* x_bf16, void* stream, const GemvChoices* choices = nullptr, bool accumulate = false,
                 bool x_bf16_ready = false);
/// The tensor-core decode GEMV (gemv_mma.cu): y[m, n] = bf16(x) . w^T (+ bias), fp32 accumulation;
/// 1 <= m <= 8, k % 32 == 0; `tiles` (1 or 2) tiles of 16 rows per warp. With x_bf16 (bf16(x),
/// 16-byte aligned) it reads that instead of rounding x: the same products.
void gemv_mma(const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k, float* y, const uint16_t* bias, void* stream,
              bool accumulate = false, int tiles = 1, const uint16_t* x_bf16 = nullptr);
/// The SIMT decode GEMV (matmul_bf16's default for one row without a measured choice; exposed for tests), with
/// `chunks` (2, 4 or 8) 16-byte loads per lane and row in flight; 1 <= m <= 8, k % 8 == 0.
void gemv_simt(const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k, float* y, const uint16_t* bias, int chunks,
               void* stream, bool accumulate = false);
/// The same for a weight of either type: bf16 as matmul_bf16; fp32 (bias fp32 too) through
/// cuBLAS's fp32 GEMM with x unrounded (x_bf16 unused). Every GEMV and matmul takes `accumulate`:
/// y += the product (a residual connection, no bias), the same sum as the product into a buffer
/// added to y afterwards.
void matmul(const float* x, int64_t m, WeightRef w, int64_t n, int64_t k, float* y, WeightRef bias, uint16_t* x_bf16,
            void* stream, bool accumulate = false, bool x_bf16_ready = false);

/// Decode attention of one query token per sequence over per-(sequence, KV head) page lists of an
/// NHD page store of bf16 (elem_bytes 2) or fp32 (4) elements: element (page, token r, head h, dim i) of sequence s's K is at
/// k[s * stride_seq + page * stride_page + r * stride_tok + h * head_dim + i].
struct PagesAttentionArgs {
    const float* q = nullptr;          // [n_seq][n_head][head_dim]
    const void* k = nullptr;           // page store
    const void* v = nullptr;
    const int32_t* page_ids = nullptr; // [n_seq][n_head_kv][max_list]
    const int32_t* n_pages = nullptr;  // [n_seq] list length
    const int32_t* last_len = nullptr; // [n_seq] valid tokens of the last listed page
    float* out = nullptr;              // [n_seq][n_head][head_dim]
    uint16_t* out_bf16 = nullptr;      // optional: bf16(out) as well (the o projection's input)
    int32_t n_seq = 0, n_head = 0, n_head_kv = 0, head_dim = 0, page_size = 0, max_list = 0, elem_bytes = 2;
    int64_t stride_seq = 0, stride_page = 0, stride_tok = 0;
    // Split-K: each (sequence, KV head) is cut into n_split token ranges processed by separate
    // blocks and merged by a second kernel; `partial` is scratch of partial_floats() floats.
    int32_t n_split = 1;
    float* partial = nullptr;
    // Optional, with split-K on the staged kernel's shapes (bf16, head_dim 64/128, groups <= 8):
    // [n_seq][n_head_kv] counters, zero before the call and zero again after it; the last block of
    // each (sequence, KV head) then merges the splits itself instead of a second kernel (same bits).
    int32_t* split_counters = nullptr;
    // The staged kernel and the combine kernel as programmatic dependent launches (pdl.cuh, the
    // engine's --attn-pdl): each waits for the kernel before it before reading anything and lets
    // the next one launch early; without it, plain launches.
    bool pdl = false;
    // The staged kernel keeps V rows in registers instead of shared memory (the engine's
    // --attn-v-registers; same arithmetic in the same order, so the same bits).
    bool v_registers = false;
    int64_t partial_floats() const {
        return static_cast<int64_t>(n_seq) * n_head * (head_dim + 2) * n_split;
    }
};
void attention_pages(const PagesAttentionArgs& args, void* stream);
/// Blocks of attention_pages's kernel for this shape that the current device holds at once (SMs x
/// resident blocks per SM, of the variant v_registers picks): the split-K rule's default target, one full wave.
int attention_pages_wave(int n_head, int n_head_kv, int head_dim, int elem_bytes, bool v_registers = false);

}  // namespace freekv::cuda
