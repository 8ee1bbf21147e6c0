// kv_stats.h: the counters every offloading KV mode reports, on either backend (the CPU
// RetrievalKv and the GPU engine fill the same struct, so tools print them the same way).
// Invariants: per-layer vectors have n_layer entries, per-(layer, KV head) ones n_layer * n_head_kv;
// the ratios return 0 (or 1 for mass recall) when nothing was counted.
#pragma once

#include <cstdint>
#include <vector>

#include "transfer/transfer_engine.h"

namespace freekv {

struct KvStats {
    int64_t decode_steps = 0;               // forwards with at least one decode span
    std::vector<int64_t> sparse_pairs;      // [n_layer] (step, seq) pairs tested for correction
    std::vector<int64_t> corrected_pairs;   // [n_layer] of those, with at least one flagged KV head
    std::vector<int64_t> forced_pairs;      // [n_layer] forced-synchronous (step, seq) pairs
    std::vector<int64_t> head_tests, head_flags;  // [n_layer] per KV head
    int64_t sequence_steps = 0;             // (step, seq) pairs decoded
    std::vector<int64_t> recalled_sync;     // [n_layer][n_head_kv] blocks recalled before attention
    std::vector<int64_t> recalled_background;  // [n_layer][n_head_kv] blocks recalled speculatively
    TransferCounters transfer;
    std::vector<float> mass_recall;         // per (sparse step, layer, seq, query head)
    // The same for the best selection of the budget for that query head alone (its heaviest pages):
    // what no page-selecting rule can beat. CPU engine only (the GPU's stays empty).
    std::vector<float> oracle_mass_recall;
    // Critical-path time on the main thread (ms): correction test + corrective selection + sync
    // recall; waiting for the background recall of the previous step; attention.
    double select_ms = 0, recall_wait_ms = 0, attention_ms = 0;
    // GPU only: device time of the recall kernels (gather, or per-copy copies + scatter) on the
    // critical path and in the background, for recall bandwidth inside the decode loop.
    double gather_sync_ms = 0, gather_background_ms = 0;
    // GPU only: host time from a decode step's start until its last launch was issued (it then waits
    // for the device). Far below the step time: the launches hide behind the device's work.
    double host_issue_ms = 0;
    // CPU store bytes per token of context (all layers and KV heads, scales included); 0 for full.
    double store_bytes_per_token = 0;

    /// Adds another run's counters (same model shape; an empty *this takes them as they are).
    void add(const KvStats& other);
    double correction_rate() const;         // over all layers
    double pages_per_step() const;          // recalled blocks per decoded (step, seq)
    double mass_recall_mean() const;
    double oracle_mass_recall_mean() const;  // 1 when nothing was counted
    /// Mean mass recall per layer, for runs that decode one sequence per step (the needle and
    /// perplexity tools): value i of mass_recall belongs to layer (i / n_head) % n_layer. Empty
    /// when nothing was counted or the count is not a whole number of steps.
    std::vector<double> mass_recall_by_layer(int64_t n_layer, int64_t n_head) const;
    double mass_recall_percentile(double p) const;
    /// Correction rate of one layer; blocks recalled per decoded (step, seq) for one layer and head.
    double layer_correction_rate(size_t il) const;
    double layer_head_pages_per_step(size_t il, size_t ikv, size_t n_head_kv) const;
};

}  // namespace freekv
