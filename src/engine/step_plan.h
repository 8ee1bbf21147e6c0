// step_plan.h: what one decode token does to its sequence's KV in one step, decided once on the
// host and executed by both backends (the CPU's RetrievalKv and the GPU engine): the regime, where
// its K/V are appended, which slots attention reads, whether a page completed (and where it
// goes), and how the selection runs (design doc 3.2, 3.7, 3.10). A plan is a pure function of
// the sequence's length, its `forced` bit, the budget and the KV mode, so two backends given the
// same inputs plan identically (tests compare them).
// Invariants:
//   - dense (no offload: full mode, or fewer pages than the budget): page j is in slot j, no
//     selection; sparse: attention reads all n_budget_page slots, the token goes to the current slot;
//   - a boundary is planned exactly when the tokens held before this one are a positive multiple
//     of the page size (page `done` = pos / p - 1 completed), never in dense-only mode;
//   - forced is true on the step a sequence enters the sparse regime or after a prompt that left
//     it sparse: that step selects synchronously for every head.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/kv_mode.h"
#include "kv/kv_budget.h"

namespace freekv {

/// How a sparse row selects pages this step. The values are the GPU kernels' row-mode codes.
enum class SelectKind : uint8_t {
    kNone = 0,                     // dense, or a mode that does not select (budget-only, streaming)
    kSync = 1,                     // every head selects with this step's query, before attention
    kSpeculative = 2,              // FreeKV: previous step's selection; heads failing the test re-select
    kForcedRate = 3,               // FreeKV with --force-corr-rate: heads re-select at random
    kSpeculativeNoCorrection = 4,  // FreeKV with correction off: every head keeps the speculative pages
};

/// A page that completed as this token arrived: summarized and offloaded to the CPU store.
struct PlannedBoundary {
    int64_t done = -1;       // the page
    int64_t src_slot = -1;   // the slot it was written in: min(done, current slot)
    int64_t ring_slot = -1;  // sparse: the window-ring slot it moves to; -1 while dense
    bool place = false;      // dense: it is a middle-slot page and becomes a resident candidate
    bool operator==(const PlannedBoundary&) const = default;
};

struct RowPlan {
    int32_t seq = -1;
    int64_t pos = 0;          // the token's position (tokens held before it)
    int64_t n_pages = 0;      // pages held with this token
    bool sparse = false;
    int64_t append_slot = 0;  // the slot its K/V go to, at row fill - 1
    int64_t fill = 0;         // tokens in that slot (and in the last attended slot) with this token
    int64_t n_attend = 0;     // slots attended, 0 .. n_attend - 1
    int64_t n_select_pages = 0;  // pages the selection scores candidates among (= n_pages)
    bool forced = false;
    SelectKind select = SelectKind::kNone;
    bool has_boundary = false;
    PlannedBoundary boundary;
    bool operator==(const RowPlan&) const = default;
};

/// The plan of one decode token of sequence `seq` holding `pos` tokens. dense_only: full mode (no
/// budget, no offload). forced: the sequence's bit before this step (set after a sparse prompt).
RowPlan plan_decode_row(const KvBudget& budget, const KvModeConfig& mode, bool dense_only, int32_t seq, int64_t pos,
                        bool forced);

/// Whether a KV mode selects pages (quest, arkvale, freekv) and whether it speculates (freekv with
/// speculative retrieval on).
bool mode_selects(const KvModeConfig& mode);
bool mode_speculates(const KvModeConfig& mode);

}  // namespace freekv
