// scheduler.h: who runs in the next engine step (continuous batching; design of issue 13). Pure
// bookkeeping over request ids: it never touches the model, the KV or a thread.
// Policy:
//   - requests wait in arrival order and are admitted while a batch slot is free (the caller says
//     how many are free: the KV manager's can_allocate);
//   - every running sequence whose prompt is done decodes one token each step;
//   - prompts are prefilled in chunks that end at multiples of prefill_chunk, one chunk per prompt
//     and step (so a sequence's chunks, and with them its numbers, are the same alone or batched),
//     oldest first, within step_tokens tokens per step counting the decode tokens; the first
//     chunk of a step runs even when it overruns that budget (decoders never starve a prompt);
//   - with max_prefilling > 0 at most that many prompts are part-way through their prefill (the
//     GPU engine stages one prompt's K/V at a time); the others wait for their first chunk;
//   - with whole_prompt_prefill (the GPU engine today) a prompt is one chunk and runs in a step of
//     its own; such steps alternate with decode steps, so new arrivals cannot stall running
//     sequences for more than one prefill at a time.
// Invariants: a sequence appears at most once in a plan; chunks of one sequence are planned in
// order and cover its prompt exactly; cancel() of a waiting or running id removes it at once.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

namespace freekv {

struct SchedulerConfig {
    int64_t step_tokens = 2048;    // tokens per step (decode + prefill), >= 1
    int64_t prefill_chunk = 512;   // chunk boundaries of a prompt
    bool whole_prompt_prefill = false;
    int64_t max_prefilling = 0;    // prompts with chunks in flight at once; 0: no limit
};

/// One sequence's part of a step: tokens [pos0, pos0 + n_tok) of its prompt, or one decode token
/// (decode: pos0 = tokens held). emits: the step's logits give this sequence its next token.
struct StepWork {
    int64_t id = 0;
    int64_t pos0 = 0, n_tok = 0;
    bool decode = false, emits = false;
};

class Scheduler {
public:
    explicit Scheduler(SchedulerConfig config);

    /// Queues a request with an n_prompt-token prompt (n_prompt >= 1).
    void enqueue(int64_t id, int64_t n_prompt);
    /// Moves up to n_free_slots waiting requests, oldest first, into the running set; returns them.
    std::vector<int64_t> admit(int64_t n_free_slots);
    /// The next step's work: decode tokens of the running sequences (in admission order), then
    /// prefill chunks. Empty when nothing runs.
    std::vector<StepWork> plan();
    /// Records that the planned work ran (prompts advance, decoders hold one more token).
    void commit(const std::vector<StepWork>& work);
    /// Removes a waiting or running request (finished or cancelled); false if unknown.
    bool remove(int64_t id);

    int64_t n_waiting() const { return static_cast<int64_t>(waiting_.size()); }
    int64_t n_running() const { return static_cast<int64_t>(running_.size()); }

private:
    struct Entry {
        int64_t id = 0, n_prompt = 0, n_tokens = 0;  // n_tokens: held in the KV
    };
    SchedulerConfig config_;
    std::deque<Entry> waiting_;
    std::vector<Entry> running_;
    bool last_was_prefill_ = false;
};

}  // namespace freekv
