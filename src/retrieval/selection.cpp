// selection.cpp: summaries, scoring, aggregation, top-k, recall planning, correction test.
#include "retrieval/selection.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace freekv {

SummaryKind parse_summary_kind(const std::string& s) {
    if (s == "minmax") return SummaryKind::kMinMax;
    if (s == "cuboid") return SummaryKind::kCuboid;
    FREEKV_FAIL("--summary '{}' must be minmax or cuboid", s);
}

GroupAgg parse_group_agg(const std::string& s) {
    if (s == "softmax-mean") return GroupAgg::kSoftmaxMean;
    if (s == "mean") return GroupAgg::kMean;
    if (s == "max") return GroupAgg::kMax;
    FREEKV_FAIL("--group-agg '{}' must be softmax-mean, mean or max", s);
}

const char* summary_kind_name(SummaryKind k) { return k == SummaryKind::kMinMax ? "minmax" : "cuboid"; }

const char* group_agg_name(GroupAgg g) {
    switch (g) {
        case GroupAgg::kSoftmaxMean: return "softmax-mean";
        case GroupAgg::kMean: return "mean";
        case GroupAgg::kMax: return "max";
    }
    return "?";
}

void summarize_page(SummaryKind kind, const float* keys, int64_t n_rows, int64_t row_stride, int64_t head_dim, float* out) {
    float* upper = out;
    float* lower = out + head_dim;
    for (int64_t i = 0; i < head_dim; ++i) {
        float mx = keys[i], mn = keys[i];
        for (int64_t r = 1; r < n_rows; ++r) {
            mx = std::max(mx, keys[r * row_stride + i]);
            mn = std::min(mn, keys[r * row_stride + i]);
        }
        if (kind == SummaryKind::kMinMax) {
            upper[i] = mx;
            lower[i] = mn;
        } else {
            const float centre = (mx + mn) / 2.0f;
            float deviation = 0.0f;
            for (int64_t r = 0; r < n_rows; ++r) deviation += std::fabs(keys[r * row_stride + i] - centre);
            deviation /= static_cast<float>(n_rows);
            upper[i] = centre + deviation;
            lower[i] = centre - deviation;
        }
    }
}

void score_pages(const float* q, int64_t group, int64_t head_dim, const float* summaries, int64_t first, int64_t end,
                 float* scores) {
    const int64_t n = end - first;
    for (int64_t g = 0; g < group; ++g) {
        const float* qg = q + g * head_dim;
        for (int64_t j = 0; j < n; ++j) {
            const float* upper = summaries + (first + j) * 2 * head_dim;
            const float* lower = upper + head_dim;
            float s = 0.0f;
            for (int64_t i = 0; i < head_dim; ++i) s += std::max(qg[i] * upper[i], qg[i] * lower[i]);
            scores[g * n + j] = s;
        }
    }
}

void aggregate_scores(const float* scores, int64_t group, int64_t n, GroupAgg agg, float* out) {
    std::fill(out, out + n, agg == GroupAgg::kMax ? -INFINITY : 0.0f);
    for (int64_t g = 0; g < group; ++g) {
        const float* s = scores + g * n;
        if (agg == GroupAgg::kMax) {
            for (int64_t j = 0; j < n; ++j) out[j] = std::max(out[j], s[j]);
        } else if (agg == GroupAgg::kMean) {
            for (int64_t j = 0; j < n; ++j) out[j] += s[j];
        } else {
            float mx = -INFINITY;
            for (int64_t j = 0; j < n; ++j) mx = std::max(mx, s[j]);
            float sum = 0.0f;
            for (int64_t j = 0; j < n; ++j) sum += std::exp(s[j] - mx);
            for (int64_t j = 0; j < n; ++j) out[j] += std::exp(s[j] - mx) / sum;
        }
    }
    if (agg != GroupAgg::kMax)
        for (int64_t j = 0; j < n; ++j) out[j] /= static_cast<float>(group);
}

std::vector<int32_t> top_k_pages(std::span<const float> aggregated, int64_t first, int64_t k) {
    const auto n = static_cast<int64_t>(aggregated.size());
    FREEKV_CHECK(k <= n, "top-{} of {} candidates", k, n);
    std::vector<int32_t> idx(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
        const float sa = aggregated[static_cast<size_t>(a)], sb = aggregated[static_cast<size_t>(b)];
        return sa != sb ? sa > sb : a < b;
    });
    idx.resize(static_cast<size_t>(k));
    for (auto& i : idx) i = static_cast<int32_t>(i + first);
    std::sort(idx.begin(), idx.end());
    return idx;
}

void plan_head_recall(int32_t seq, int32_t ikv, std::span<const int32_t> selected, std::span<const int32_t> resident,
                      int64_t first_middle_slot, std::vector<RecallJob>& jobs) {
    FREEKV_DCHECK(selected.size() == resident.size(), "selected {} vs resident {}", selected.size(), resident.size());
    std::vector<int32_t> sorted_resident(resident.begin(), resident.end());
    std::sort(sorted_resident.begin(), sorted_resident.end());
    std::vector<int32_t> missing;
    std::set_difference(selected.begin(), selected.end(), sorted_resident.begin(), sorted_resident.end(),
                        std::back_inserter(missing));
    std::vector<int32_t> evicted_slots;
    for (size_t s = 0; s < resident.size(); ++s)
        if (!std::binary_search(selected.begin(), selected.end(), resident[s]))
            evicted_slots.push_back(static_cast<int32_t>(first_middle_slot + static_cast<int64_t>(s)));
    FREEKV_CHECK(missing.size() == evicted_slots.size(), "{} missing pages but {} evicted slots (resident set has duplicates?)",
                 missing.size(), evicted_slots.size());
    for (size_t i = 0; i < missing.size(); ++i) jobs.push_back({seq, ikv, missing[i], evicted_slots[i]});
}

float group_cosine(const float* q, const float* q_prev, int64_t group, int64_t head_dim) {
    float total = 0.0f;
    for (int64_t g = 0; g < group; ++g) {
        const float* a = q + g * head_dim;
        const float* b = q_prev + g * head_dim;
        float dot = 0.0f, na = 0.0f, nb = 0.0f;
        for (int64_t i = 0; i < head_dim; ++i) {
            dot += a[i] * b[i];
            na += a[i] * a[i];
            nb += b[i] * b[i];
        }
        total += dot / std::max(std::sqrt(na) * std::sqrt(nb), 1e-20f);
    }
    return total / static_cast<float>(group);
}

}  // namespace freekv
