// needle_report.cpp: see needle_report.h.
#include "engine/needle_report.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <algorithm>

namespace freekv {

namespace {

const NeedleCell* find_cell(const NeedleRun& run, int64_t length, int depth) {
    for (const NeedleCell& c : run.cells)
        if (c.length == length && c.depth == depth) return &c;
    return nullptr;
}

double percent(int correct, int total) { return total > 0 ? 100.0 * correct / total : 0.0; }

// Pages and bytes recalled per decoded token, and the correction rate, or "-" without counters.
std::string retrieval_columns(const KvStats& s) {
    if (s.sparse_pairs.empty()) return "- | - | - |";
    const double kib = s.sequence_steps > 0 ? static_cast<double>(s.transfer.sync_bytes + s.transfer.background_bytes) /
                                                  static_cast<double>(s.sequence_steps) / 1024.0
                                            : 0.0;
    return fmt::format("{:.4f} | {:.2f} | {:.1f} |", s.correction_rate(), s.pages_per_step(), kib);
}

bool any_mass_recall(const std::vector<NeedleRun>& runs) {
    for (const NeedleRun& run : runs)
        for (const NeedleCell& c : run.cells)
            if (!c.stats.mass_recall.empty()) return true;
    return false;
}

}  // namespace

std::string needle_grid_markdown(const NeedleRun& run) {
    std::string out = fmt::format("{} accuracy, kv mode {} ({} cases per cell)\n\n| depth |", run.task, run.label, run.trials);
    for (int64_t len : run.lengths) out += fmt::format(" {} |", len);
    out += "\n|---|";
    for (size_t i = 0; i < run.lengths.size(); ++i) out += "---|";
    out += "\n";
    int correct = 0, total = 0;
    for (int depth : run.depths) {
        out += fmt::format("| {}% |", depth);
        for (int64_t len : run.lengths) {
            const NeedleCell* c = find_cell(run, len, depth);
            if (c == nullptr) {
                out += " - |";
                continue;
            }
            out += fmt::format(" {:.0f}% |", percent(c->correct, c->total));
            correct += c->correct;
            total += c->total;
        }
        out += "\n";
    }
    out += fmt::format("\noverall {}/{} = {:.1f}%\n", correct, total, percent(correct, total));
    return out;
}

std::string needle_summary_markdown(const std::vector<NeedleRun>& runs) {
    if (runs.empty()) return {};
    const NeedleRun& first = runs.front();
    std::string out = fmt::format("{}: every kv mode, accuracy per length over depths {}..{}%\n\n| kv mode |", first.task,
                                  first.depths.empty() ? 0 : *std::min_element(first.depths.begin(), first.depths.end()),
                                  first.depths.empty() ? 0 : *std::max_element(first.depths.begin(), first.depths.end()));
    for (int64_t len : first.lengths) out += fmt::format(" {} |", len);
    const bool mass = any_mass_recall(runs);
    out += " overall | correction rate | pages/token | recall KiB/token |";
    if (mass) out += " mass recall mean | mass recall p5 | oracle mass recall |";
    out += "\n|---|";
    for (size_t i = 0; i < first.lengths.size() + (mass ? 7 : 4); ++i) out += "---|";
    out += "\n";
    for (const NeedleRun& run : runs) {
        out += fmt::format("| {} |", run.label);
        int correct = 0, total = 0;
        KvStats stats;
        for (int64_t len : run.lengths) {
            int len_correct = 0, len_total = 0;
            for (const NeedleCell& c : run.cells)
                if (c.length == len) {
                    len_correct += c.correct;
                    len_total += c.total;
                    stats.add(c.stats);
                }
            out += fmt::format(" {:.1f}% |", percent(len_correct, len_total));
            correct += len_correct;
            total += len_total;
        }
        out += fmt::format(" {:.1f}% | {}", percent(correct, total), retrieval_columns(stats));
        if (mass) {
            out += stats.mass_recall.empty() ? " - | - |"
                                             : fmt::format(" {:.4f} | {:.4f} |", stats.mass_recall_mean(),
                                                           stats.mass_recall_percentile(5));
            out += stats.oracle_mass_recall.empty() ? " - |" : fmt::format(" {:.4f} |", stats.oracle_mass_recall_mean());
        }
        out += "\n";
    }
    return out;
}

std::string needle_json(const NeedleRun& run) {
    std::string out;
    for (const NeedleCell& c : run.cells) {
        nlohmann::ordered_json row{{"task", run.task},     {"kv_mode", run.label}, {"config", run.config},
                                   {"length", c.length},   {"depth", c.depth},     {"correct", c.correct},
                                   {"total", c.total},
                                   {"accuracy", c.total > 0 ? static_cast<double>(c.correct) / c.total : 0.0}};
        const KvStats& s = c.stats;
        if (!s.sparse_pairs.empty()) {
            row["correction_rate"] = s.correction_rate();
            row["pages_per_token"] = s.pages_per_step();
            row["recall_bytes"] = s.transfer.sync_bytes + s.transfer.background_bytes;
        }
        if (!s.mass_recall.empty()) {
            row["mass_recall_mean"] = s.mass_recall_mean();
            row["mass_recall_p5"] = s.mass_recall_percentile(5);
        }
        if (!s.oracle_mass_recall.empty()) row["oracle_mass_recall_mean"] = s.oracle_mass_recall_mean();
        if (const auto by_layer = s.mass_recall_by_layer(run.n_layer, run.n_head); !by_layer.empty())
            row["mass_recall_by_layer"] = by_layer;
        out += row.dump() + "\n";
    }
    return out;
}

}  // namespace freekv
