// kv_flags.h: the KV-mode flags shared by generate, perplexity, needle and bench (design doc 7).
// Invariant: resolve() turns the parsed strings into a validated KvModeConfig or throws an Error
// naming the flag.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "engine/kv_mode.h"

namespace freekv::app {

struct KvFlags {
    std::string mode = "freekv", corr_threshold = "0.9", summary, group_agg;
    int64_t budget = 2048, sink = 512, recent = 512, page_size = 32;
    bool no_spec = false, check_invariants = false;

    void add_to(CLI::App& cmd);
    KvModeConfig resolve() const;
};

}  // namespace freekv::app
