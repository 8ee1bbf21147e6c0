// tp_memory_plan.cpp: see tp_memory_plan.h.
#include "parallel/tp_memory_plan.h"

#include <fmt/format.h>

#include <algorithm>

namespace freekv {

int64_t TpMemoryPlan::host_per_sequence() const {
    int64_t bytes = 0;
    for (const gpu::GpuMemoryPlan& p : ranks) bytes += p.host_per_sequence;
    return bytes;
}

int64_t TpMemoryPlan::max_sequences(int64_t device_cap, int64_t host_cap) const {
    int64_t n = INT64_MAX;
    for (const gpu::GpuMemoryPlan& p : ranks) n = std::min(n, p.max_sequences(device_cap, 0));
    const int64_t host = host_per_sequence();
    if (host_cap > 0 && host > 0) n = std::min(n, host_cap / host);
    return ranks.empty() ? 0 : n;
}

std::string TpMemoryPlan::describe() const {
    std::string out;
    for (size_t r = 0; r < ranks.size(); ++r) {
        const TpRank& t = split.ranks[r];
        const std::string heads = t.kv_heads.count == 1 ? fmt::format("KV head {}", t.kv_heads.begin)
                                                        : fmt::format("KV heads {}-{}", t.kv_heads.begin, t.kv_heads.end() - 1);
        out += fmt::format("{}rank {} of {} ({}, feed-forward {}, vocabulary {}): {}", r == 0 ? "" : "\n", r, ranks.size(), heads,
                           t.ff.count, t.vocab.count, ranks[r].describe());
    }
    return out;
}

TpMemoryPlan plan_tp_memory(const ModelConfig& config, const KvModeConfig& mode, int elem_bytes, int n_ranks, int64_t max_tokens,
                            int64_t prefill_chunk) {
    TpMemoryPlan plan;
    plan.split = make_tp_plan(config, n_ranks);
    for (const TpRank& r : plan.split.ranks)
        plan.ranks.push_back(gpu::plan_gpu_memory(tp_rank_config(config, r), mode, elem_bytes, tp_weight_bytes(config, r, elem_bytes),
                                                  max_tokens, prefill_chunk));
    return plan;
}

}  // namespace freekv
