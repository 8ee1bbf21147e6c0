// test_scheduler.cpp: the continuous-batching policy (engine/scheduler.h) on request ids alone:
// chunk boundaries at multiples of prefill_chunk, the step token budget, admission order, the
// GPU's whole-prompt steps alternating with decode steps, and removal at any point.
#include <gtest/gtest.h>

#include <map>

#include "core/error.h"
#include "engine/scheduler.h"

namespace freekv {
namespace {

// Runs plan + commit until nothing runs, checking the invariants of scheduler.h on every step;
// returns the steps. Admits up to `slots` at a time.
std::vector<std::vector<StepWork>> drain(Scheduler& s, int64_t slots, const std::map<int64_t, int64_t>& prompts,
                                         int64_t chunk, int64_t n_decode) {
    std::vector<std::vector<StepWork>> steps;
    std::map<int64_t, int64_t> held, decoded;
    std::map<int64_t, bool> admitted;
    for (int guard = 0; guard < 10000; ++guard) {
        const int64_t running = s.n_running();
        for (int64_t id : s.admit(slots - running)) admitted[id] = true;
        std::vector<StepWork> plan = s.plan();
        if (plan.empty()) break;
        std::map<int64_t, int> seen;
        for (const StepWork& w : plan) {
            EXPECT_TRUE(admitted[w.id]) << "request " << w.id << " planned before admission";
            EXPECT_EQ(++seen[w.id], 1) << "request " << w.id << " twice in one step";
            EXPECT_EQ(w.pos0, held[w.id]) << "request " << w.id << " does not continue where it stopped";
            const int64_t n_prompt = prompts.at(w.id);
            if (!w.decode) {
                const int64_t end = w.pos0 + w.n_tok;
                EXPECT_TRUE(end == n_prompt || end % chunk == 0) << "chunk of " << w.id << " ends at " << end;
                EXPECT_LE(end, n_prompt);
                EXPECT_EQ(w.emits, end == n_prompt);
            } else {
                EXPECT_EQ(w.n_tok, 1);
                EXPECT_GE(w.pos0, n_prompt);
                EXPECT_TRUE(w.emits);
            }
        }
        s.commit(plan);
        for (const StepWork& w : plan) {
            held[w.id] += w.n_tok;
            if (w.decode && ++decoded[w.id] == n_decode) s.remove(w.id);
        }
        steps.push_back(std::move(plan));
    }
    for (const auto& [id, n] : prompts) EXPECT_EQ(held[id], n + n_decode) << "request " << id;
    return steps;
}

TEST(Scheduler, PromptChunksEndAtMultiplesOfTheChunkWithinTheStepBudget) {
    Scheduler s({600, 512, false});
    s.enqueue(1, 1100);
    const auto steps = drain(s, 4, {{1, 1100}}, 512, 2);
    ASSERT_GE(steps.size(), 3u);
    EXPECT_EQ(steps[0].size(), 1u);
    EXPECT_EQ(steps[0][0].n_tok, 512);
    EXPECT_EQ(steps[1][0].n_tok, 512);
    EXPECT_EQ(steps[2][0].n_tok, 76);
    EXPECT_TRUE(steps[2][0].emits);
}

TEST(Scheduler, DecodersRunEveryStepBesidePrefillChunks) {
    Scheduler s({1024, 512, false});
    s.enqueue(1, 700);
    s.enqueue(2, 300);
    const auto steps = drain(s, 4, {{1, 700}, {2, 300}}, 512, 5);
    // Step 0: 512 of request 1 and all 300 of request 2 (812 <= 1024).
    ASSERT_EQ(steps[0].size(), 2u);
    EXPECT_EQ(steps[0][1].id, 2);
    EXPECT_EQ(steps[0][1].n_tok, 300);
    // Step 1: request 2 decodes while request 1 finishes its prompt.
    ASSERT_EQ(steps[1].size(), 2u);
    EXPECT_TRUE(steps[1][0].decode);
    EXPECT_EQ(steps[1][0].id, 2);
    EXPECT_EQ(steps[1][1].n_tok, 188);
}

TEST(Scheduler, AChunkThatDoesNotFitWaitsInsteadOfBeingSplitDifferently) {
    Scheduler s({520, 512, false});
    for (int64_t id = 1; id <= 3; ++id) s.enqueue(id, 512);
    const auto steps = drain(s, 3, {{1, 512}, {2, 512}, {3, 512}}, 512, 3);
    // Each 512-token prompt runs alone or beside decode tokens; never cut at 8 tokens.
    for (const auto& step : steps)
        for (const StepWork& w : step)
            if (!w.decode) {
                EXPECT_EQ(w.n_tok, 512);
            }
}

TEST(Scheduler, DecodersNeverStarveAPromptWhoseChunkExceedsTheBudgetLeft) {
    // 8 decoders leave 504 of a 512-token budget: the 512-token chunk still runs every step.
    Scheduler s({512, 512, false});
    for (int64_t id = 1; id <= 8; ++id) s.enqueue(id, 4);
    s.admit(8);
    for (int i = 0; i < 2; ++i) {
        auto plan = s.plan();
        s.commit(plan);
    }
    s.enqueue(9, 1500);
    s.admit(1);
    int64_t prefilled = 0;
    for (int i = 0; i < 3; ++i) {
        const auto plan = s.plan();
        ASSERT_EQ(plan.size(), 9u) << "step " << i << ": 8 decode tokens and one chunk";
        EXPECT_FALSE(plan.back().decode);
        prefilled += plan.back().n_tok;
        s.commit(plan);
    }
    EXPECT_EQ(prefilled, 1500);
}

TEST(Scheduler, AtMostMaxPrefillingPromptsArePartWayThroughTheirPrefill) {
    SchedulerConfig c{4096, 256, false};
    c.max_prefilling = 1;
    Scheduler s(c);
    s.enqueue(1, 600);
    s.enqueue(2, 300);
    s.enqueue(3, 10);
    const auto steps = drain(s, 3, {{1, 600}, {2, 300}, {3, 10}}, 256, 2);
    // Request 1's three chunks come first, one per step; then 2's, then 3's.
    std::vector<int64_t> order;
    for (const auto& step : steps) {
        int n_prefill = 0;
        for (const StepWork& w : step)
            if (!w.decode) {
                ++n_prefill;
                if (order.empty() || order.back() != w.id) order.push_back(w.id);
            }
        EXPECT_LE(n_prefill, 1);
    }
    EXPECT_EQ(order, (std::vector<int64_t>{1, 2, 3}));
}

TEST(Scheduler, AdmitsInArrivalOrderUpToTheFreeSlots) {
    Scheduler s({2048, 512, false});
    for (int64_t id = 10; id < 15; ++id) s.enqueue(id, 4);
    EXPECT_EQ(s.admit(2), (std::vector<int64_t>{10, 11}));
    EXPECT_EQ(s.n_waiting(), 3);
    EXPECT_TRUE(s.remove(12));  // a waiting request leaves the queue
    EXPECT_EQ(s.admit(5), (std::vector<int64_t>{13, 14}));
    EXPECT_FALSE(s.remove(12));
    EXPECT_THROW(s.enqueue(99, 0), Error);
}

TEST(Scheduler, WholePromptStepsAlternateWithDecodeSteps) {
    Scheduler s({2048, 512, true});
    for (int64_t id = 1; id <= 3; ++id) s.enqueue(id, 100 * id);
    const auto steps = drain(s, 3, {{1, 100}, {2, 200}, {3, 300}}, 1, 4);
    bool last_prefill = false;
    for (const auto& step : steps) {
        const bool prefill = !step[0].decode;
        if (prefill) {
            EXPECT_EQ(step.size(), 1u) << "a whole-prompt prefill runs alone";
            EXPECT_EQ(step[0].pos0, 0);
            EXPECT_TRUE(step[0].emits);
        }
        for (const StepWork& w : step) EXPECT_EQ(w.decode, !prefill) << "prefill and decode mixed in one step";
        EXPECT_FALSE(prefill && last_prefill) << "two prefill steps in a row while sequences wait to decode";
        last_prefill = prefill;
    }
}

TEST(Scheduler, RemovingARunningRequestMidPromptDropsItsChunks) {
    Scheduler s({64, 32, false});
    s.enqueue(1, 100);
    s.enqueue(2, 10);
    s.admit(2);
    auto plan = s.plan();
    ASSERT_EQ(plan.size(), 2u);
    s.commit(plan);
    EXPECT_TRUE(s.remove(1));
    plan = s.plan();
    ASSERT_EQ(plan.size(), 1u);
    EXPECT_EQ(plan[0].id, 2);
    EXPECT_TRUE(plan[0].decode);
    StepWork stale{1, 32, 32, false, false};
    EXPECT_THROW(s.commit({stale}), Error);  // work of a removed request
}

}  // namespace
}  // namespace freekv
