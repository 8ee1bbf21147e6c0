// kv_mode.h: the KV management method (--kv-mode) and its knobs (design doc 5.1, 7).
// Invariants after resolve(): summary and group aggregation carry the mode's defaults unless the
// user chose them; correction_threshold is NaN when correction is off.
#pragma once

#include <cmath>
#include <optional>
#include <string>

#include "backend/ops.h"
#include "kv/kv_budget.h"
#include "retrieval/selection.h"

namespace freekv {

enum class KvMode { kFull, kBudgetOnly, kStreaming, kQuest, kArkvale, kFreekv };

/// How recalled pages reach the budget cache on the GPU (design doc R1): one zero-copy gather
/// kernel over mapped pinned memory; `dma`, the copy engines (cudaMemcpyBatchAsync of the blocks
/// into a staging buffer, then a scatter kernel), issued for FreeKV's background recall by a host
/// worker thread once the selection's job list has reached the host (its corrective recall stays
/// the gather kernel, which needs no host round trip), and by the main thread after a host wait on
/// the synchronous paths; or ArkVale's one cudaMemcpyAsync per (page, KV head) block into a staging
/// buffer plus a scatter kernel, waited on by the host before attention. The CPU backend's transfer
/// engine copies the same way for all three.
enum class RecallImpl { kGather, kDma, kPerCopy };
RecallImpl parse_recall_impl(const std::string& s);  // Error names --recall-impl
/// --kv-store-dtype: native (unset), int8 or fp8; Error names the flag.
std::optional<KvCode> parse_store_dtype(const std::string& s);
const char* store_dtype_name(const std::optional<KvCode>& code);
const char* recall_impl_name(RecallImpl r);

KvMode parse_kv_mode(const std::string& s);  // Error lists the modes and names --kv-mode
const char* kv_mode_name(KvMode m);

struct KvModeConfig {
    KvMode mode = KvMode::kFreekv;
    int64_t page_size = 32, budget = 2048, sink = 512, recent = 512;
    float correction_threshold = 0.9f;   // NaN: off (never flag); > 1: flag every head
    bool spec_retrieval = true;
    std::optional<SummaryKind> summary;  // default per mode
    std::optional<GroupAgg> group_agg;   // default per mode
    bool check_invariants = false;       // T6 checks after every sparse attention (slow)
    bool attention_mass_recall = false;  // compute the share of full attention mass attended
    std::optional<float> force_corr_rate;  // benchmarks: flag each (step, layer, seq, KV head) with this probability
    std::optional<RecallImpl> recall_impl;  // default per mode: per-copy for arkvale, gather otherwise
    // GPU FreeKV (design doc R2): false: the corrective selection and gather are always launched
    // and do nothing for unflagged heads; true: the host reads each layer's flags (one small sync
    // per layer) and launches them only when a head is flagged.
    bool corr_sync_host = false;
    // The CPU store's element type (--kv-store-dtype): unset keeps the engine's own (fp32 on the
    // CPU backend, bf16 or fp32 on the GPU); int8 or fp8 keep 8-bit codes with scales (backend/ops.h).
    std::optional<KvCode> store_code;

    KvBudget make_budget() const { return KvBudget::make(page_size, budget, sink, recent, mode == KvMode::kStreaming); }
    SummaryKind summary_kind() const {
        return summary.value_or(mode == KvMode::kArkvale ? SummaryKind::kCuboid : SummaryKind::kMinMax);
    }
    GroupAgg aggregation() const {
        if (group_agg) return *group_agg;
        if (mode == KvMode::kQuest) return GroupAgg::kMax;
        if (mode == KvMode::kArkvale) return GroupAgg::kMean;
        return GroupAgg::kSoftmaxMean;
    }
    RecallImpl recall() const {
        return recall_impl.value_or(mode == KvMode::kArkvale ? RecallImpl::kPerCopy : RecallImpl::kGather);
    }
    bool correction_on() const { return !std::isnan(correction_threshold); }
    std::string describe() const;
};

inline KvModeConfig full_kv_mode() {
    KvModeConfig c;
    c.mode = KvMode::kFull;
    return c;
}

/// Parses --corr-threshold: "off" or "0" (correction off), or a number in [-1, 2].
float parse_correction_threshold(const std::string& s);

}  // namespace freekv
