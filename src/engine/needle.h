// needle.h: needle-in-a-haystack retrieval (design doc 6.1 A2 passkey, A3 key-value): builds
// prompts of an exact token length with the needle at a chosen depth, generates greedily under a
// KV mode, and scores the answer by exact match.
// Invariants: a built case's prompt has exactly the requested number of tokens; its needle starts
// at token needle_pos = intro + round(depth * filler tokens); cases depend only on the seed.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/gpu_ranks.h"
#include "engine/kv_mode.h"
#include "engine/kv_stats.h"
#include "gpu/gpu_engine.h"
#include "model/model_loader.h"
#include "tokenizer/bpe_tokenizer.h"

namespace freekv {

enum class NeedleTask { kPasskey, kKeyValue };

struct NeedleCase {
    std::vector<int32_t> prompt;
    std::string answer;      // the pass key digits, or the value identifier
    int64_t needle_pos = 0;  // token index where the needle starts
    int64_t filler_tokens = 0;
};

/// Passkey: filler text (token ids of the haystack) with "The pass key is K..." at depth in [0, 1].
NeedleCase make_passkey_case(const Tokenizer& tok, const std::vector<int32_t>& haystack, int64_t length, double depth,
                             std::mt19937_64& rng);
/// Key-value: a JSON object of random 36-character identifiers; the asked pair sits at depth.
NeedleCase make_kv_case(const Tokenizer& tok, int64_t length, double depth, std::mt19937_64& rng);

/// Exact match: the first run of digits in the output is the key.
bool score_passkey(const std::string& output, const std::string& key);
/// Exact match: the output starts with the value (after optional spaces and a quote).
bool score_kv(const std::string& output, const std::string& value);

struct NeedleParams {
    NeedleTask task = NeedleTask::kPasskey;
    std::vector<int64_t> lengths;   // prompt tokens
    std::vector<int> depths;        // percent
    int trials = 2;
    uint64_t seed = 1234;
    KvModeConfig mode;
    std::shared_ptr<const gpu::GpuWeights> gpu;  // run on the GPU engine when set
    int tensor_parallel = 1;                     // ranks the model is split over (--tensor-parallel)
    GpuRanks gpu_ranks;                          // the ranks' GPUs when they run there (--tp-gpus)
};

struct NeedleCell {
    int64_t length = 0;
    int depth = 0;
    int correct = 0, total = 0;
    KvStats stats;  // summed over the cell's cases (empty for full)
};

/// Runs every (length, depth, trial); progress(done, total) after each case.
std::vector<NeedleCell> run_needle(const LoadedModel& model, const std::vector<int32_t>& haystack, const NeedleParams& params,
                                   const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace freekv
