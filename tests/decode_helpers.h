// decode_helpers.h: what the engine-level tests that compare two ways of running a model share: a
// KV mode with a small budget (prompts over 128 tokens run sparse), greedy decoding of two batched
// sequences through a ModelRunner, and greedy requests served concurrently by an Engine.
// Invariant: every function is deterministic for a given model and configuration (fixed seeds,
// greedy sampling), so two runs that should agree can be compared token for token.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <vector>

#include "engine/engine.h"
#include "engine/model_runner.h"
#include "test_util.h"

namespace freekv::test {

/// Pages of 16; full as it is, any other mode with a budget of 128 tokens (8 pages: 2 sink, 4
/// selected, 2 recent).
inline KvModeConfig small_budget_mode(KvMode kind) {
    KvModeConfig c = full_kv_mode();
    c.page_size = 16;
    if (kind == KvMode::kFull) return c;
    c.mode = kind;
    c.budget = 128;
    c.sink = 32;
    c.recent = 32;
    return c;
}

struct Decoded {
    std::vector<std::vector<int32_t>> tokens;  // per sequence
    std::vector<float> logits;                 // every forward's rows, in order
    KvStats stats;
};

/// Two sequences (random prompts of 150 and 190 tokens from seed, seed + 1), each prefilled in
/// chunks of prefill_chunk tokens (0: whole), then `steps` greedy steps of both together. With
/// `forced` (another run's Decoded::tokens) each step feeds those tokens instead of its own argmax,
/// so that two runs whose roundings differ compare logits of the same inputs even past a near tie.
inline Decoded decode_two(ModelRunner& runner, int64_t n_vocab, uint32_t seed, int64_t prefill_chunk, int steps = 24,
                          const std::vector<std::vector<int32_t>>* forced = nullptr) {
    Decoded out;
    const std::vector<int64_t> lengths = {150, 190};
    std::vector<int32_t> seqs, next;
    std::vector<int64_t> held;
    std::vector<float> logits;
    for (size_t i = 0; i < lengths.size(); ++i) {
        const int32_t seq = runner.add_sequence();
        seqs.push_back(seq);
        const auto prompt = random_tokens(lengths[i], n_vocab, seed + static_cast<uint32_t>(i));
        const int64_t chunk = prefill_chunk > 0 ? prefill_chunk : lengths[i];
        for (int64_t at = 0; at < lengths[i]; at += chunk) {
            const int64_t n = std::min(chunk, lengths[i] - at);
            const SequenceSpan span{seq, at, n, 0};
            const int64_t last = n - 1;
            runner.forward(std::span(prompt).subspan(static_cast<size_t>(at), static_cast<size_t>(n)), std::span(&span, 1),
                           std::span(&last, 1), logits);
        }
        out.logits.insert(out.logits.end(), logits.begin(), logits.end());
        next.push_back(static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
        out.tokens.push_back({next.back()});
        held.push_back(lengths[i]);
    }
    for (int step = 0; step < steps; ++step) {
        if (forced != nullptr)
            for (size_t i = 0; i < seqs.size(); ++i) next[i] = (*forced)[i][static_cast<size_t>(step)];
        std::vector<SequenceSpan> spans;
        std::vector<int64_t> rows;
        for (size_t i = 0; i < seqs.size(); ++i) {
            spans.push_back({seqs[i], held[i], 1, static_cast<int64_t>(i)});
            rows.push_back(static_cast<int64_t>(i));
        }
        runner.forward(next, spans, rows, logits);
        out.logits.insert(out.logits.end(), logits.begin(), logits.end());
        const auto width = static_cast<std::ptrdiff_t>(n_vocab);
        for (size_t i = 0; i < seqs.size(); ++i) {
            const auto row = logits.begin() + static_cast<std::ptrdiff_t>(i) * width;
            next[i] = static_cast<int32_t>(std::max_element(row, row + width) - row);
            out.tokens[i].push_back(next[i]);
            ++held[i];
        }
    }
    out.stats = runner.stats();
    return out;
}

/// One greedy request per prompt, all submitted at once to an Engine of `config`, each for
/// max_tokens tokens; returns each request's tokens (and expects each to end by length).
inline std::vector<std::vector<int32_t>> serve_greedy(const LoadedModel& m, const EngineConfig& config,
                                                      const std::vector<std::vector<int32_t>>& prompts, int64_t max_tokens) {
    std::vector<std::vector<int32_t>> out(prompts.size());
    std::mutex mutex;
    std::condition_variable cv;
    size_t done = 0;
    Engine engine(m, config);
    for (size_t i = 0; i < prompts.size(); ++i) {
        EngineRequest r;
        r.prompt = prompts[i];
        r.max_tokens = max_tokens;
        r.sampling.temperature = 0.0f;
        r.on_token = [&, i](int32_t id) {
            std::lock_guard lock(mutex);
            out[i].push_back(id);
            return true;
        };
        r.on_done = [&](const RequestOutcome& o) {
            EXPECT_EQ(o.reason, FinishReason::kLength) << o.error;
            std::lock_guard lock(mutex);
            ++done;
            cv.notify_all();
        };
        engine.submit(std::move(r));
    }
    std::unique_lock lock(mutex);
    cv.wait(lock, [&] { return done == prompts.size(); });
    return out;
}

}  // namespace freekv::test
