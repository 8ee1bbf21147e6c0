// tensor_parallel_runner.h: a ModelRunner that splits the model over N tensor-parallel ranks on the
// CPU (parallel/tp_plan.h): each rank a thread with its shard of the weights (tp_shard.h), its own
// KV heads in its own KV storage of the KV mode (budget, summaries, selection and store per rank),
// and host collectives (host_collective.h) summing the row-parallel products. It is the CPU twin
// of the GPUs' tensor parallelism, and what CI checks the split end to end with.
// Invariants: every rank runs every forward, with the same spans, at the same time; the ranks hold
// the same sequence slots; all ranks get the same logits (rank 0's are returned); a forward that
// fails on one rank fails on all and throws the first rank's error; stats() puts the ranks' per-head
// counters back in the whole model's head order. Only --force-corr-rate (a benchmark knob) differs
// from one rank: each rank draws its heads' flags from its own random stream.
#pragma once

#include <memory>
#include <vector>

#include "engine/model_runner.h"

namespace freekv {

/// A CPU runner for `mode` that splits `model` over n_ranks ranks (>= 1; make_tp_plan's refusals
/// when the model cannot be split so).
std::unique_ptr<ModelRunner> make_tensor_parallel_runner(const LoadedModel& model, const KvModeConfig& mode, int64_t max_batch,
                                                         int64_t max_tokens, int n_ranks, const FaultInjection& faults = {});

/// Throws Error naming the flag when n_ranks is below 1, when the whole model's GPU weights come
/// with several ranks (each GPU rank makes its shard's), or when GPUs are named for the ranks
/// (gpu_rank_devices > 0) but not one per rank.
void check_tensor_parallel(int n_ranks, bool whole_model_on_gpu, size_t gpu_rank_devices);

/// The ranks' counters as the whole model's (exposed for tests): per-head counters in head order,
/// bytes summed, per-(step, sequence) counts from rank 0, times the slowest rank's. No rank knows
/// whether another flagged a head of the same (step, sequence) pair, so corrected_pairs is the most
/// any rank counted: a lower bound (head_flags / head_tests stays exact).
KvStats merge_rank_stats(const std::vector<KvStats>& ranks, const std::vector<int64_t>& kv_heads_per_rank,
                         const std::vector<int64_t>& q_heads_per_rank, int64_t n_layer);

}  // namespace freekv
