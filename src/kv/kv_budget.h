// kv_budget.h: the page arithmetic of the GPU budget (design doc 3.2): page size p, budget B,
// sink S, recent window W, and the derived slot layout of one (layer, sequence).
// Invariants after make(): p divides S, W and B; n_recent_page >= 2; n_select >= 1 (0 in streaming
// mode); n_budget_page = n_sink_page + n_select + n_recent_page.
// Slots: [0, ns) sink | [ns, ns + k) middle (selected) | [ns + k, n_slots - 1) window ring |
// n_slots - 1 current page. In the dense regime page j is in slot j.
#pragma once

#include <cstdint>
#include <string>

namespace freekv {

struct KvBudget {
    int64_t page_size = 32;       // p
    int64_t budget = 2048;        // B: tokens attended per (layer, KV head) in the sparse regime
    int64_t sink = 512;           // S
    int64_t recent = 512;         // W, current page included
    int64_t n_sink_page = 0;      // ns
    int64_t n_recent_page = 0;    // nw
    int64_t n_select = 0;         // k
    int64_t n_budget_page = 0;    // n_slots

    /// Validates and derives; errors name the flag to change. streaming: k = 0, W = B - S.
    static KvBudget make(int64_t page_size, int64_t budget, int64_t sink, int64_t recent, bool streaming = false);

    int64_t current_slot() const { return n_budget_page - 1; }
    int64_t first_ring_slot() const { return n_sink_page + n_select; }
    /// Ring slot of complete window page j (sparse regime); equals j for j < n_budget_page - 1.
    int64_t ring_slot(int64_t page) const {
        const int64_t ring = n_recent_page - 1;
        return first_ring_slot() + ((page - first_ring_slot()) % ring + ring) % ring;
    }
    bool is_sparse(int64_t n_pages) const { return n_pages > n_budget_page; }
    /// Candidates [ns, n_pages - nw) (empty in the dense regime).
    int64_t first_candidate() const { return n_sink_page; }
    int64_t end_candidate(int64_t n_pages) const { return n_pages - n_recent_page; }
    std::string describe() const;
};

}  // namespace freekv
