// rank_threads.h: one thread per tensor-parallel rank, kept for a runner's life, that runs a job on
// every rank at once (each rank's collectives wait for the others, so the ranks must run together).
// Each thread keeps an equal share of the OpenMP threads (a rank's OpenMP team lives on its thread).
// Invariants: run() returns only when every rank's job has returned, with each rank's exception.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace freekv {

class RankThreads {
public:
    explicit RankThreads(int n);
    ~RankThreads();
    RankThreads(const RankThreads&) = delete;
    RankThreads& operator=(const RankThreads&) = delete;

    /// Runs job(rank) on every rank's thread at once; returns when all are done, with each rank's
    /// exception (null where it succeeded).
    std::vector<std::exception_ptr> run(const std::function<void(int)>& job);
    /// Runs job(rank) on every rank; the first rank that throws calls stop_peers with "tensor-parallel
    /// rank R of N failed: WHAT" (so that peers waiting on it in a collective return), and once all
    /// have returned, recover() runs and that first error is rethrown.
    void run_all(const std::function<void(int)>& job, const std::function<void(const std::string&)>& stop_peers,
                 const std::function<void()>& recover);

private:
    void loop(int rank, int omp_share);

    std::vector<std::thread> threads_;
    std::mutex mutex_;
    std::condition_variable start_, done_;
    const std::function<void(int)>* job_ = nullptr;
    uint64_t generation_ = 0;
    int running_ = 0;
    bool stopping_ = false;
    std::vector<std::exception_ptr> errors_;
};

}  // namespace freekv
