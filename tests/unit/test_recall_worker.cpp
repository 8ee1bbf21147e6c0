// test_recall_worker.cpp: the dma recall's host thread (src/gpu/recall_worker.h): tasks run in
// submission order on one thread; a layer's ticket is published only after its task returned, so
// wait_issued never returns early (the race it exists to prevent); a task's exception reaches the
// main thread; drain waits for everything; the destructor finishes queued tasks. Runs under TSan
// in CI.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

#include "gpu/recall_worker.h"

namespace freekv::gpu {
namespace {

TEST(RecallWorker, RunsTasksInOrderAndPublishesTicketsAfterThem) {
    RecallWorker w(4);
    std::vector<int> order;  // written by the worker only; read after wait_issued/drain
    std::atomic<int> done_of_layer2{-1};
    for (int step = 0; step < 3; ++step)
        for (int layer = 0; layer < 4; ++layer)
            w.submit(layer, step, [&order, &done_of_layer2, layer, step] {
                // Slow tasks: a ticket published before the task returned would be seen below.
                std::this_thread::sleep_for(std::chrono::microseconds(200));
                order.push_back(step * 4 + layer);
                if (layer == 2) done_of_layer2.store(step, std::memory_order_relaxed);
            });
    for (int step = 0; step < 3; ++step) {
        w.wait_issued(2, step);
        EXPECT_GE(done_of_layer2.load(std::memory_order_relaxed), step) << "ticket published before the task returned";
    }
    w.drain();
    ASSERT_EQ(order.size(), 12u);
    for (int i = 0; i < 12; ++i) EXPECT_EQ(order[static_cast<size_t>(i)], i) << "tasks ran out of order";
}

TEST(RecallWorker, WaitBlocksUntilTheTaskOfThatStep) {
    RecallWorker w(1);
    std::atomic<bool> release{false}, ran{false};
    w.submit(0, 7, [&] {
        while (!release.load()) std::this_thread::sleep_for(std::chrono::microseconds(50));
        ran.store(true);
    });
    std::atomic<bool> returned{false};
    std::thread waiter([&] {
        w.wait_issued(0, 7);
        returned.store(true);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_FALSE(returned.load()) << "wait_issued returned before its task ran";
    release.store(true);
    waiter.join();
    EXPECT_TRUE(ran.load());
    w.wait_issued(0, 3);  // an earlier step: already covered by the ticket of step 7
}

TEST(RecallWorker, ATaskErrorReachesTheMainThread) {
    RecallWorker w(2);
    std::atomic<int> later_ran{0};
    std::atomic<bool> both_submitted{false};
    // The failing task waits until the second one is queued: otherwise the second submit may
    // already see the error and throw (correct behaviour, but then this test would race).
    w.submit(0, 1, [&] {
        while (!both_submitted.load()) std::this_thread::sleep_for(std::chrono::microseconds(50));
        throw std::runtime_error("copy failed");
    });
    w.submit(1, 1, [&] { later_ran.fetch_add(1); });
    both_submitted.store(true);
    EXPECT_THROW(w.wait_issued(1, 1), std::runtime_error);
    EXPECT_THROW(w.drain(), std::runtime_error);
    EXPECT_THROW(w.submit(0, 2, [] {}), std::runtime_error);
    EXPECT_EQ(later_ran.load(), 0) << "tasks after a failed one must not run";
}

TEST(RecallWorker, DestructorFinishesQueuedTasks) {
    std::atomic<int> ran{0};
    {
        RecallWorker w(1);
        for (int i = 0; i < 50; ++i) w.submit(0, i, [&] { ran.fetch_add(1); });
    }
    EXPECT_EQ(ran.load(), 50);
}

}  // namespace
}  // namespace freekv::gpu
