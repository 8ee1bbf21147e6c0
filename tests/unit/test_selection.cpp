// test_selection.cpp: the retrieval arithmetic on hand-computed cases: budget layout and ring
// slots, summaries, scores, group aggregation, top-k ties, eviction pairing, correction cosine.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "kv/kv_budget.h"
#include "retrieval/selection.h"

namespace freekv {
namespace {

TEST(KvBudget, PresetsMatchTheDesignTable) {
    const KvBudget gen = KvBudget::make(32, 2048, 512, 512);
    EXPECT_EQ(gen.n_sink_page, 16);
    EXPECT_EQ(gen.n_recent_page, 16);
    EXPECT_EQ(gen.n_select, 32);
    EXPECT_EQ(gen.n_budget_page, 64);
    const KvBudget input = KvBudget::make(32, 2048, 128, 128);
    EXPECT_EQ(input.n_select, 56);
    const KvBudget streaming = KvBudget::make(32, 2048, 512, 0, true);
    EXPECT_EQ(streaming.n_select, 0);
    EXPECT_EQ(streaming.n_recent_page, 48);
}

TEST(KvBudget, RingSlotsFollowTheToyExample) {
    // Design doc 3.10 scaled to p = 16: ns = 2, nw = 3, k = 3, n_slots = 8, ring = slots 5, 6.
    const KvBudget b = KvBudget::make(16, 128, 32, 48);
    EXPECT_EQ(b.n_select, 3);
    EXPECT_EQ(b.ring_slot(5), 5);
    EXPECT_EQ(b.ring_slot(6), 6);
    EXPECT_EQ(b.ring_slot(7), 5);  // page 7 replaces page 5 (which leaves the window)
    EXPECT_EQ(b.ring_slot(8), 6);
    EXPECT_EQ(b.ring_slot(9), 5);
    EXPECT_FALSE(b.is_sparse(8));
    EXPECT_TRUE(b.is_sparse(9));
    EXPECT_EQ(b.end_candidate(9), 6);  // candidates 2..5 once page 8 is current
}

TEST(KvBudget, ErrorsNameTheFlag) {
    auto message = [](auto fn) {
        try {
            fn();
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string();
    };
    EXPECT_NE(message([] { KvBudget::make(32, 2048, 500, 512); }).find("--kv-sink"), std::string::npos);
    EXPECT_NE(message([] { KvBudget::make(32, 2048, 512, 32); }).find("--kv-recent"), std::string::npos);
    EXPECT_NE(message([] { KvBudget::make(32, 1024, 512, 512); }).find("--kv-budget"), std::string::npos);
    EXPECT_NE(message([] { KvBudget::make(24, 2048, 512, 512); }).find("--kv-page-size"), std::string::npos);
}

TEST(Selection, MinMaxAndCuboidSummaries) {
    // 3 keys of dimension 2: (1, -2), (3, 0), (2, 4)
    const float keys[] = {1, -2, 3, 0, 2, 4};
    float out[4];
    summarize_page(SummaryKind::kMinMax, keys, 3, 2, 2, out);
    EXPECT_EQ(out[0], 3.0f);
    EXPECT_EQ(out[1], 4.0f);
    EXPECT_EQ(out[2], 1.0f);
    EXPECT_EQ(out[3], -2.0f);
    // cuboid, dim 0: centre 2, mean |k - 2| = (1 + 1 + 0) / 3; dim 1: centre 1, (3 + 1 + 3) / 3
    summarize_page(SummaryKind::kCuboid, keys, 3, 2, 2, out);
    EXPECT_FLOAT_EQ(out[0], 2.0f + 2.0f / 3.0f);
    EXPECT_FLOAT_EQ(out[1], 1.0f + 7.0f / 3.0f);
    EXPECT_FLOAT_EQ(out[2], 2.0f - 2.0f / 3.0f);
    EXPECT_FLOAT_EQ(out[3], 1.0f - 7.0f / 3.0f);
}

TEST(Selection, ScoreIsTheUpperBoundFormula) {
    // page 0: U = (3, 1), L = (-1, -4); page 1: U = (0, 2), L = (-2, 1). q = (1, -2):
    // page 0: max(3, -1) + max(-2, 8) = 11; page 1: max(0, -2) + max(-4, -2) = -2
    const float summaries[] = {3, 1, -1, -4, 0, 2, -2, 1};
    const float q[] = {1, -2};
    float scores[2];
    score_pages(q, 1, 2, summaries, 0, 2, scores);
    EXPECT_EQ(scores[0], 11.0f);
    EXPECT_EQ(scores[1], -2.0f);
}

TEST(Selection, GroupAggregation) {
    // two query heads, two pages: head 0 scores (0, ln 3), head 1 scores (2, 0)
    const float scores[] = {0.0f, std::log(3.0f), 2.0f, 0.0f};
    float out[2];
    aggregate_scores(scores, 2, 2, GroupAgg::kMean, out);
    EXPECT_FLOAT_EQ(out[0], 1.0f);
    EXPECT_FLOAT_EQ(out[1], std::log(3.0f) / 2.0f);
    aggregate_scores(scores, 2, 2, GroupAgg::kMax, out);
    EXPECT_FLOAT_EQ(out[0], 2.0f);
    EXPECT_FLOAT_EQ(out[1], std::log(3.0f));
    // softmax per head: head 0 (1/4, 3/4), head 1 (e^2/(e^2+1), 1/(e^2+1)); then the mean
    aggregate_scores(scores, 2, 2, GroupAgg::kSoftmaxMean, out);
    const float e2 = std::exp(2.0f);
    EXPECT_NEAR(out[0], (0.25f + e2 / (e2 + 1)) / 2, 1e-6);
    EXPECT_NEAR(out[1], (0.75f + 1 / (e2 + 1)) / 2, 1e-6);
}

TEST(Selection, TopKBreaksTiesTowardsSmallerPages) {
    const std::vector<float> agg{1.0f, 3.0f, 3.0f, 2.0f};  // pages 5, 6, 7, 8
    EXPECT_EQ(top_k_pages(agg, 5, 2), (std::vector<int32_t>{6, 7}));
    EXPECT_EQ(top_k_pages(agg, 5, 3), (std::vector<int32_t>{6, 7, 8}));
    const std::vector<float> flat{2.0f, 2.0f, 2.0f};
    EXPECT_EQ(top_k_pages(flat, 10, 2), (std::vector<int32_t>{10, 11}));
}

TEST(Selection, EvictionPairsMissingPagesWithEvictedSlotsInOrder) {
    std::vector<RecallJob> jobs;
    // middle slots 2, 3, 4 hold pages 4, 5, 9; selection {4, 6, 9}: page 6 replaces page 5 in slot 3
    plan_head_recall(0, 1, std::vector<int32_t>{4, 6, 9}, std::vector<int32_t>{4, 5, 9}, 2, jobs);
    ASSERT_EQ(jobs.size(), 1u);
    EXPECT_EQ(jobs[0].page, 6);
    EXPECT_EQ(jobs[0].slot, 3);
    EXPECT_EQ(jobs[0].ikv, 1);
    jobs.clear();
    // slots 2, 3, 4 hold 8, 5, 6; selection {3, 7, 8}: missing 3, 7 ascending -> slots 3, 4 ascending
    plan_head_recall(0, 0, std::vector<int32_t>{3, 7, 8}, std::vector<int32_t>{8, 5, 6}, 2, jobs);
    ASSERT_EQ(jobs.size(), 2u);
    EXPECT_EQ(jobs[0].page, 3);
    EXPECT_EQ(jobs[0].slot, 3);
    EXPECT_EQ(jobs[1].page, 7);
    EXPECT_EQ(jobs[1].slot, 4);
    jobs.clear();
    plan_head_recall(0, 0, std::vector<int32_t>{3, 7, 8}, std::vector<int32_t>{7, 8, 3}, 2, jobs);
    EXPECT_TRUE(jobs.empty());  // same set in another slot order: nothing moves
}

TEST(Selection, CorrectionCosine) {
    const float a[] = {1, 0, 0, 1};   // two query heads of dimension 2
    const float same[] = {2, 0, 0, 3};
    const float turned[] = {0, 1, 0, 1};  // head 0 turned by 90 degrees, head 1 unchanged
    const float opposite[] = {-1, 0, 0, -1};
    EXPECT_FLOAT_EQ(group_cosine(a, same, 2, 2), 1.0f);
    EXPECT_FLOAT_EQ(group_cosine(a, turned, 2, 2), 0.5f);
    EXPECT_FLOAT_EQ(group_cosine(a, opposite, 2, 2), -1.0f);
    // at tau = 0.9 the group whose query turned is flagged, the steady one is not
    EXPECT_LT(group_cosine(a, turned, 2, 2), 0.9f);
    EXPECT_GE(group_cosine(a, same, 2, 2), 0.9f);
    const float zero[] = {0, 0, 0, 0};
    EXPECT_FLOAT_EQ(group_cosine(a, zero, 2, 2), 0.0f);  // floored norm product, no NaN
}

}  // namespace
}  // namespace freekv
