// perplexity.cpp: teacher-forced decode over windows, with a lockstep full-attention reference.
#include "engine/perplexity.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "core/error.h"
#include "engine/kv_session.h"

namespace freekv {

namespace {

// log-softmax value of `target` and the distribution, in double.
struct Distribution {
    std::vector<double> log_p;
    int32_t argmax = 0;
};

Distribution log_softmax(std::span<const float> logits) {
    Distribution d;
    d.log_p.resize(logits.size());
    const float mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0.0;
    for (float x : logits) sum += std::exp(static_cast<double>(x - mx));
    const double log_sum = std::log(sum) + mx;
    for (size_t i = 0; i < logits.size(); ++i) d.log_p[i] = static_cast<double>(logits[i]) - log_sum;
    d.argmax = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    return d;
}

}  // namespace

double PerplexityResult::ppl() const { return std::exp(nll_mean); }
double PerplexityResult::ppl_error() const { return std::exp(nll_mean) * nll_stderr; }

std::vector<PerplexityResult> run_perplexity(const LoadedModel& model, const std::vector<int32_t>& tokens,
                                             const PerplexityParams& params,
                                             const std::function<void(int64_t, int64_t)>& progress) {
    const ModelConfig& c = model.config;
    if (params.modes.empty()) FREEKV_FAIL("no --kv-mode given");
    if (params.prefix < 1 || params.prefix >= params.n_ctx)
        FREEKV_FAIL("--prefix {} must be at least 1 and below the window length -c {}", params.prefix, params.n_ctx);
    if (params.n_ctx > c.n_ctx_train)
        FREEKV_FAIL("-c {} exceeds the model's trained context {}", params.n_ctx, c.n_ctx_train);
    int64_t n_windows = static_cast<int64_t>(tokens.size()) / params.n_ctx;
    if (params.max_windows > 0) n_windows = std::min(n_windows, params.max_windows);
    if (n_windows == 0)
        FREEKV_FAIL("the text has {} tokens, fewer than one window of -c {}; use a longer text or a smaller -c",
                    tokens.size(), params.n_ctx);

    const size_t n_modes = params.modes.size();
    std::vector<KvModeConfig> modes = params.modes;
    for (auto& m : modes) m.attention_mass_recall = m.attention_mass_recall || params.compare_full;
    KvModeConfig full_mode;
    full_mode.mode = KvMode::kFull;
    full_mode.page_size = modes.front().page_size;

    struct Accumulator {
        std::vector<double> nll, kl;
        double full_nll = 0.0;
        int64_t agree = 0;
        KvStats stats;
    };
    std::vector<Accumulator> acc(n_modes);
    const int64_t per_window = params.n_ctx - params.prefix, total = per_window * n_windows;
    std::vector<std::vector<float>> logits(n_modes);
    std::vector<float> full_logits;
    for (int64_t w = 0; w < n_windows; ++w) {
        const std::span<const int32_t> window(tokens.data() + w * params.n_ctx, static_cast<size_t>(params.n_ctx));
        std::vector<std::unique_ptr<KvSession>> runners;
        for (const auto& m : modes) runners.push_back(std::make_unique<KvSession>(model, m, params.n_ctx, params.gpu, params.tensor_parallel, params.gpu_ranks));
        std::unique_ptr<KvSession> reference;
        if (params.compare_full) reference = std::make_unique<KvSession>(model, full_mode, params.n_ctx, params.gpu, params.tensor_parallel, params.gpu_ranks);
        const auto prompt = window.first(static_cast<size_t>(params.prefix));
        for (size_t i = 0; i < n_modes; ++i) runners[i]->forward(prompt, logits[i]);
        if (reference) reference->forward(prompt, full_logits);
        for (int64_t t = params.prefix; t < params.n_ctx; ++t) {
            const auto target = static_cast<size_t>(window[static_cast<size_t>(t)]);
            Distribution f;
            if (reference) f = log_softmax(full_logits);
            for (size_t i = 0; i < n_modes; ++i) {
                const Distribution d = log_softmax(logits[i]);
                acc[i].nll.push_back(-d.log_p[target]);
                if (!reference) continue;
                acc[i].full_nll -= f.log_p[target];
                double divergence = 0.0;
                for (size_t j = 0; j < f.log_p.size(); ++j) divergence += std::exp(f.log_p[j]) * (f.log_p[j] - d.log_p[j]);
                acc[i].kl.push_back(std::max(divergence, 0.0));
                acc[i].agree += d.argmax == f.argmax ? 1 : 0;
            }
            if (t + 1 < params.n_ctx) {
                const auto next = window.subspan(static_cast<size_t>(t), 1);
                for (size_t i = 0; i < n_modes; ++i) runners[i]->forward(next, logits[i]);
                if (reference) reference->forward(next, full_logits);
            }
            if (progress) progress(w * per_window + (t - params.prefix) + 1, total);
        }
        for (size_t i = 0; i < n_modes; ++i)
            if (runners[i]->has_stats()) acc[i].stats.add(runners[i]->stats());
    }
    std::vector<PerplexityResult> results(n_modes);
    for (size_t i = 0; i < n_modes; ++i) {
        PerplexityResult& r = results[i];
        const Accumulator& a = acc[i];
        r.label = i < params.labels.size() ? params.labels[i] : kv_mode_name(modes[i].mode);
        r.mode = modes[i];
        r.n_windows = n_windows;
        r.n_scored = static_cast<int64_t>(a.nll.size());
        r.nll_mean = std::accumulate(a.nll.begin(), a.nll.end(), 0.0) / static_cast<double>(a.nll.size());
        double var = 0.0;
        for (double x : a.nll) var += (x - r.nll_mean) * (x - r.nll_mean);
        var /= static_cast<double>(std::max<size_t>(a.nll.size() - 1, 1));
        r.nll_stderr = std::sqrt(var / static_cast<double>(a.nll.size()));
        r.kv_stats = a.stats;
        if (params.compare_full) {
            r.full_nll_mean = a.full_nll / static_cast<double>(a.nll.size());
            r.kl_mean = std::accumulate(a.kl.begin(), a.kl.end(), 0.0) / static_cast<double>(a.kl.size());
            std::vector<double> sorted = a.kl;
            std::sort(sorted.begin(), sorted.end());
            r.kl_p99 = sorted[std::min(sorted.size() - 1, sorted.size() * 99 / 100)];
            r.top1_agreement = static_cast<double>(a.agree) / static_cast<double>(a.kl.size());
        }
    }
    return results;
}

}  // namespace freekv
