// perplexity.h: decode-time perplexity (design doc 6.1 A1). Per window, the first `prefix` tokens
// are prefilled and the rest are fed one per decode step (teacher forcing), so every scored token
// is produced by the KV mode's decode path (sparse regime, speculation and correction live). With
// compare_full a `full` reference runs in lockstep on the same weights and tokens, giving KL
// divergence and top-1 agreement, and the mode records its attention-mass recall.
// Invariant: windows are disjoint, consecutive slices of the token stream; each scored token is
// predicted from exactly the tokens before it in its window.
#pragma once

#include <functional>
#include <vector>

#include "engine/gpu_ranks.h"
#include "engine/kv_mode.h"
#include "engine/retrieval_kv.h"
#include "gpu/gpu_engine.h"
#include "model/model_loader.h"

namespace freekv {

struct PerplexityParams {
    int64_t n_ctx = 8192;      // window length
    int64_t prefix = 4096;     // prefilled tokens per window (not scored)
    int64_t max_windows = 0;   // 0 = every full window of the text
    bool compare_full = false;
    std::vector<KvModeConfig> modes;  // all run in lockstep on the same tokens and weights
    std::vector<std::string> labels;  // one per mode, for reports
    std::shared_ptr<const gpu::GpuWeights> gpu;  // run every mode (and the reference) on the GPU when set
    int tensor_parallel = 1;                     // ranks the model is split over (--tensor-parallel)
    GpuRanks gpu_ranks;                          // the ranks' GPUs when they run there (--tp-gpus)
};

struct PerplexityResult {
    std::string label;
    KvModeConfig mode;
    int64_t n_windows = 0, n_scored = 0;
    double nll_mean = 0, nll_stderr = 0;           // nats per token
    double ppl() const;
    double ppl_error() const;                      // one standard error, propagated to PPL
    // with compare_full:
    double full_nll_mean = 0;
    double kl_mean = 0, kl_p99 = 0, top1_agreement = 0;
    KvStats kv_stats;                              // summed over windows (not for full)
};

/// One result per mode, in order. progress(done, total) is called after every decoded token.
std::vector<PerplexityResult> run_perplexity(const LoadedModel& model, const std::vector<int32_t>& tokens, const PerplexityParams& params,
                                const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace freekv
