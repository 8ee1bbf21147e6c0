// generator.cpp: prefill + decode loop for one sequence (see generator.h).
#include "engine/generator.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "core/progress.h"
#include "engine/kv_session.h"

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

    KvSession session(c, params.kv_mode, n_prompt + n_predict, params.gpu);
    // The GPU engine prefills a prompt in one call.
    const int64_t chunk = session.on_gpu() ? n_prompt : params.prefill_chunk;
    const std::vector<int32_t> stop = m.stop_ids();
    Sampler sampler(params.sampling);
    GenerateStats stats;
    stats.n_prompt = n_prompt;
    // Every forward returns the candidates a draw needs (on the GPU chosen on the device, so the
    // logits stay there), then the sampler picks among them.
    const int32_t n_candidates = sampler.candidates_needed(c.n_vocab);
    std::vector<int32_t> ids;
    std::vector<float> values;

    const auto t0 = clock::now();
    {
        ProgressLine progress("prefill", n_prompt, "tokens", params.progress && n_prompt > chunk);
        for (int64_t done = 0; done < n_prompt; done += chunk) {
            const int64_t n = std::min(chunk, n_prompt - done);
            session.forward_top(*m.model, std::span(prompt).subspan(static_cast<size_t>(done), static_cast<size_t>(n)),
                                n_candidates, ids, values);
            progress.update(done + n);
        }
    }
    auto t_last = clock::now();
    stats.prompt_ms = std::chrono::duration<double, std::milli>(t_last - t0).count();
    for (int64_t i = 0; i < n_predict; ++i) {
        const int32_t next = sampler.pick(ids, values);
        const auto now = clock::now();
        if (i == 0) stats.ttft_ms = std::chrono::duration<double, std::milli>(now - t0).count();
        else stats.step_ms.push_back(std::chrono::duration<double, std::milli>(now - t_last).count());
        t_last = now;
        ++stats.n_generated;
        const bool is_stop = std::find(stop.begin(), stop.end(), next) != stop.end();
        if (!on_token(next) || is_stop || i + 1 == n_predict) break;
        const int32_t token[1] = {next};
        session.forward_top(*m.model, token, n_candidates, ids, values);
    }
    stats.decode_ms = std::chrono::duration<double, std::milli>(t_last - t0).count() - stats.ttft_ms;
    stats.kv = session.stats();
    return stats;
}

}  // namespace freekv
