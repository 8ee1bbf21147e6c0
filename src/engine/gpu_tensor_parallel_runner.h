// gpu_tensor_parallel_runner.h: a ModelRunner that splits the model over N tensor-parallel ranks on
// GPUs (parallel/tp_plan.h): rank r a thread with GPU devices[r] current, its shard's weights on that
// GPU, its own GpuEngine (its KV heads' budget, summaries, selection, pinned store and recall), the
// ranks' residual sums through gpu_collectives.h (NCCL across GPUs; through host memory when they
// share one GPU, to test the split on a one-GPU machine). Logits come back per vocabulary slice and
// are put together here; forward_top merges each rank's top candidates of its slice. On a host with
// several NUMA nodes each rank's thread prefers its GPU's node, so its pinned store lies there.
// Invariants: every CUDA call of a rank runs on its thread; every rank runs every call, with the same
// spans; the ranks hold the same slots; a call that fails on one rank fails on all (the collectives
// are stopped, then made anew) and throws the first rank's error.
#pragma once

#include <memory>
#include <vector>

#include "engine/model_runner.h"

namespace freekv {

/// A GPU runner for `mode` that splits `model` over devices.size() ranks, rank r on GPU devices[r]
/// (all distinct: NCCL; all the same: host-staged sums), weights and KV in `dtype`.
std::unique_ptr<ModelRunner> make_gpu_tensor_parallel_runner(const LoadedModel& model, const KvModeConfig& mode,
                                                             int64_t max_batch, int64_t max_tokens, gpu::GpuDtype dtype,
                                                             const gpu::GpuTuning& tuning, const std::vector<int>& devices);

/// Each row's k best of the ranks' candidates (ranks[r]: [rows][k_r] ids of rank r's slice, which
/// starts at vocab_begin[r], and their values), in Sampler::top_candidates' order: value
/// descending, lower id first. Exposed for tests.
void merge_rank_tops(const std::vector<std::vector<int32_t>>& ids, const std::vector<std::vector<float>>& values,
                     const std::vector<int32_t>& k_of_rank, const std::vector<int64_t>& vocab_begin, int64_t rows, int32_t k,
                     std::vector<int32_t>& out_ids, std::vector<float>& out_values);

}  // namespace freekv
