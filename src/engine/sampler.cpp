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

int32_t Sampler::sample(std::span<const float> logits) {
    if (params_.temperature <= 0.0f) return argmax(logits);
    const auto n = static_cast<int32_t>(logits.size());
    std::vector<int32_t> ids(static_cast<size_t>(n));
    std::iota(ids.begin(), ids.end(), 0);
    auto by_logit = [&](int32_t a, int32_t b) {
        return logits[static_cast<size_t>(a)] != logits[static_cast<size_t>(b)]
                   ? logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)]
                   : a < b;
    };
    int32_t keep = n;
    if (params_.top_k > 0 && params_.top_k < n) {
        keep = params_.top_k;
        std::partial_sort(ids.begin(), ids.begin() + keep, ids.end(), by_logit);
    } else {
        std::sort(ids.begin(), ids.end(), by_logit);
    }
    std::vector<double> probs(static_cast<size_t>(keep));
    const double mx = logits[static_cast<size_t>(ids[0])];
    double sum = 0.0;
    for (int32_t i = 0; i < keep; ++i)
        sum += probs[static_cast<size_t>(i)] =
            std::exp((logits[static_cast<size_t>(ids[static_cast<size_t>(i)])] - mx) / params_.temperature);
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
