// tp_memory_plan.h: the memory plan of every GPU under tensor parallelism. A rank's GpuEngine is a
// GpuEngine of its shard (tp_rank_config: its KV heads, feed-forward and vocabulary slices) holding
// tp_weight_bytes of weights, so its plan is gpu::plan_gpu_memory of that shard; the ranks' pinned
// CPU stores share the host's memory. Pure arithmetic, in every build (inspect --memory-plan).
// Invariants: ranks[r] is rank r's plan; with one rank it is the whole model's plan.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/kv_mode.h"
#include "gpu/gpu_memory_plan.h"
#include "parallel/tp_plan.h"

namespace freekv {

struct TpMemoryPlan {
    TpPlan split;
    std::vector<gpu::GpuMemoryPlan> ranks;

    /// The most sequences every GPU fits in device_cap bytes (weights included) while all ranks'
    /// pinned stores together fit in host_cap bytes (<= 0: no host cap); 0 when not one does.
    int64_t max_sequences(int64_t device_cap, int64_t host_cap) const;
    /// Pinned CPU store bytes of one sequence, all ranks together.
    int64_t host_per_sequence() const;
    /// One line per rank: its heads and slices, then its plan (gpu::GpuMemoryPlan::describe).
    std::string describe() const;
};

/// The plans of n_ranks GPUs running `mode` with weights and KV of elem_bytes (2: bf16, 4: f32),
/// sequences of up to max_tokens and prompts prefilled in chunks of prefill_chunk (0: whole).
/// Throws make_tp_plan's Error when the model does not split over n_ranks.
TpMemoryPlan plan_tp_memory(const ModelConfig& config, const KvModeConfig& mode, int elem_bytes, int n_ranks,
                            int64_t max_tokens, int64_t prefill_chunk = 0);

}  // namespace freekv
