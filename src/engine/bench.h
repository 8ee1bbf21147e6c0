// bench.h: the side-by-side decode benchmark (design doc 6.2): every KV mode on the same model,
// depths and batch sizes in one process; per cell tokens/s, ms per decode step (median and p99),
// the ratio to the budget-only floor, a critical-path breakdown, recall volume and correction rate;
// optionally ragged batches (sequences of one batch at different context lengths). On GPUs a
// cell runs one GpuEngine, or tensor-parallel ranks (gpu_ranks) through their ModelRunner.
// Invariants: a cell that cannot be allocated is reported as out of memory, never a crash; every
// mode of a cell sees the same prompt tokens; modes rotate order between repetitions.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/gpu_ranks.h"
#include "engine/kv_mode.h"
#include "engine/step_plan.h"
#include "gpu/gpu_engine.h"
#include "model/model_loader.h"

namespace freekv {

struct BenchParams {
    std::vector<std::string> labels;
    std::vector<KvModeConfig> modes;
    std::vector<int64_t> depths{4096};
    std::vector<int64_t> batches{1};
    int64_t n_gen = 32;     // measured decode steps
    int64_t n_warmup = 4;   // decode steps discarded first
    // GPU: the per-phase breakdown (and recall GB/s) comes from this many further steps with
    // events recorded, so that the timed steps carry no event overhead (design doc 6.2).
    int64_t n_breakdown = 32;
    int reps = 2;
    uint64_t seed = 7;
    std::shared_ptr<const gpu::GpuWeights> gpu;  // run on the GPU engine when set
    GpuRanks gpu_ranks;  // devices set: run tensor-parallel ranks there instead (gpu stays null)
    gpu::GpuTuning gpu_tuning;
    // GPU only: give each sequence `depth` tokens of pseudo-random K/V instead of a prefill (random
    // weights make prefilled K/V no more meaningful, and it skips minutes of prefill at 128K).
    bool synthetic_kv = false;
    // > 0: ragged batches: the sequences of a batch get context lengths spread evenly from
    // ragged_min (the first) to the cell's depth (the last), as in design doc 6.2's ragged cell.
    int64_t ragged_min = 0;
};

/// Context length of sequence b of a batch of `batch` in a cell of depth `depth`.
int64_t bench_length(const BenchParams& p, int64_t depth, int64_t b, int64_t batch);

struct BenchRow {
    std::string label;
    int64_t depth = 0, batch = 0;
    int64_t depth_min = 0;  // ragged cells: the shortest sequence's context (depth: the longest)
    bool oom = false;
    std::string error;
    double tokens_per_s = 0, tokens_per_s_std = 0;
    double step_ms_median = 0, step_ms_p99 = 0;
    double floor_ratio = 0;       // step time / budget-only step time (0 when no floor row)
    double prefill_tokens_per_s = 0, prefill_tflops = 0;  // prefill rate; its model + attention FLOP rate
    double select_ms = 0, recall_wait_ms = 0, attention_ms = 0, rest_ms = 0;  // per decode step
    double pages_per_step = 0, correction_rate = 0;
    // GPU: recalled bytes / device time of the recall kernels inside the decode loop (0: none),
    // and that time per step on the critical path and in the background.
    // Tensor-parallel ranks recall at the same time: recall_gbps is their sum (bytes of every rank
    // over the slowest rank's time), recall_gbps_per_gpu that over the ranks (equal to it on one GPU).
    double recall_gbps = 0, recall_gbps_per_gpu = 0, recall_sync_ms = 0, recall_background_ms = 0;
    double host_issue_ms = 0;  // GPU: host time per step until its last launch is issued (KvStats::host_issue_ms)
    // GPU: the step's memory floor, (weights a decode step reads + the K/V its attention read) /
    // the measured HBM read rate (hbm_gbps), in ms; 0 without a GPU.
    double roofline_ms = 0, hbm_gbps = 0;
    RecallImpl recall_impl = RecallImpl::kGather;
    double force_corr_rate = -1;  // < 0: natural correction
    double device_mib = 0, host_mib = 0;  // KV + scratch on the GPU (weights excluded); pinned CPU store
};

/// Bytes of K and V that the attention of the decode step `plan` reads (every attended token's K
/// and V over every layer and KV head) at elem_bytes per element.
int64_t attended_kv_bytes(std::span<const RowPlan> plan, int64_t page_size, const ModelConfig& config, int64_t elem_bytes);

std::vector<BenchRow> run_bench(const LoadedModel& model, const BenchParams& params,
                                const std::function<void(const std::string&)>& progress = {});

}  // namespace freekv
