// kv_budget.cpp: validation and the startup description of the budget layout.
#include "kv/kv_budget.h"

#include <fmt/format.h>

#include "core/error.h"

namespace freekv {

KvBudget KvBudget::make(int64_t page_size, int64_t budget, int64_t sink, int64_t recent, bool streaming) {
    KvBudget b;
    b.page_size = page_size;
    b.budget = budget;
    b.sink = sink;
    b.recent = streaming ? budget - sink : recent;
    if (page_size != 16 && page_size != 32 && page_size != 64)
        FREEKV_FAIL("--kv-page-size {} must be 16, 32 or 64", page_size);
    if (sink < 0 || sink % page_size != 0)
        FREEKV_FAIL("--kv-sink {} must be a non-negative multiple of --kv-page-size {}", sink, page_size);
    if (b.recent < 2 * page_size || b.recent % page_size != 0)
        FREEKV_FAIL("--kv-recent {} must be a multiple of --kv-page-size {} and at least two pages ({})", b.recent,
                    page_size, 2 * page_size);
    if (budget % page_size != 0) FREEKV_FAIL("--kv-budget {} must be a multiple of --kv-page-size {}", budget, page_size);
    b.n_sink_page = sink / page_size;
    b.n_recent_page = b.recent / page_size;
    b.n_budget_page = budget / page_size;
    b.n_select = b.n_budget_page - b.n_sink_page - b.n_recent_page;
    if (b.n_select < (streaming ? 0 : 1))
        FREEKV_FAIL("--kv-budget {} leaves no room for selected pages after --kv-sink {} and --kv-recent {}; it must be "
                    "at least sink + recent + one page ({})", budget, sink, b.recent, sink + b.recent + page_size);
    return b;
}

std::string KvBudget::describe() const {
    return fmt::format("page_size {} | budget {} tok = {} slots | sink {} ({} pages) | recent {} ({} pages) | n_select {}",
                       page_size, budget, n_budget_page, sink, n_sink_page, recent, n_recent_page, n_select);
}

}  // namespace freekv
