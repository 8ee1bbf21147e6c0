// test_step_plan.cpp: the per-step decode plan (engine/step_plan.h) against page arithmetic worked
// out by hand for a small budget (p 16, B 128: slots 0-1 sink, 2-5 middle, 6 window ring, 7 current):
// boundaries exactly at page completion with the slot each page leaves and goes to, the step that
// enters the sparse regime forced, the selection kind per mode, dense-only mode without boundaries.
// That the CPU and GPU backends execute the same plans is test_cuda_engine's (PlansOfBothBackends...).
#include <gtest/gtest.h>

#include <cmath>

#include "engine/step_plan.h"

namespace freekv {
namespace {

KvModeConfig small_mode(KvMode kind) {
    KvModeConfig c;
    c.mode = kind;
    c.page_size = 16;
    c.budget = 128;
    c.sink = 32;
    c.recent = 32;
    return c;
}

TEST(StepPlan, BoundariesRegimesAndSlotsFollowThePageArithmetic) {
    const KvModeConfig mode = small_mode(KvMode::kFreekv);
    const KvBudget b = mode.make_budget();
    ASSERT_EQ(b.n_budget_page, 8);
    ASSERT_EQ(b.current_slot(), 7);
    ASSERT_EQ(b.first_ring_slot(), 6);

    // Mid-page, dense: no boundary, page j in slot j.
    RowPlan r = plan_decode_row(b, mode, false, 3, 20, false);
    EXPECT_EQ(r.seq, 3);
    EXPECT_FALSE(r.has_boundary);
    EXPECT_FALSE(r.sparse);
    EXPECT_EQ(r.n_pages, 2);
    EXPECT_EQ(r.append_slot, 1);
    EXPECT_EQ(r.fill, 5);
    EXPECT_EQ(r.n_attend, 2);
    EXPECT_EQ(r.select, SelectKind::kNone);

    // Page 0 (a sink page) completes: offloaded from slot 0, not a candidate.
    r = plan_decode_row(b, mode, false, 0, 16, false);
    ASSERT_TRUE(r.has_boundary);
    EXPECT_EQ(r.boundary, (PlannedBoundary{0, 0, -1, false}));
    EXPECT_EQ(r.append_slot, 1);
    EXPECT_EQ(r.fill, 1);

    // Page 2 is a middle page: it becomes a resident candidate in its own slot.
    r = plan_decode_row(b, mode, false, 0, 48, false);
    EXPECT_EQ(r.boundary, (PlannedBoundary{2, 2, -1, true}));

    // Page 6 (the ring slot's page) completes while still dense: not placed.
    r = plan_decode_row(b, mode, false, 0, 112, false);
    EXPECT_EQ(r.boundary, (PlannedBoundary{6, 6, -1, false}));
    EXPECT_FALSE(r.sparse);
    EXPECT_EQ(r.n_attend, 8);

    // Page 7 completes in the current slot: the ninth page makes the sequence sparse, and this
    // step is forced (every head selects synchronously); page 7 moves to ring slot 6.
    r = plan_decode_row(b, mode, false, 0, 128, false);
    EXPECT_EQ(r.boundary, (PlannedBoundary{7, 7, 6, false}));
    EXPECT_TRUE(r.sparse);
    EXPECT_TRUE(r.forced);
    EXPECT_EQ(r.select, SelectKind::kSync);
    EXPECT_EQ(r.append_slot, 7);
    EXPECT_EQ(r.fill, 1);
    EXPECT_EQ(r.n_attend, 8);
    EXPECT_EQ(r.n_select_pages, 9);

    // The next steps speculate; the next boundary moves page 8 from the current slot to the ring.
    r = plan_decode_row(b, mode, false, 0, 129, false);
    EXPECT_FALSE(r.has_boundary);
    EXPECT_EQ(r.select, SelectKind::kSpeculative);
    EXPECT_EQ(r.fill, 2);
    r = plan_decode_row(b, mode, false, 0, 144, false);
    EXPECT_EQ(r.boundary, (PlannedBoundary{8, 7, 6, false}));
    EXPECT_EQ(r.select, SelectKind::kSpeculative);

    // A sequence whose prompt left it sparse starts forced.
    r = plan_decode_row(b, mode, false, 0, 200, true);
    EXPECT_EQ(r.select, SelectKind::kSync);
}

TEST(StepPlan, TheSelectionKindFollowsTheMode) {
    const auto kind_of = [](KvModeConfig m) {
        return plan_decode_row(m.make_budget(), m, false, 0, 200, false).select;
    };
    EXPECT_EQ(kind_of(small_mode(KvMode::kFreekv)), SelectKind::kSpeculative);
    EXPECT_EQ(kind_of(small_mode(KvMode::kArkvale)), SelectKind::kSync);
    EXPECT_EQ(kind_of(small_mode(KvMode::kQuest)), SelectKind::kSync);
    EXPECT_EQ(kind_of(small_mode(KvMode::kBudgetOnly)), SelectKind::kNone);
    KvModeConfig m = small_mode(KvMode::kFreekv);
    m.spec_retrieval = false;
    EXPECT_EQ(kind_of(m), SelectKind::kSync);
    m = small_mode(KvMode::kFreekv);
    m.correction_threshold = std::nanf("");
    EXPECT_EQ(kind_of(m), SelectKind::kSpeculativeNoCorrection);
    m.force_corr_rate = 0.5f;
    EXPECT_EQ(kind_of(m), SelectKind::kForcedRate);
}

TEST(StepPlan, DenseOnlyModeNeverOffloads) {
    KvModeConfig m = full_kv_mode();
    m.page_size = 16;
    for (int64_t pos : {16, 128, 1000, 4096}) {
        const RowPlan r = plan_decode_row(KvBudget{}, m, true, 1, pos, false);
        EXPECT_FALSE(r.has_boundary) << pos;
        EXPECT_FALSE(r.sparse) << pos;
        EXPECT_EQ(r.n_attend, pos / 16 + 1) << pos;
        EXPECT_EQ(r.append_slot, pos / 16) << pos;
        EXPECT_EQ(r.select, SelectKind::kNone) << pos;
    }
}

}  // namespace
}  // namespace freekv
