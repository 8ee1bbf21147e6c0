// gpu_memory_plan.cpp: the GpuEngine's allocations (gpu_engine.cu's constructor, prefill and
// decode) counted on the host; keep the two in step (test_cuda_engine checks the bound).
#include "gpu/gpu_memory_plan.h"

#include <algorithm>

#include <fmt/format.h>

#include "backend/ops.h"

namespace freekv::gpu {

namespace {

constexpr int64_t kGatherJobBytes = 16;              // cuda::GatherJob: 4 x int32
constexpr int64_t kPrefillScoresBytes = int64_t{512} << 20;  // prefill attention's score chunk cap
constexpr int64_t kSplitRowsHeads = 1056;            // decode attention splits: rows x heads x splits <= this
constexpr int64_t kGemvRows = 8;                     // cuda::kGemvChoiceRows: forwards of up to this many rows take the GEMVs

double gib(int64_t b) { return static_cast<double>(b) / static_cast<double>(int64_t{1} << 30); }

}  // namespace

GpuMemoryPlan plan_gpu_memory(const ModelConfig& c, const KvModeConfig& mode, int elem_bytes, int64_t weight_bytes,
                              int64_t max_tokens, int64_t prefill_chunk) {
    GpuMemoryPlan plan;
    plan.weight_bytes = weight_bytes;
    plan.max_tokens = max_tokens;
    const bool full = mode.mode == KvMode::kFull;
    const KvBudget budget = full ? KvBudget{} : mode.make_budget();
    const int64_t p = full ? mode.page_size : budget.page_size;
    const int64_t max_pages = (max_tokens + p - 1) / p;
    const int64_t n_slots = full ? max_pages : budget.n_budget_page;
    const int64_t L = c.n_layer, kv = c.n_head_kv, d = c.head_dim, row = kv * d, q_dim = c.n_head * d;
    const int64_t eb = elem_bytes;

    int64_t seq = L * n_slots * 2 * p * row * eb;  // budget cache (the whole KV for full)
    seq += L * 2 * q_dim * 4;                      // query ring
    seq += L * q_dim * 4 + 2 * c.n_vocab * 4 * 2;  // decode activations' rows, logits and top-k scratch (bounds)
    seq += (3 * c.n_embd + 2 * q_dim + 2 * row + 2 * c.n_ff) * 4 + std::max({c.n_embd, q_dim, c.n_ff}) * 2;
    if (!full) {
        seq += L * kv * max_pages * 2 * d * eb;              // page summaries
        seq += L * kv * (n_slots + max_pages) * 4;           // page <-> slot maps
        seq += 2 * kv * std::max<int64_t>(budget.n_select, 1) * L * kGatherJobBytes;  // job lists
        seq += 2 * c.n_head * max_pages * 4;                 // selection scores, main and side
        seq += L * q_dim * 4 + 2 * L * kv;                   // side-stream queries, flags and forced
        // A block of the CPU store: native elements, or 8-bit codes with their scales.
        const int64_t block = mode.store_code ? kv_coded_block_bytes(p, d) : 2 * p * d * eb;
        const int64_t store = max_pages * L * kv * block;
        plan.store_bytes_per_token = L * kv * block / p;
        plan.store_dtype = store_dtype_name(mode.store_code);
        if (mode.mode == KvMode::kQuest)
            seq += store;  // quest keeps the full KV in device memory
        else
            plan.host_per_sequence = store;
        // Staging for the copy-engine recall paths: one block per selected (layer-free) job.
        if (mode.recall() != RecallImpl::kGather) seq += 2 * kv * std::max<int64_t>(budget.n_select, 1) * block;
        if (mode.attention_mass_recall) seq += c.n_head * max_pages * p * 4 + L * c.n_head * 4;
    }
    plan.device_per_sequence = seq;
    plan.device_fixed = kSplitRowsHeads * (c.n_head / std::max<int64_t>(kv, 1)) * (d + 2) * 4 + (int64_t{16} << 20);
    plan.device_fixed += kGemvRows * (q_dim + 2 * row + c.n_ff) * 4;  // the fused products' GEMV rows (qkv_fused, ffn_act)
    // One prefill forward of n rows (the whole prompt, or one chunk): activations, bf16 GEMM
    // inputs, the stored history of a prompt done in one forward and, on the cuBLAS path, the
    // attention's fp32 K/V and score chunk (over up to max_tokens keys).
    const bool chunked = prefill_chunk > 0;
    const int64_t n = chunked ? std::min(prefill_chunk, max_tokens) : max_tokens;
    int64_t pre = n * (3 * c.n_embd + 2 * q_dim + 2 * row + 2 * c.n_ff) * 4;
    pre += n * std::max({c.n_embd, q_dim, c.n_ff}) * 2;
    pre += 2 * n * row * eb;
    if (!prefill_uses_flash(elem_bytes, d)) {
        pre += 2 * n * row * 4;
        pre += std::min(kPrefillScoresBytes + kv * max_tokens * 4 * 16, kv * n * max_tokens * 4);
    }
    if (chunked) pre += 2 * L * max_tokens * row * eb;  // the staged K/V of the prompt being prefilled
    plan.prefill_bytes = pre;
    return plan;
}

int64_t GpuMemoryPlan::max_sequences(int64_t device_cap, int64_t host_cap) const {
    const int64_t room = device_cap - weight_bytes - device_fixed - prefill_bytes;
    if (room < device_per_sequence) return 0;
    int64_t n = room / device_per_sequence;
    if (host_cap > 0 && host_per_sequence > 0) n = std::min(n, host_cap / host_per_sequence);
    return n;
}

std::string GpuMemoryPlan::describe() const {
    return fmt::format("memory plan: weights {:.2f} GiB, per sequence of {} tokens {:.3f} GiB on the GPU{}, prefill peak "
                       "{:.2f} GiB",
                       gib(weight_bytes), max_tokens, gib(device_per_sequence),
                       host_per_sequence > 0 ? fmt::format(" + {:.3f} GiB pinned CPU store ({} bytes/token, {})", gib(host_per_sequence),
                                                           store_bytes_per_token, store_dtype)
                                             : "",
                       gib(prefill_bytes + device_fixed));
}

}  // namespace freekv::gpu
