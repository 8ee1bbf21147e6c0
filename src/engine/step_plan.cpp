// step_plan.cpp: see step_plan.h.
#include "engine/step_plan.h"

#include <algorithm>

#include "core/error.h"

namespace freekv {

bool mode_selects(const KvModeConfig& mode) {
    return mode.mode == KvMode::kFreekv || mode.mode == KvMode::kArkvale || mode.mode == KvMode::kQuest;
}

bool mode_speculates(const KvModeConfig& mode) { return mode.mode == KvMode::kFreekv && mode.spec_retrieval; }

RowPlan plan_decode_row(const KvBudget& budget, const KvModeConfig& mode, bool dense_only, int32_t seq, int64_t pos,
                        bool forced) {
    FREEKV_CHECK(pos >= 1, "a decode token of sequence {} needs a prompt before it (position {})", seq, pos);
    const int64_t p = dense_only ? mode.page_size : budget.page_size;
    RowPlan r;
    r.seq = seq;
    r.pos = pos;
    const int64_t n_tok = pos + 1, current = (n_tok - 1) / p;
    r.n_pages = current + 1;
    r.fill = n_tok - current * p;
    r.forced = forced;
    if (!dense_only && pos % p == 0) {  // page `done` has just completed
        const int64_t done = pos / p - 1, last = budget.current_slot();
        r.has_boundary = true;
        r.boundary.done = done;
        r.boundary.src_slot = std::min(done, last);
        r.boundary.ring_slot = done >= last ? budget.ring_slot(done) : -1;
        r.boundary.place = done < last && done >= budget.n_sink_page && done < budget.first_ring_slot();
        if (done == last) r.forced = true;  // entering the sparse regime
    }
    r.sparse = !dense_only && budget.is_sparse(r.n_pages);
    r.append_slot = r.sparse ? budget.current_slot() : current;
    r.n_attend = r.sparse ? budget.n_budget_page : r.n_pages;
    r.n_select_pages = r.n_pages;
    if (r.sparse && mode_selects(mode)) {
        if (r.forced || !mode_speculates(mode)) r.select = SelectKind::kSync;
        else if (mode.force_corr_rate) r.select = SelectKind::kForcedRate;
        else if (mode.correction_on()) r.select = SelectKind::kSpeculative;
        else r.select = SelectKind::kSpeculativeNoCorrection;
    }
    return r;
}

}  // namespace freekv
