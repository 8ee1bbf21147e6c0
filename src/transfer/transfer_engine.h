// transfer_engine.h: how recalled pages move from the CPU store into budget slots. Retrieval
// decides which pages (a RecallPlan); the transfer engine runs the plan, synchronously on the
// caller's thread or in the background, and reports completion through per-layer tickets.
// Invariants:
//   - background work of one layer runs in submission order; wait(il, step) returns only after
//     every byte of the plan submitted for (il, step) is in its slots;
//   - a plan function runs on the recall worker after everything its caller wrote before
//     submitting (query, maps, attention) is visible to it (the submit is the release point).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "kv/recall_plan.h"

namespace freekv {

class KvManager;

struct TransferCounters {
    int64_t sync_jobs = 0, background_jobs = 0;
    int64_t sync_bytes = 0, background_bytes = 0;
};

class TransferEngine {
public:
    virtual ~TransferEngine() = default;
    /// Queues background work for (il, step): plan_fn runs on the worker (selection), then its
    /// jobs are copied. Steps of one layer must be submitted in increasing order.
    virtual void submit(int64_t il, int64_t step, std::function<RecallPlan()> plan_fn) = 0;
    /// Blocks until the work submitted for (il, step) has landed; returns at once if none was.
    virtual void wait(int64_t il, int64_t step) = 0;
    /// Blocks until every submitted task has landed.
    virtual void wait_all() = 0;
    /// Copies a plan's blocks now, on the calling thread (corrective and ArkVale-style recall).
    virtual void recall_sync(const RecallPlan& plan) = 0;
    virtual TransferCounters counters() const = 0;
};

/// The CPU backend's engine: one recall worker thread copying blocks chunk by chunk into two
/// staging buffers used alternately, and one scatter thread moving each filled buffer into the
/// slots (HND -> NHD), the split the CUDA DMA path has. FREEKV_TRANSFER_DELAY_US=N injects random
/// sleeps of up to N us in both threads (race tests).
std::unique_ptr<TransferEngine> make_cpu_transfer_engine(KvManager& kv, int64_t n_layer, int64_t chunk_blocks = 16);

}  // namespace freekv
