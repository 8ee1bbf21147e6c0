// sampler.h: picks the next token from logits: greedy, or temperature + top-k + top-p with a seed.
// Invariants: temperature <= 0 means greedy (argmax, lowest id on ties); the same seed and logits
// give the same token; top_k <= 0 and top_p >= 1 disable those filters.
#pragma once

#include <cstdint>
#include <random>
#include <span>

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
    int32_t sample(std::span<const float> logits);
    static int32_t argmax(std::span<const float> logits);

private:
    SamplingParams params_;
    std::mt19937_64 rng_;
};

}  // namespace freekv
