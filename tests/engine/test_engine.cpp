// test_engine.cpp: the continuous-batching engine (engine/engine.h) on the CPU with small
// random-weight models (tests/fixtures): 16 requests submitted together from 16 threads get the
// tokens each gets alone (greedy and seeded sampling; full and freekv; f32 and bf16 weights, with
// prompts crossing prefill chunks), requests cancelled at random points end once and leave the
// others untouched, a planted failure at admission or in a prompt chunk ends only its request, a
// full queue refuses with EngineBusy, bad prompts are errors, and stopping
// the engine ends what is still queued.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "core/error.h"
#include "engine/engine.h"
#include "model/model_loader.h"
#include "test_util.h"

namespace freekv {
namespace {

const LoadedModel& fixture(const std::string& name) {
    static std::map<std::string, LoadedModel> cache;
    auto it = cache.find(name);
    if (it == cache.end()) it = cache.emplace(name, load_model((test::source_dir() / "tests/fixtures/models" / name).string())).first;
    return it->second;
}

using test::random_tokens;

KvModeConfig mode_for(KvMode kind) {
    KvModeConfig c = full_kv_mode();
    c.page_size = 16;
    if (kind == KvMode::kFull) return c;
    c.mode = kind;
    c.budget = 128;  // 8 slots: 2 sink, 4 selected, 2 recent
    c.sink = 32;
    c.recent = 32;
    c.check_invariants = true;
    return c;
}

// What one request produced, filled by its callbacks.
struct Result {
    std::vector<int32_t> tokens;
    std::optional<RequestOutcome> outcome;
    int done_calls = 0;
};

class Waiter {
public:
    void done() {
        std::lock_guard lock(mutex_);
        ++n_;
        cv_.notify_all();
    }
    void wait_for(int n) {
        std::unique_lock lock(mutex_);
        ASSERT_TRUE(cv_.wait_for(lock, std::chrono::minutes(5), [&] { return n_ >= n; })) << "requests did not finish";
    }

private:
    std::mutex mutex_;
    std::condition_variable cv_;
    int n_ = 0;
};

EngineRequest make_request(const std::vector<int32_t>& prompt, int64_t max_tokens, const SamplingParams& sampling,
                           Result& out, Waiter& waiter) {
    EngineRequest r;
    r.prompt = prompt;
    r.max_tokens = max_tokens;
    r.sampling = sampling;
    r.on_token = [&out](int32_t id) {
        out.tokens.push_back(id);
        return true;
    };
    r.on_done = [&out, &waiter](const RequestOutcome& o) {
        out.outcome = o;
        ++out.done_calls;
        waiter.done();
    };
    return r;
}

struct Job {
    std::vector<int32_t> prompt;
    int64_t max_tokens;
    SamplingParams sampling;
};

std::vector<Job> jobs_for(const ModelConfig& c, int n) {
    std::vector<Job> jobs;
    for (int i = 0; i < n; ++i) {
        const int64_t n_prompt = 5 + (i * 37) % 180;  // some cross the 64-token chunks
        SamplingParams s{0.0f, 0, 1.0f, 0};            // greedy ...
        if (i % 3 == 1) s = {0.9f, 20, 0.9f, static_cast<uint64_t>(100 + i)};  // ... or seeded sampling
        jobs.push_back({random_tokens(n_prompt, c.n_vocab, 1000 + static_cast<uint32_t>(i)), 12 + i % 7, s});
    }
    return jobs;
}

EngineConfig engine_config(KvMode kind, int64_t max_batch) {
    EngineConfig e;
    e.kv_mode = mode_for(kind);
    e.n_ctx = 256;
    e.max_batch = max_batch;
    e.max_waiting = 64;
    e.prefill_chunk = 64;
    e.step_tokens = 160;
    return e;
}

// Each job alone in a one-slot engine, one after the other.
std::vector<std::vector<int32_t>> solo_runs(const LoadedModel& m, KvMode kind, const std::vector<Job>& jobs) {
    Engine engine(m, engine_config(kind, 1));
    std::vector<std::vector<int32_t>> out;
    for (const Job& j : jobs) {
        Result r;
        Waiter w;
        engine.submit(make_request(j.prompt, j.max_tokens, j.sampling, r, w));
        w.wait_for(1);
        EXPECT_EQ(r.outcome->reason, FinishReason::kLength);
        out.push_back(r.tokens);
    }
    return out;
}

TEST(Engine, ConcurrentRequestsGetTheirSoloTokens) {
    for (const std::string name : {"mistral-g2-f32", "qwen2-g7-bf16"}) {
        const LoadedModel& m = fixture(name);
        for (KvMode kind : {KvMode::kFull, KvMode::kFreekv}) {
            const std::string what = name + " " + kv_mode_name(kind);
            const std::vector<Job> jobs = jobs_for(m.config, 16);
            const auto solo = solo_runs(m, kind, jobs);
            // Six slots for sixteen requests: the rest wait and join as slots free up.
            Engine engine(m, engine_config(kind, 6));
            std::vector<Result> results(jobs.size());
            Waiter waiter;
            std::vector<std::thread> clients;
            for (size_t i = 0; i < jobs.size(); ++i)
                clients.emplace_back([&, i] {
                    engine.submit(make_request(jobs[i].prompt, jobs[i].max_tokens, jobs[i].sampling, results[i], waiter));
                });
            for (auto& t : clients) t.join();
            waiter.wait_for(static_cast<int>(jobs.size()));
            for (size_t i = 0; i < jobs.size(); ++i) {
                EXPECT_EQ(results[i].done_calls, 1) << what << " request " << i;
                EXPECT_EQ(results[i].outcome->reason, FinishReason::kLength) << what << " request " << i;
                EXPECT_EQ(results[i].tokens, solo[i]) << what << " request " << i << " differs from its solo run";
                EXPECT_EQ(results[i].outcome->n_prompt, static_cast<int64_t>(jobs[i].prompt.size()));
            }
            const EngineMetrics mt = engine.metrics();
            EXPECT_EQ(mt.submitted, 16);
            EXPECT_EQ(mt.finished[static_cast<int>(FinishReason::kLength)], 16);
            EXPECT_EQ(mt.running + mt.waiting, 0);
            EXPECT_GT(mt.decode_rows, mt.steps) << what << ": no step decoded more than one sequence";
        }
    }
}

TEST(Engine, CancelledRequestsEndOnceAndLeaveTheOthersUntouched) {
    const LoadedModel& m = fixture("mistral-g2-f32");
    for (KvMode kind : {KvMode::kFull, KvMode::kFreekv}) {
        const std::vector<Job> jobs = jobs_for(m.config, 40);
        const auto solo = solo_runs(m, kind, jobs);
        Engine engine(m, engine_config(kind, 8));
        std::vector<Result> results(jobs.size());
        std::vector<int64_t> ids(jobs.size());
        Waiter waiter;
        std::mt19937 rng(7);
        std::vector<bool> cancel(jobs.size());
        for (size_t i = 0; i < jobs.size(); ++i) cancel[i] = rng() % 5 == 0;  // about 20%
        for (size_t i = 0; i < jobs.size(); ++i) {
            EngineRequest r = make_request(jobs[i].prompt, jobs[i].max_tokens, jobs[i].sampling, results[i], waiter);
            if (cancel[i] && i % 2 == 0) {  // half of them stop from their own callback after 3 tokens
                r.on_token = [&out = results[i]](int32_t id) {
                    out.tokens.push_back(id);
                    return out.tokens.size() < 3;
                };
            }
            ids[i] = engine.submit(std::move(r));
        }
        for (size_t i = 0; i < jobs.size(); ++i)  // the other half from this thread, wherever they are
            if (cancel[i] && i % 2 == 1) engine.cancel(ids[i]);
        waiter.wait_for(static_cast<int>(jobs.size()));
        int n_cancelled = 0;
        for (size_t i = 0; i < jobs.size(); ++i) {
            EXPECT_EQ(results[i].done_calls, 1) << "request " << i;
            const FinishReason reason = results[i].outcome->reason;
            if (!cancel[i]) {
                EXPECT_EQ(reason, FinishReason::kLength) << "request " << i;
                EXPECT_EQ(results[i].tokens, solo[i]) << "request " << i << " changed by its neighbours' cancellation";
                continue;
            }
            // A cancelled request got a prefix of its solo tokens (it may have finished first).
            const auto& got = results[i].tokens;
            ASSERT_LE(got.size(), solo[i].size());
            EXPECT_TRUE(std::equal(got.begin(), got.end(), solo[i].begin())) << "request " << i;
            if (i % 2 == 0) {
                EXPECT_EQ(got.size(), std::min<size_t>(3, solo[i].size()));
            }
            n_cancelled += reason == FinishReason::kCancelled;
        }
        EXPECT_GT(n_cancelled, 0);
        const EngineMetrics mt = engine.metrics();
        int64_t finished = 0;
        for (int64_t f : mt.finished) finished += f;
        EXPECT_EQ(finished, 40);
        EXPECT_EQ(mt.running + mt.waiting, 0);
        // The slots all came back: a new request still runs.
        Result again;
        Waiter w2;
        engine.submit(make_request(jobs[0].prompt, jobs[0].max_tokens, jobs[0].sampling, again, w2));
        w2.wait_for(1);
        EXPECT_EQ(again.tokens, solo[0]);
    }
}

// Planted faults (engine/fault_injection.h): a sequence whose KV reservation fails at admission, and
// one whose first prompt chunk fails while other sequences decode in the same step, end with kError
// and a message saying what failed; every other request gets its solo tokens; the slots come back.
TEST(Engine, AFailedAdmissionOrPromptChunkEndsThatRequestOnly) {
    const LoadedModel& m = fixture("mistral-g2-f32");
    for (KvMode kind : {KvMode::kFull, KvMode::kFreekv}) {
        const std::vector<Job> jobs = jobs_for(m.config, 12);
        const auto solo = solo_runs(m, kind, jobs);
        EngineConfig cfg = engine_config(kind, 4);
        // Submitted in order from one thread, request i is admission i (a failed admission is one too).
        cfg.faults.fail_admissions = {1, 7};
        cfg.faults.fail_first_chunks = {2, 9};  // 9 joins a full batch of decoders
        Engine engine(m, cfg);
        std::vector<Result> results(jobs.size());
        Waiter waiter;
        for (size_t i = 0; i < jobs.size(); ++i)
            engine.submit(make_request(jobs[i].prompt, jobs[i].max_tokens, jobs[i].sampling, results[i], waiter));
        waiter.wait_for(static_cast<int>(jobs.size()));
        for (size_t i = 0; i < jobs.size(); ++i) {
            const std::string what = std::string(kv_mode_name(kind)) + " request " + std::to_string(i);
            ASSERT_EQ(results[i].done_calls, 1) << what;
            const RequestOutcome& o = *results[i].outcome;
            if (i == 1 || i == 7) {
                EXPECT_EQ(o.reason, FinishReason::kError) << what;
                EXPECT_NE(o.error.find("could not reserve"), std::string::npos) << what << ": " << o.error;
                EXPECT_TRUE(results[i].tokens.empty()) << what;
            } else if (i == 2 || i == 9) {
                EXPECT_EQ(o.reason, FinishReason::kError) << what;
                EXPECT_NE(o.error.find("first prompt chunk"), std::string::npos) << what << ": " << o.error;
                EXPECT_TRUE(results[i].tokens.empty()) << what;
            } else {
                EXPECT_EQ(o.reason, FinishReason::kLength) << what;
                EXPECT_EQ(results[i].tokens, solo[i]) << what << " changed by a neighbour's failure";
            }
        }
        const EngineMetrics mt = engine.metrics();
        EXPECT_EQ(mt.finished[static_cast<int>(FinishReason::kError)], 4);
        EXPECT_EQ(mt.finished[static_cast<int>(FinishReason::kLength)], 8);
        EXPECT_EQ(mt.running + mt.waiting, 0);
        // Every slot came back: four more requests run at once and get their solo tokens.
        std::vector<Result> again(4);
        Waiter w2;
        for (size_t i = 0; i < again.size(); ++i)
            engine.submit(make_request(jobs[i + 3].prompt, jobs[i + 3].max_tokens, jobs[i + 3].sampling, again[i], w2));
        w2.wait_for(4);
        for (size_t i = 0; i < again.size(); ++i) EXPECT_EQ(again[i].tokens, solo[i + 3]) << kv_mode_name(kind);
    }
}

TEST(Engine, AFullQueueRefusesWithEngineBusy) {
    const LoadedModel& m = fixture("mistral-g2-f32");
    EngineConfig cfg = engine_config(KvMode::kFull, 1);
    cfg.n_ctx = 4096;
    cfg.max_waiting = 2;
    Engine engine(m, cfg);
    std::vector<Result> results(3);
    Waiter waiter;
    const std::vector<int32_t> prompt = random_tokens(8, m.config.n_vocab, 3);
    std::vector<int64_t> ids;
    for (auto& r : results) ids.push_back(engine.submit(make_request(prompt, 4000, {0.0f, 0, 1.0f, 0}, r, waiter)));
    Result refused;
    EXPECT_THROW(engine.submit(make_request(prompt, 4000, {0.0f, 0, 1.0f, 0}, refused, waiter)), EngineBusy);
    EXPECT_EQ(engine.metrics().rejected, 1);
    for (int64_t id : ids) engine.cancel(id);
    waiter.wait_for(3);
    for (const auto& r : results) EXPECT_EQ(r.outcome->reason, FinishReason::kCancelled);
    EXPECT_EQ(refused.done_calls, 0) << "a refused request gets no callback";
}

TEST(Engine, RequestsPastTheirTimeoutEndWaitingOrRunningAndFreeTheSlot) {
    const LoadedModel& m = fixture("mistral-g2-f32");
    EngineConfig cfg = engine_config(KvMode::kFull, 1);
    cfg.n_ctx = 16384;
    Engine engine(m, cfg);
    Waiter waiter;
    const std::vector<int32_t> prompt = random_tokens(8, m.config.n_vocab, 3);
    Result running, waiting, after;
    EngineRequest a = make_request(prompt, 16000, {0.0f, 0, 1.0f, 0}, running, waiter);
    a.timeout_s = 0.3;  // holds the only slot until then: 16000 tokens take far longer
    EngineRequest b = make_request(prompt, 4, {0.0f, 0, 1.0f, 0}, waiting, waiter);
    b.timeout_s = 0.05;  // expires in the queue behind a
    engine.submit(std::move(a));
    engine.submit(std::move(b));
    waiter.wait_for(2);
    ASSERT_TRUE(running.outcome && waiting.outcome);
    EXPECT_EQ(running.outcome->reason, FinishReason::kTimeout);
    EXPECT_LT(static_cast<int64_t>(running.tokens.size()), 16000);
    EXPECT_NE(running.outcome->error.find("time limit of 0.3 s"), std::string::npos) << running.outcome->error;
    EXPECT_GE(running.outcome->total_ms, 300);
    EXPECT_EQ(waiting.outcome->reason, FinishReason::kTimeout);
    EXPECT_TRUE(waiting.tokens.empty()) << "it never got the slot";
    // The slot is free again: a request without a limit runs to its length.
    engine.submit(make_request(prompt, 5, {0.0f, 0, 1.0f, 0}, after, waiter));
    waiter.wait_for(3);
    ASSERT_TRUE(after.outcome);
    EXPECT_EQ(after.outcome->reason, FinishReason::kLength);
    EXPECT_EQ(after.tokens.size(), 5u);
    EXPECT_EQ(engine.metrics().finished[static_cast<int>(FinishReason::kTimeout)], 2);
}

TEST(Engine, BadPromptsAreErrorsBeforeAnyWork) {
    const LoadedModel& m = fixture("mistral-g2-f32");
    Engine engine(m, engine_config(KvMode::kFull, 2));
    Result r;
    Waiter w;
    EXPECT_THROW(engine.submit(make_request({}, 4, {}, r, w)), Error);
    EXPECT_THROW(engine.submit(make_request(random_tokens(256, m.config.n_vocab, 1), 4, {}, r, w)), Error);  // n_ctx 256
    EXPECT_THROW(engine.submit(make_request({1, 2, static_cast<int32_t>(m.config.n_vocab)}, 4, {}, r, w)), Error);
    EXPECT_EQ(engine.metrics().submitted, 0);
    // The longest prompt that fits leaves room for one token.
    engine.submit(make_request(random_tokens(255, m.config.n_vocab, 1), 10, {0.0f, 0, 1.0f, 0}, r, w));
    w.wait_for(1);
    EXPECT_EQ(r.tokens.size(), 1u);
    EXPECT_EQ(r.outcome->reason, FinishReason::kLength);
}

TEST(Engine, StopTokensEndARequestWithoutBeingPassedOn) {
    const LoadedModel& m = fixture("mistral-g2-f32");
    Engine engine(m, engine_config(KvMode::kFull, 2));
    const std::vector<int32_t> prompt = random_tokens(20, m.config.n_vocab, 5);
    Result first;
    Waiter w;
    engine.submit(make_request(prompt, 8, {0.0f, 0, 1.0f, 0}, first, w));
    w.wait_for(1);
    ASSERT_EQ(first.tokens.size(), 8u);
    Result stopped;
    EngineRequest r = make_request(prompt, 8, {0.0f, 0, 1.0f, 0}, stopped, w);
    r.stop_ids = {first.tokens[3]};
    engine.submit(std::move(r));
    w.wait_for(2);
    const auto cut = std::find(first.tokens.begin(), first.tokens.end(), first.tokens[3]) - first.tokens.begin();
    EXPECT_EQ(stopped.outcome->reason, FinishReason::kStop);
    EXPECT_EQ(stopped.tokens, std::vector<int32_t>(first.tokens.begin(), first.tokens.begin() + cut));
    EXPECT_EQ(stopped.outcome->n_generated, cut + 1);
}

TEST(Engine, StoppingTheEngineEndsEveryRequest) {
    const LoadedModel& m = fixture("mistral-g2-f32");
    std::vector<Result> results(6);
    Waiter waiter;
    {
        EngineConfig cfg = engine_config(KvMode::kFreekv, 2);
        cfg.n_ctx = 4096;
        Engine engine(m, cfg);
        for (auto& r : results)
            engine.submit(make_request(random_tokens(40, m.config.n_vocab, 9), 4000, {0.0f, 0, 1.0f, 0}, r, waiter));
    }
    for (const auto& r : results) {
        EXPECT_EQ(r.done_calls, 1);
        EXPECT_EQ(r.outcome->reason, FinishReason::kCancelled);
    }
}

}  // namespace
}  // namespace freekv
