// test_sampler.cpp: greedy, top-k, top-p and seed determinism of the sampler; the candidate order
// (logit descending, lower id on ties) and pick() over candidates giving sample()'s tokens (the
// path the GPU engine takes with candidates chosen on the device).
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <set>

#include "core/error.h"
#include "engine/sampler.h"

namespace freekv {
namespace {

size_t sz(int64_t n) { return static_cast<size_t>(n); }

TEST(Sampler, GreedyPicksArgmaxLowestIdOnTies) {
    Sampler s({0.0f, 40, 0.95f, 1});
    std::vector<float> logits{0.1f, 3.0f, -1.0f, 3.0f};
    EXPECT_EQ(s.sample(logits), 1);
}

TEST(Sampler, TopKOneIsGreedy) {
    Sampler s({1.5f, 1, 1.0f, 7});
    std::vector<float> logits{0.1f, 0.2f, 2.0f, 0.3f};
    for (int i = 0; i < 50; ++i) EXPECT_EQ(s.sample(logits), 2);
}

TEST(Sampler, TopPKeepsSmallestSetReachingP) {
    // probabilities ~ [0.665, 0.245, 0.090]: top-p 0.8 keeps ids 0 and 1 only.
    Sampler s({1.0f, 0, 0.8f, 3});
    std::vector<float> logits{2.0f, 1.0f, 0.0f};
    std::set<int32_t> seen;
    for (int i = 0; i < 500; ++i) seen.insert(s.sample(logits));
    EXPECT_EQ(seen, (std::set<int32_t>{0, 1}));
}

TEST(Sampler, SameSeedSameTokens) {
    std::vector<float> logits(100);
    for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(i % 7) * 0.3f;
    Sampler a({0.9f, 50, 0.9f, 42}), b({0.9f, 50, 0.9f, 42}), c({0.9f, 50, 0.9f, 43});
    std::vector<int32_t> ta, tb, tc;
    for (int i = 0; i < 64; ++i) {
        ta.push_back(a.sample(logits));
        tb.push_back(b.sample(logits));
        tc.push_back(c.sample(logits));
    }
    EXPECT_EQ(ta, tb);
    EXPECT_NE(ta, tc);
}

TEST(Sampler, TopCandidatesAreOrderedByLogitThenId) {
    std::mt19937 rng(5);
    std::vector<float> logits(1000);
    // Few distinct values, so that ties are common.
    for (auto& l : logits) l = static_cast<float>(static_cast<int>(rng() % 9)) * 0.5f - 2.0f;
    std::vector<int32_t> want(logits.size());
    std::iota(want.begin(), want.end(), 0);
    std::stable_sort(want.begin(), want.end(), [&](int32_t a, int32_t b) { return logits[sz(a)] > logits[sz(b)]; });
    for (int32_t k : {1, 7, 40, 1000}) {
        std::vector<int32_t> ids;
        std::vector<float> values;
        Sampler::top_candidates(logits, k, ids, values);
        ASSERT_EQ(ids.size(), static_cast<size_t>(k));
        for (int32_t i = 0; i < k; ++i) {
            EXPECT_EQ(ids[sz(i)], want[sz(i)]) << "k " << k << " rank " << i;
            EXPECT_EQ(values[sz(i)], logits[sz(want[sz(i)])]);
        }
    }
    std::vector<int32_t> ids;
    std::vector<float> values;
    EXPECT_THROW(Sampler::top_candidates(logits, 0, ids, values), Error);
    EXPECT_THROW(Sampler::top_candidates(logits, 1001, ids, values), Error);
}

TEST(Sampler, PickOverCandidatesGivesTheTokensOfSample) {
    std::mt19937 rng(11);
    std::vector<float> logits(5000);
    for (auto& l : logits) l = std::normal_distribution<float>(0.0f, 2.0f)(rng);
    for (const SamplingParams& p : {SamplingParams{0.0f, 40, 0.95f, 1}, SamplingParams{0.8f, 40, 0.95f, 2},
                                    SamplingParams{1.2f, 5, 1.0f, 3}, SamplingParams{0.7f, 0, 0.9f, 4}}) {
        Sampler a(p), b(p);
        const int32_t k = b.candidates_needed(static_cast<int64_t>(logits.size()));
        EXPECT_EQ(k, p.temperature <= 0.0f ? 1 : (p.top_k > 0 ? p.top_k : 5000));
        std::vector<int32_t> ids;
        std::vector<float> values;
        Sampler::top_candidates(logits, k, ids, values);
        std::set<int32_t> distinct;
        for (int i = 0; i < 200; ++i) {
            const int32_t t = a.sample(logits);
            EXPECT_EQ(b.pick(ids, values), t) << "draw " << i << " temperature " << p.temperature;
            distinct.insert(t);
        }
        if (p.temperature > 0.0f) {
            EXPECT_GT(distinct.size(), 1u) << "a sampler that never varies proves little";
        }
    }
}

}  // namespace
}  // namespace freekv
