// host_collective.cpp: see host_collective.h.
#include "parallel/host_collective.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace freekv {

class HostCollective::Member final : public RankCollective {
public:
    Member(HostCollective& group, int rank) : group_(group), rank_(rank) {}

    void all_reduce_sum(float* data, int64_t n) override {
        HostCollective& g = group_;
        const int64_t n_ranks = g.n_ranks_;
        if (rank_ == 0 && static_cast<int64_t>(g.sum_.size()) < n) {
            // Rank 0 alone resizes, before the barrier that lets any rank use the buffer.
            g.sum_.resize(static_cast<size_t>(n));
        }
        g.posted_[static_cast<size_t>(rank_)] = data;
        g.arrive();  // every rank's data posted; sum_ sized
        const int64_t begin = n * rank_ / n_ranks, end = n * (rank_ + 1) / n_ranks;
        for (int64_t i = begin; i < end; ++i) {
            float s = g.posted_[0][i];
            for (int64_t r = 1; r < n_ranks; ++r) s += g.posted_[static_cast<size_t>(r)][i];
            g.sum_[static_cast<size_t>(i)] = s;
        }
        g.arrive();  // the whole sum built; no rank reads its data any more
        if (n > 0) std::memcpy(data, g.sum_.data(), static_cast<size_t>(n) * sizeof(float));
        g.arrive();  // every rank copied it out: sum_ and posted_ are free for the next call
    }

    void gather_columns(const float* part, int64_t rows, int64_t col0, int64_t cols, float* out, int64_t total_cols) override {
        HostCollective& g = group_;
        FREEKV_CHECK(col0 >= 0 && cols >= 0 && col0 + cols <= total_cols, "gather_columns: columns [{}, {}) outside {}", col0,
                     col0 + cols, total_cols);
        g.posted_[static_cast<size_t>(rank_)] = part;
        g.col_ranges_[static_cast<size_t>(rank_)] = {col0, cols};
        g.arrive();
        for (int r = 0; r < g.n_ranks_; ++r) {
            const auto [c0, n] = g.col_ranges_[static_cast<size_t>(r)];
            const float* src = g.posted_[static_cast<size_t>(r)];
            if (n > 0)
                for (int64_t row = 0; row < rows; ++row)
                    std::memcpy(out + row * total_cols + c0, src + row * n, static_cast<size_t>(n) * sizeof(float));
        }
        g.arrive();  // no rank reads another's part any more
    }

private:
    HostCollective& group_;
    int rank_;
};

HostCollective::HostCollective(int n_ranks) : n_ranks_(n_ranks), posted_(static_cast<size_t>(n_ranks), nullptr) {
    FREEKV_CHECK(n_ranks >= 1, "a collective needs at least one rank, got {}", n_ranks);
    col_ranges_.resize(static_cast<size_t>(n_ranks));
    for (int r = 0; r < n_ranks; ++r) members_.push_back(std::make_unique<Member>(*this, r));
}

HostCollective::~HostCollective() = default;

RankCollective& HostCollective::rank(int rank) {
    FREEKV_CHECK(rank >= 0 && rank < n_ranks_, "rank {} of a group of {}", rank, n_ranks_);
    return *members_[static_cast<size_t>(rank)];
}

void HostCollective::arrive() {
    std::unique_lock lock(mutex_);
    if (failed_) FREEKV_FAIL("{}", why_);
    const uint64_t generation = generation_;
    if (++arrived_ == n_ranks_) {
        arrived_ = 0;
        ++generation_;
        all_in_.notify_all();
        return;
    }
    all_in_.wait(lock, [&] { return generation_ != generation || failed_; });
    if (generation_ == generation) FREEKV_FAIL("{}", why_);  // failed before every rank arrived
}

void HostCollective::fail(const std::string& why) {
    {
        std::lock_guard lock(mutex_);
        if (!failed_) why_ = why;
        failed_ = true;
    }
    all_in_.notify_all();
}

void HostCollective::reset() {
    std::lock_guard lock(mutex_);
    failed_ = false;
    why_.clear();
    arrived_ = 0;
}

}  // namespace freekv
