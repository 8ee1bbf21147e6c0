// scheduler.cpp: see scheduler.h.
#include "engine/scheduler.h"

#include <algorithm>

#include "core/error.h"

namespace freekv {

Scheduler::Scheduler(SchedulerConfig config) : config_(config) {
    FREEKV_CHECK(config_.step_tokens >= 1 && config_.prefill_chunk >= 1, "scheduler: step_tokens {} and prefill_chunk {} must be >= 1",
                 config_.step_tokens, config_.prefill_chunk);
}

void Scheduler::enqueue(int64_t id, int64_t n_prompt) {
    FREEKV_CHECK(n_prompt >= 1, "scheduler: request {} has an empty prompt", id);
    waiting_.push_back({id, n_prompt, 0});
}

std::vector<int64_t> Scheduler::admit(int64_t n_free_slots) {
    std::vector<int64_t> admitted;
    while (n_free_slots-- > 0 && !waiting_.empty()) {
        running_.push_back(waiting_.front());
        admitted.push_back(waiting_.front().id);
        waiting_.pop_front();
    }
    return admitted;
}

std::vector<StepWork> Scheduler::plan() {
    std::vector<StepWork> decode, prefill;
    for (const Entry& e : running_)
        if (e.n_tokens >= e.n_prompt) decode.push_back({e.id, e.n_tokens, 1, true, true});
    if (config_.whole_prompt_prefill) {
        // A prefill step of its own, unless the last step was one and decoders are waiting.
        if (!(last_was_prefill_ && !decode.empty()))
            for (const Entry& e : running_)
                if (e.n_tokens < e.n_prompt) return {{e.id, 0, e.n_prompt, false, true}};
        return decode;
    }
    int64_t budget = config_.step_tokens - static_cast<int64_t>(decode.size());
    int64_t prefilling = 0;  // prompts part-way through (or starting) their prefill, oldest first
    for (const Entry& e : running_) {
        if (e.n_tokens >= e.n_prompt) continue;
        if (config_.max_prefilling > 0 && prefilling++ >= config_.max_prefilling) break;
        if (!prefill.empty() && budget <= 0) break;
        // A chunk ends at the next multiple of prefill_chunk (or the prompt's end); a chunk that does
        // not fit the remaining budget waits for the next step rather than being split differently,
        // unless it is the step's first (then it runs beside the decoders, over the budget).
        const int64_t end = std::min(e.n_prompt, (e.n_tokens / config_.prefill_chunk + 1) * config_.prefill_chunk);
        const int64_t n = end - e.n_tokens;
        if (n > budget && !prefill.empty()) break;
        prefill.push_back({e.id, e.n_tokens, n, false, end == e.n_prompt});
        budget -= n;
    }
    decode.insert(decode.end(), prefill.begin(), prefill.end());
    return decode;
}

void Scheduler::commit(const std::vector<StepWork>& work) {
    bool any_prefill = false;
    for (const StepWork& w : work) {
        auto it = std::find_if(running_.begin(), running_.end(), [&](const Entry& e) { return e.id == w.id; });
        FREEKV_CHECK(it != running_.end(), "scheduler: committed work of request {}, which is not running", w.id);
        FREEKV_CHECK(it->n_tokens == w.pos0, "scheduler: request {} holds {} tokens, the work starts at {}", w.id, it->n_tokens, w.pos0);
        it->n_tokens += w.n_tok;
        any_prefill = any_prefill || !w.decode;
    }
    last_was_prefill_ = any_prefill;
}

bool Scheduler::remove(int64_t id) {
    auto match = [id](const Entry& e) { return e.id == id; };
    if (auto it = std::find_if(waiting_.begin(), waiting_.end(), match); it != waiting_.end()) {
        waiting_.erase(it);
        return true;
    }
    if (auto it = std::find_if(running_.begin(), running_.end(), match); it != running_.end()) {
        running_.erase(it);
        return true;
    }
    return false;
}

}  // namespace freekv
