// sampler.h: picks the next token from logits: greedy, or temperature + top-k + top-p with a seed.
// Invariants: temperature <= 0 means greedy (argmax, lowest id on ties); the same seed and logits
// give the same token; top_k <= 0 and top_p >= 1 disable those filters. A draw only looks at the
// candidates_needed() largest logits, ordered by logit descending and lower id first on ties: the
// GPU engine selects those on the device and pick() then gives the token sample() gives.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace freekv {

struct SamplingParams {
    float temperature = 0.8f;
    int top_k = 40;
    float top_p = 0.95f;
    uint64_t seed = 0;
};

class Sampler {
public:
    explicit Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}
    /// pick() over top_candidates(logits, candidates_needed(logits.size())).
    int32_t sample(std::span<const float> logits);
    static int32_t argmax(std::span<const float> logits);

    /// How many of the largest logits a draw needs: 1 when greedy, top_k when it filters, else all.
    int32_t candidates_needed(int64_t n_vocab) const;
    /// The k largest logits, ordered by logit descending and lower id first on equal logits.
    static void top_candidates(std::span<const float> logits, int32_t k, std::vector<int32_t>& ids,
                               std::vector<float>& values);
    /// Draws a token from the candidates_needed() first candidates of that order (ids and their
    /// logits); advances the random state exactly as sample() does.
    int32_t pick(std::span<const int32_t> ids, std::span<const float> values);

private:
    SamplingParams params_;
    std::mt19937_64 rng_;
};

}  // namespace freekv
