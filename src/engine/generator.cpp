// generator.cpp: one generation as a client of a one-slot Engine (see generator.h).
#include "engine/generator.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>

#include "core/error.h"
#include "core/progress.h"
#include "engine/engine.h"

namespace freekv {

GenerateStats generate(const LoadedModel& m, const std::vector<int32_t>& prompt, const GenerateParams& params,
                       const std::function<bool(int32_t)>& on_token) {
    using clock = std::chrono::steady_clock;
    const ModelConfig& c = m.config;
    const int64_t n_ctx = params.n_ctx > 0 ? params.n_ctx : c.n_ctx_train;
    const auto n_prompt = static_cast<int64_t>(prompt.size());
    if (n_prompt == 0) FREEKV_FAIL("the prompt is empty; pass text with -p or -f");
    if (n_prompt >= n_ctx)
        FREEKV_FAIL("the prompt has {} tokens but the context is {} (-c/--ctx-size); shorten the prompt or raise -c "
                    "(the model was trained for {})", n_prompt, n_ctx, c.n_ctx_train);
    for (int32_t id : prompt)
        if (id < 0 || id >= c.n_vocab) FREEKV_FAIL("prompt token {} is outside the vocabulary of {}", id, c.n_vocab);
    const int64_t budget = n_ctx - n_prompt;
    const int64_t n_predict = params.n_predict < 0 ? budget : std::min(params.n_predict, budget);

    // A one-slot engine sized for this generation (the CLI's memory stays what the prompt needs).
    EngineConfig config;
    config.kv_mode = params.kv_mode;
    config.n_ctx = n_prompt + std::max<int64_t>(n_predict, 1);
    config.max_batch = 1;
    config.max_waiting = 0;
    config.prefill_chunk = params.prefill_chunk;  // 0: the backend's default
    if (params.prefill_chunk > 0) config.step_tokens = params.prefill_chunk;
    config.gpu = params.gpu;
    config.tensor_parallel = params.tensor_parallel;
    config.gpu_devices = params.gpu_ranks.devices;
    config.gpu_dtype = params.gpu_ranks.dtype;
    Engine engine(m, config);
    GenerateStats stats;
    stats.n_prompt = n_prompt;
    std::mutex mutex;
    std::condition_variable done_cv;
    std::optional<RequestOutcome> outcome;
    ProgressLine progress("prefill", n_prompt, "tokens", params.progress && n_prompt > engine.config().prefill_chunk);
    const auto t0 = clock::now();
    auto t_last = t0;
    EngineRequest request;
    request.prompt = prompt;
    request.max_tokens = n_predict;
    request.sampling = params.sampling;
    request.stop_ids = m.stop_ids();
    request.on_prefill = [&](int64_t n_done) {
        progress.update(n_done);
        if (n_done == n_prompt) stats.prompt_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
    };
    request.on_token = [&](int32_t id) {
        const auto now = clock::now();
        if (stats.n_generated > 0) stats.step_ms.push_back(std::chrono::duration<double, std::milli>(now - t_last).count());
        t_last = now;
        ++stats.n_generated;
        return on_token(id);
    };
    request.on_done = [&](const RequestOutcome& out) {
        std::lock_guard lock(mutex);
        outcome = out;
        done_cv.notify_all();
    };
    engine.submit(std::move(request));
    {
        std::unique_lock lock(mutex);
        done_cv.wait(lock, [&] { return outcome.has_value(); });
    }
    if (outcome->reason == FinishReason::kError) FREEKV_FAIL("{}", outcome->error);
    if (outcome->reason == FinishReason::kStop) ++stats.n_generated;  // the stop token is not passed on
    stats.ttft_ms = outcome->ttft_ms;
    stats.decode_ms = std::chrono::duration<double, std::milli>(t_last - t0).count() - stats.ttft_ms;
    if (stats.decode_ms < 0) stats.decode_ms = 0;
    stats.kv = engine.kv_stats();
    return stats;
}

}  // namespace freekv
