// kv_flags.h: the KV-mode flags shared by generate, perplexity, needle and bench (design doc 7).
// Invariant: resolve() turns the parsed strings into a validated KvModeConfig or throws an Error
// naming the flag.
#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <utility>
#include <vector>

#include "engine/kv_mode.h"

namespace freekv::app {

struct KvFlags {
    std::string mode = "freekv", corr_threshold = "0.9", summary, group_agg, recall_impl, corr_sync = "device",
                store_dtype = "native";
    int64_t budget = 2048, sink = 512, recent = 512, page_size = 32;
    bool no_spec = false, check_invariants = false;

    void add_to(CLI::App& cmd);
    /// The single mode of --kv-mode (an Error if it lists several).
    KvModeConfig resolve() const;
    /// Every mode of a comma-separated --kv-mode, each with the shared knobs. Names may carry a
    /// FreeKV ablation suffix (freekv:corr-off, freekv:no-spec) or, for a mode with a CPU store,
    /// its store dtype (freekv:int8, budget-only:fp8).
    std::vector<std::pair<std::string, KvModeConfig>> resolve_all() const;
};

}  // namespace freekv::app
