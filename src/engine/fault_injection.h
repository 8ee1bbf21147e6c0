// fault_injection.h: faults a test plants in a model runner to show that each one costs the request
// it hits and nothing else (issue 18). A planted fault fails at the place a real one would, through
// the same code path after it, with a message that says it was injected.
// Invariants: an empty FaultInjection changes nothing; admissions are counted from 0 in the order the
// runner's add_sequence() is called, over the runner's lifetime.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace freekv {

struct FaultInjection {
    /// Admissions whose KV reservation fails: add_sequence() throws as if the memory for the
    /// sequence could not be had, and keeps no slot.
    std::vector<int64_t> fail_admissions;
    /// Admissions whose first prompt chunk fails as if its device allocation did (on the GPU: the
    /// staging of the prompt's K/V; on the CPU the span is dropped before the forward): the runner
    /// reports that span failed and runs the others of the step.
    std::vector<int64_t> fail_first_chunks;

    bool empty() const { return fail_admissions.empty() && fail_first_chunks.empty(); }
    static bool listed(const std::vector<int64_t>& list, int64_t admission) {
        return std::find(list.begin(), list.end(), admission) != list.end();
    }
};

}  // namespace freekv
