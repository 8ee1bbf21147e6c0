// recall_plan.h: the contract between retrieval (which pages) and transfer (how they move): a list
// of recall jobs for one layer. Built by selection, executed by a TransferEngine, never reordered.
// Invariant: within one plan every (sequence, KV head, slot) appears at most once and every slot
// is a middle slot.
#pragma once

#include <cstdint>
#include <vector>

namespace freekv {

struct RecallJob {
    int32_t seq = 0;    // batch index in the KvManager
    int32_t ikv = 0;    // KV head
    int32_t page = 0;   // logical page to bring in
    int32_t slot = 0;   // middle slot it goes to
};

struct RecallPlan {
    int64_t il = 0;
    std::vector<RecallJob> jobs;
};

}  // namespace freekv
