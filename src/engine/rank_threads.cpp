// rank_threads.cpp: see rank_threads.h.
#include "engine/rank_threads.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace freekv {

RankThreads::RankThreads(int n) : errors_(static_cast<size_t>(n)) {
    int share = 1;
#ifdef _OPENMP
    share = std::max(1, omp_get_max_threads() / n);
#endif
    for (int r = 0; r < n; ++r) threads_.emplace_back([this, r, share] { loop(r, share); });
}

RankThreads::~RankThreads() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    start_.notify_all();
    for (auto& t : threads_) t.join();
}

std::vector<std::exception_ptr> RankThreads::run(const std::function<void(int)>& job) {
    std::unique_lock lock(mutex_);
    job_ = &job;
    running_ = static_cast<int>(threads_.size());
    std::fill(errors_.begin(), errors_.end(), nullptr);
    ++generation_;
    start_.notify_all();
    done_.wait(lock, [&] { return running_ == 0; });
    job_ = nullptr;
    return errors_;
}

void RankThreads::run_all(const std::function<void(int)>& job, const std::function<void(const std::string&)>& stop_peers,
                          const std::function<void()>& recover) {
    std::atomic<int> first_failed{-1};
    const auto n = static_cast<int>(threads_.size());
    const std::function<void(int)> guarded = [&](int r) {
        try {
            job(r);
        } catch (...) {
            int none = -1;
            if (first_failed.compare_exchange_strong(none, r)) {
                std::string what = "an unknown error";
                try {
                    throw;
                } catch (const std::exception& e) {
                    what = e.what();
                } catch (...) {
                }
                stop_peers(fmt::format("tensor-parallel rank {} of {} failed: {}", r, n, what));
            }
            throw;
        }
    };
    const std::vector<std::exception_ptr> errors = run(guarded);
    if (first_failed.load() < 0) return;
    recover();
    std::rethrow_exception(errors[static_cast<size_t>(first_failed.load())]);
}

void RankThreads::loop(int rank, [[maybe_unused]] int omp_share) {
#ifdef _OPENMP
    omp_set_num_threads(omp_share);
#endif
    uint64_t seen = 0;
    for (;;) {
        const std::function<void(int)>* job = nullptr;
        {
            std::unique_lock lock(mutex_);
            start_.wait(lock, [&] { return stopping_ || generation_ != seen; });
            if (stopping_) return;
            seen = generation_;
            job = job_;
        }
        std::exception_ptr error;
        try {
            (*job)(rank);
        } catch (...) {
            error = std::current_exception();
        }
        std::lock_guard lock(mutex_);
        errors_[static_cast<size_t>(rank)] = std::move(error);  // this thread keeps no reference: the caller frees it
        if (--running_ == 0) done_.notify_one();
    }
}

}  // namespace freekv
