// recall_worker.h: the host thread of the `dma` recall (design doc 4.4 and R1): it runs tasks in
// the order they were submitted, each tagged with a layer and a decode step, and after a task
// returns it publishes that layer's ticket (the step) with release semantics. The main thread
// waits for a layer's ticket before it issues a stream wait on an event the task recorded, since
// a CUDA stream wait binds to the latest record issued before it.
// Invariants:
//   - tasks run one at a time, in submission order, on one thread;
//   - ticket(layer) only grows; wait_issued(layer, step) returns once the task of (layer, step)
//     or a later one has returned;
//   - an exception thrown by a task is kept and rethrown by the next wait_issued / drain on the
//     main thread; later tasks are dropped (the engine is unusable after it).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace freekv::gpu {

class RecallWorker {
public:
    explicit RecallWorker(int64_t n_layers);
    ~RecallWorker();  // finishes the queued tasks, then joins
    RecallWorker(const RecallWorker&) = delete;
    RecallWorker& operator=(const RecallWorker&) = delete;

    void submit(int64_t layer, int64_t step, std::function<void()> task);
    /// Blocks until the task of (layer, step) has returned; rethrows a task's exception.
    void wait_issued(int64_t layer, int64_t step);
    /// Blocks until every submitted task has returned; rethrows a task's exception.
    void drain();

private:
    struct Task {
        int64_t layer, step;
        std::function<void()> fn;
    };
    void run();
    void rethrow_locked();

    std::mutex mu_;
    std::condition_variable work_cv_, done_cv_;
    std::deque<Task> queue_;
    std::vector<int64_t> ticket_;
    int64_t busy_ = 0;  // tasks taken off the queue and not yet returned
    bool stop_ = false;
    std::exception_ptr error_;
    std::thread thread_;
};

}  // namespace freekv::gpu
