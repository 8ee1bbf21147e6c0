// sampler.cpp: token selection (see sampler.h).
#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"

namespace freekv {

int32_t Sampler::argmax(std::span<const float> logits) {
    FREEKV_CHECK(!logits.empty(), "argmax of empty logits");
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

int32_t Sampler::candidates_needed(int64_t n_vocab) const {
    FREEKV_CHECK(n_vocab > 0, "sampling from an empty vocabulary");
    if (params_.temperature <= 0.0f) return 1;
    if (params_.top_k > 0 && params_.top_k < n_vocab) return params_.top_k;
    return static_cast<int32_t>(n_vocab);
}

void Sampler::top_candidates(std::span<const float> logits, int32_t k, std::vector<int32_t>& ids, std::vector<float>& values) {
    const auto n = static_cast<int32_t>(logits.size());
    FREEKV_CHECK(k >= 1 && k <= n, "top-{} candidates of {} logits", k, n);
    ids.resize(static_cast<size_t>(n));
    std::iota(ids.begin(), ids.end(), 0);
    auto by_logit = [&](int32_t a, int32_t b) {
        return logits[static_cast<size_t>(a)] != logits[static_cast<size_t>(b)]
                   ? logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)]
                   : a < b;
    };
    if (k < n) std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), by_logit);
    else std::sort(ids.begin(), ids.end(), by_logit);
    ids.resize(static_cast<size_t>(k));
    values.resize(static_cast<size_t>(k));
    for (int32_t i = 0; i < k; ++i) values[static_cast<size_t>(i)] = logits[static_cast<size_t>(ids[static_cast<size_t>(i)])];
}

int32_t Sampler::sample(std::span<const float> logits) {
    if (params_.temperature <= 0.0f) return argmax(logits);
    std::vector<int32_t> ids;
    std::vector<float> values;
    top_candidates(logits, candidates_needed(static_cast<int64_t>(logits.size())), ids, values);
    return pick(ids, values);
}

int32_t Sampler::pick(std::span<const int32_t> ids, std::span<const float> values) {
    FREEKV_CHECK(!ids.empty() && ids.size() == values.size(), "sampling from {} candidates with {} logits", ids.size(),
                 values.size());
    if (params_.temperature <= 0.0f) return ids[0];
    auto keep = static_cast<int32_t>(ids.size());
    std::vector<double> probs(static_cast<size_t>(keep));
    const double mx = values[0];
    double sum = 0.0;
    for (int32_t i = 0; i < keep; ++i)
        sum += probs[static_cast<size_t>(i)] = std::exp((values[static_cast<size_t>(i)] - mx) / params_.temperature);
    if (params_.top_p < 1.0f) {
        double cumulative = 0.0;
        for (int32_t i = 0; i < keep; ++i) {
            cumulative += probs[static_cast<size_t>(i)] / sum;
            if (cumulative >= params_.top_p) {
                keep = i + 1;
                break;
            }
        }
        probs.resize(static_cast<size_t>(keep));
    }
    std::discrete_distribution<int32_t> dist(probs.begin(), probs.end());
    return ids[static_cast<size_t>(dist(rng_))];
}

}  // namespace freekv
