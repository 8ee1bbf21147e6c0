// kv_stats.cpp: see kv_stats.h.
#include "engine/kv_stats.h"

#include <algorithm>
#include <numeric>

namespace freekv {

void KvStats::add(const KvStats& s) {
    if (sparse_pairs.empty()) {
        *this = s;
        return;
    }
    decode_steps += s.decode_steps;
    sequence_steps += s.sequence_steps;
    for (size_t l = 0; l < s.sparse_pairs.size(); ++l) {
        sparse_pairs[l] += s.sparse_pairs[l];
        corrected_pairs[l] += s.corrected_pairs[l];
        forced_pairs[l] += s.forced_pairs[l];
        head_tests[l] += s.head_tests[l];
        head_flags[l] += s.head_flags[l];
    }
    transfer.sync_jobs += s.transfer.sync_jobs;
    transfer.background_jobs += s.transfer.background_jobs;
    transfer.sync_bytes += s.transfer.sync_bytes;
    transfer.background_bytes += s.transfer.background_bytes;
    mass_recall.insert(mass_recall.end(), s.mass_recall.begin(), s.mass_recall.end());
    oracle_mass_recall.insert(oracle_mass_recall.end(), s.oracle_mass_recall.begin(), s.oracle_mass_recall.end());
    for (size_t i = 0; i < s.recalled_sync.size(); ++i) {
        recalled_sync[i] += s.recalled_sync[i];
        recalled_background[i] += s.recalled_background[i];
    }
}

double KvStats::correction_rate() const {
    const int64_t tested = std::accumulate(sparse_pairs.begin(), sparse_pairs.end(), int64_t{0});
    const int64_t corrected = std::accumulate(corrected_pairs.begin(), corrected_pairs.end(), int64_t{0});
    return tested > 0 ? static_cast<double>(corrected) / static_cast<double>(tested) : 0.0;
}

double KvStats::pages_per_step() const {
    return sequence_steps > 0 ? static_cast<double>(transfer.sync_jobs + transfer.background_jobs) /
                                    static_cast<double>(sequence_steps)
                              : 0.0;
}

double KvStats::layer_correction_rate(size_t il) const {
    return sparse_pairs[il] > 0 ? static_cast<double>(corrected_pairs[il]) / static_cast<double>(sparse_pairs[il]) : 0.0;
}

double KvStats::layer_head_pages_per_step(size_t il, size_t ikv, size_t n_head_kv) const {
    const size_t i = il * n_head_kv + ikv;
    return sequence_steps > 0 ? static_cast<double>(recalled_sync[i] + recalled_background[i]) /
                                    static_cast<double>(sequence_steps)
                              : 0.0;
}

double KvStats::mass_recall_mean() const {
    if (mass_recall.empty()) return 1.0;
    return std::accumulate(mass_recall.begin(), mass_recall.end(), 0.0) / static_cast<double>(mass_recall.size());
}

double KvStats::oracle_mass_recall_mean() const {
    if (oracle_mass_recall.empty()) return 1.0;
    return std::accumulate(oracle_mass_recall.begin(), oracle_mass_recall.end(), 0.0) / static_cast<double>(oracle_mass_recall.size());
}

std::vector<double> KvStats::mass_recall_by_layer(int64_t n_layer, int64_t n_head) const {
    const auto per_step = static_cast<size_t>(n_layer * n_head);
    if (n_layer <= 0 || n_head <= 0 || mass_recall.empty() || mass_recall.size() % per_step != 0) return {};
    std::vector<double> sum(static_cast<size_t>(n_layer), 0.0);
    for (size_t i = 0; i < mass_recall.size(); ++i) sum[(i / static_cast<size_t>(n_head)) % static_cast<size_t>(n_layer)] += mass_recall[i];
    const double count = static_cast<double>(mass_recall.size() / static_cast<size_t>(n_layer));
    for (double& v : sum) v /= count;
    return sum;
}

double KvStats::mass_recall_percentile(double p) const {
    if (mass_recall.empty()) return 1.0;
    std::vector<float> v = mass_recall;
    const auto k = static_cast<size_t>(p / 100.0 * static_cast<double>(v.size() - 1));
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
    return v[k];
}

}  // namespace freekv
