// kv_mode.cpp: parsing and description of the KV mode settings.
#include "engine/kv_mode.h"

#include <fmt/format.h>

#include <limits>

#include "core/error.h"

namespace freekv {

KvMode parse_kv_mode(const std::string& s) {
    if (s == "full") return KvMode::kFull;
    if (s == "budget-only") return KvMode::kBudgetOnly;
    if (s == "streaming") return KvMode::kStreaming;
    if (s == "quest") return KvMode::kQuest;
    if (s == "arkvale") return KvMode::kArkvale;
    if (s == "freekv") return KvMode::kFreekv;
    FREEKV_FAIL("--kv-mode '{}' must be one of full, budget-only, streaming, quest, arkvale, freekv", s);
}

const char* kv_mode_name(KvMode m) {
    switch (m) {
        case KvMode::kFull: return "full";
        case KvMode::kBudgetOnly: return "budget-only";
        case KvMode::kStreaming: return "streaming";
        case KvMode::kQuest: return "quest";
        case KvMode::kArkvale: return "arkvale";
        case KvMode::kFreekv: return "freekv";
    }
    return "?";
}

RecallImpl parse_recall_impl(const std::string& s) {
    if (s == "gather") return RecallImpl::kGather;
    if (s == "dma") return RecallImpl::kDma;
    if (s == "per-copy") return RecallImpl::kPerCopy;
    FREEKV_FAIL("--recall-impl '{}' must be gather, dma or per-copy", s);
}

std::optional<KvCode> parse_store_dtype(const std::string& s) {
    if (s == "native") return std::nullopt;
    if (s == "int8") return KvCode::kInt8;
    if (s == "fp8") return KvCode::kFp8E4m3;
    FREEKV_FAIL("--kv-store-dtype '{}' must be native, int8 or fp8", s);
}

const char* store_dtype_name(const std::optional<KvCode>& code) {
    if (!code) return "native";
    return *code == KvCode::kInt8 ? "int8" : "fp8";
}

const char* recall_impl_name(RecallImpl r) {
    switch (r) {
    case RecallImpl::kGather: return "gather";
    case RecallImpl::kDma: return "dma";
    case RecallImpl::kPerCopy: return "per-copy";
    }
    return "?";
}

float parse_correction_threshold(const std::string& s) {
    // NOTE: "0" also means off (the issue tracker's spelling); a literal threshold of 0 would flag
    // only heads whose query reversed direction, which the range [-1, 2] otherwise allows.
    if (s == "off" || s == "0") return std::numeric_limits<float>::quiet_NaN();
    float v = 0;
    try {
        size_t used = 0;
        v = std::stof(s, &used);
        if (used != s.size()) throw std::invalid_argument(s);
    } catch (const std::exception&) {
        FREEKV_FAIL("--corr-threshold '{}' must be 'off' or a number in [-1, 2]", s);
    }
    if (!(v >= -1.0f && v <= 2.0f)) FREEKV_FAIL("--corr-threshold {} must be in [-1, 2] (or 'off')", v);
    return v;
}

std::string KvModeConfig::describe() const {
    std::string s = fmt::format("kv-mode {}", kv_mode_name(mode));
    if (mode == KvMode::kFull) return s;
    s += " | " + make_budget().describe();
    if (mode == KvMode::kQuest || mode == KvMode::kArkvale || mode == KvMode::kFreekv)
        s += fmt::format(" | summary {} | group-agg {}", summary_kind_name(summary_kind()), group_agg_name(aggregation()));
    if (mode == KvMode::kFreekv)
        s += fmt::format(" | spec {} | corr {}", spec_retrieval ? "on" : "off",
                         force_corr_rate ? fmt::format("forced at rate {:.2f}", *force_corr_rate)
                         : correction_on() ? fmt::format("{:.2f}", correction_threshold)
                                           : std::string("off"));
    if (mode == KvMode::kArkvale || mode == KvMode::kFreekv) s += fmt::format(" | recall {} (GPU)", recall_impl_name(recall()));
    if (mode == KvMode::kFreekv && spec_retrieval && corr_sync_host) s += " | corr-sync host (GPU)";
    if (store_code) s += fmt::format(" | store {}", store_dtype_name(store_code));
    return s;
}

}  // namespace freekv
