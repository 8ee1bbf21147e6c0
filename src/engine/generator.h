// generator.h: runs one prompt through prefill (in chunks, with a progress line) and decodes
// token by token with a sampler, under any KV mode (KvSession); reports timings.
// Invariants: the prompt plus generated tokens never exceed the context (checked before any work,
// with a message naming -c); on_token is called once per generated token, in order.
#pragma once

#include <functional>
#include <vector>

#include "engine/gpu_ranks.h"
#include "engine/kv_mode.h"
#include "engine/retrieval_kv.h"
#include "engine/sampler.h"
#include "gpu/gpu_engine.h"
#include "model/model_loader.h"

namespace freekv {

struct GenerateParams {
    int64_t n_ctx = 0;           // 0 = the model's trained context
    int64_t n_predict = 128;     // -1 = until a stop token or the context is full
    int64_t prefill_chunk = 0;   // prompt chunk boundaries; 0: the engine's default for the backend
    KvModeConfig kv_mode = full_kv_mode();  // the CLI defaults to freekv
    SamplingParams sampling;
    bool progress = true;
    std::shared_ptr<const gpu::GpuWeights> gpu;  // run on the GPU engine when set
    int tensor_parallel = 1;                     // ranks the model is split over (--tensor-parallel)
    GpuRanks gpu_ranks;                          // the ranks' GPUs when they run there (--tp-gpus)
};

struct GenerateStats {
    int64_t n_prompt = 0, n_generated = 0;
    double prompt_ms = 0, decode_ms = 0, ttft_ms = 0;
    std::vector<double> step_ms;  // per decode step after the first token
    KvStats kv;                   // retrieval counters (empty for full)
};

/// Generates a continuation of `prompt`; on_token(id) returns false to stop early.
GenerateStats generate(const LoadedModel& model, const std::vector<int32_t>& prompt, const GenerateParams& params,
                       const std::function<bool(int32_t)>& on_token);

}  // namespace freekv
