// recall_worker.cpp: see recall_worker.h.
#include "gpu/recall_worker.h"

#include <limits>

namespace freekv::gpu {

RecallWorker::RecallWorker(int64_t n_layers)
    : ticket_(static_cast<size_t>(n_layers), std::numeric_limits<int64_t>::min()), thread_([this] { run(); }) {}

RecallWorker::~RecallWorker() {
    {
        std::lock_guard lock(mu_);
        stop_ = true;
    }
    work_cv_.notify_all();
    thread_.join();
}

void RecallWorker::submit(int64_t layer, int64_t step, std::function<void()> task) {
    {
        std::lock_guard lock(mu_);
        rethrow_locked();
        queue_.push_back({layer, step, std::move(task)});
    }
    work_cv_.notify_one();
}

void RecallWorker::wait_issued(int64_t layer, int64_t step) {
    std::unique_lock lock(mu_);
    done_cv_.wait(lock, [&] { return error_ != nullptr || ticket_[static_cast<size_t>(layer)] >= step; });
    rethrow_locked();
}

void RecallWorker::drain() {
    std::unique_lock lock(mu_);
    done_cv_.wait(lock, [&] { return error_ != nullptr || (queue_.empty() && busy_ == 0); });
    rethrow_locked();
}

void RecallWorker::rethrow_locked() {
    if (error_ != nullptr) std::rethrow_exception(error_);
}

void RecallWorker::run() {
    std::unique_lock lock(mu_);
    for (;;) {
        work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stop_ and nothing left
        Task task = std::move(queue_.front());
        queue_.pop_front();
        ++busy_;
        lock.unlock();
        std::exception_ptr err;
        try {
            if (error_ == nullptr) task.fn();  // error_ is only written below, under the lock
        } catch (...) {
            err = std::current_exception();
        }
        lock.lock();
        --busy_;
        if (err != nullptr && error_ == nullptr) error_ = err;
        auto& t = ticket_[static_cast<size_t>(task.layer)];
        if (task.step > t) t = task.step;
        done_cv_.notify_all();
    }
}

}  // namespace freekv::gpu
