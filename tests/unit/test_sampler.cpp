// test_sampler.cpp: greedy, top-k, top-p and seed determinism of the sampler.
#include <gtest/gtest.h>

#include <set>

#include "engine/sampler.h"

namespace freekv {
namespace {

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

}  // namespace
}  // namespace freekv
