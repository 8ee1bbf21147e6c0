// needle_report.h: the needle tool's results as text: per (task, KV mode) a depth x length grid of
// exact-match accuracy; per task every mode side by side (accuracy per length and overall,
// correction rate, pages and bytes recalled per decoded token: design doc 6.1 A2-A5); JSON rows,
// one per cell.
// Invariants: output follows the order of the runs and of their lengths and depths; an accuracy is
// correct / total over the cases it covers; retrieval counters are summed over those cases and shown
// as "-" for a mode without them (full).
#pragma once

#include <string>
#include <vector>

#include "engine/needle.h"

namespace freekv {

struct NeedleRun {
    std::string task;    // "passkey" or "kv"
    std::string label;   // the KV mode as named on the command line
    std::string config;  // its full configuration (KvModeConfig::describe)
    std::vector<int64_t> lengths;
    std::vector<int> depths;
    int trials = 0;
    std::vector<NeedleCell> cells;  // as run_needle returns them
    int64_t n_layer = 0, n_head = 0;  // the model's, for the per-layer mass recall (0: not reported)
};

/// The depth x length grid of one run, with its overall accuracy.
std::string needle_grid_markdown(const NeedleRun& run);
/// Every run of one task side by side, one row per KV mode.
std::string needle_summary_markdown(const std::vector<NeedleRun>& runs);
/// One JSON object per cell of the run, one per line.
std::string needle_json(const NeedleRun& run);

}  // namespace freekv
