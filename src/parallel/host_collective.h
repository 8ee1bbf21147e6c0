// host_collective.h: the collectives of tensor-parallel ranks that are threads of one process on
// the CPU (the CPU twin of the GPUs' NCCL collectives, and what CI checks the split with): a sum
// over the ranks and a gather of logit columns, through memory all ranks see, between barriers.
// Invariants: a sum adds the ranks' values in rank order (each rank sums its own slice of the
// elements), so every rank gets the same bits whatever the threads' timing; a collective returns
// on no rank before every rank has read what it needs; after fail() every waiting and later call
// throws, until reset() (called when no rank is inside a call).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "model/rank_collective.h"

namespace freekv {

class HostCollective {
public:
    explicit HostCollective(int n_ranks);
    ~HostCollective();
    HostCollective(const HostCollective&) = delete;
    HostCollective& operator=(const HostCollective&) = delete;

    int n_ranks() const { return n_ranks_; }
    /// The collectives as rank `rank` calls them (the reference lives as long as this group).
    RankCollective& rank(int rank);

    /// Wakes every rank waiting in a call, which then throws Error naming `why` (a rank that failed
    /// alone calls it, so that its peers do not wait for it forever); later calls throw too.
    void fail(const std::string& why);
    /// Makes the group usable again after fail(); only while no rank is inside a call.
    void reset();

private:
    class Member;
    // Blocks until all ranks arrived (or throws once the group failed).
    void arrive();

    int n_ranks_;
    std::vector<std::unique_ptr<Member>> members_;
    std::mutex mutex_;
    std::condition_variable all_in_;
    int arrived_ = 0;
    uint64_t generation_ = 0;
    bool failed_ = false;
    std::string why_;
    // What the ranks posted for the collective in progress, and the sum they build.
    std::vector<const float*> posted_;
    std::vector<std::pair<int64_t, int64_t>> col_ranges_;  // gather_columns: each rank's (first column, count)
    std::vector<float> sum_;
};

}  // namespace freekv
