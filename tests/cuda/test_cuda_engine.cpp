// test_cuda_engine.cpp: the continuous-batching Engine on the GPU runner (GpuEngine), with small
// random-weight models that the GPU engine can run (head_dim 128: tests/fixtures llama31-hd128-f16;
// head_dim 32: the synthetic `tiny` shape):
//   - in f32 (--gpu-dtype f32) 16 requests of different lengths, submitted together to an engine
//     of 4 slots (so slots are freed and reused mid-run, and the row set changes every few steps),
//     get the tokens each gets alone, greedy and seeded, for full and freekv in the sparse regime;
//   - a prompt prefilled in chunks equals its whole-prompt prefill (f32 and bf16);
//   - a planted allocation failure (admission, first prompt chunk) ends its own request only;
//   - the CPU and GPU runners plan every decode step identically (engine/step_plan.h);
//   - the memory plan bounds what the engine allocates, and a --gpu-memory-gib cap lowers the
//     batch to what fits and says so, or refuses with the flag names when not one sequence fits.
// Skips without a CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>

#include "core/error.h"
#include "engine/engine.h"
#include "engine/model_runner.h"
#include "engine/step_plan.h"
#include "gpu/gpu_engine.h"
#include "gpu/gpu_memory_plan.h"
#include "model/model_loader.h"
#include "model/synthetic_model.h"
#include "decode_helpers.h"
#include "test_util.h"

namespace freekv {
namespace {

bool have_gpu() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

using test::random_tokens;

// 8 slots of 16: 2 sink, 4 selected, 2 recent: prompts over 128 tokens run sparse.
KvModeConfig mode_for(KvMode kind) { return test::small_budget_mode(kind); }

class Waiter {
public:
    void done() {
        std::lock_guard lock(mutex_);
        ++n_;
        cv_.notify_all();
    }
    bool wait_for(int n) {
        std::unique_lock lock(mutex_);
        return cv_.wait_for(lock, std::chrono::minutes(5), [&] { return n_ >= n; });
    }

private:
    std::mutex mutex_;
    std::condition_variable cv_;
    int n_ = 0;
};

struct Job {
    std::vector<int32_t> prompt;
    int64_t max_tokens;
    SamplingParams sampling;
};

struct Result {
    std::vector<int32_t> tokens;
    std::optional<RequestOutcome> outcome;
};

EngineRequest request_for(const Job& j, Result& out, Waiter& w) {
    EngineRequest r;
    r.prompt = j.prompt;
    r.max_tokens = j.max_tokens;
    r.sampling = j.sampling;
    r.on_token = [&out](int32_t id) {
        out.tokens.push_back(id);
        return true;
    };
    r.on_done = [&out, &w](const RequestOutcome& o) {
        out.outcome = o;
        w.done();
    };
    return r;
}

EngineConfig gpu_config(std::shared_ptr<const gpu::GpuWeights> w, KvMode kind, int64_t max_batch) {
    EngineConfig e;
    e.kv_mode = mode_for(kind);
    e.n_ctx = 320;
    e.max_batch = max_batch;
    e.max_waiting = 64;
    e.prefill_chunk = 64;  // prompts of up to 266 tokens come in up to 5 chunks, alone and batched
    e.gpu = std::move(w);
    return e;
}

std::vector<Result> run_together(const LoadedModel& m, const EngineConfig& config, const std::vector<Job>& jobs) {
    Engine engine(m, config);
    std::vector<Result> results(jobs.size());
    Waiter waiter;
    std::vector<std::thread> clients;
    for (size_t i = 0; i < jobs.size(); ++i)
        clients.emplace_back([&, i] { engine.submit(request_for(jobs[i], results[i], waiter)); });
    for (auto& t : clients) t.join();
    EXPECT_TRUE(waiter.wait_for(static_cast<int>(jobs.size()))) << "requests did not finish";
    const EngineMetrics mt = engine.metrics();
    if (config.max_batch > 1) {
        EXPECT_GT(mt.decode_rows, mt.steps) << "no step decoded more than one sequence";
    }
    return results;
}

TEST(GpuServingEngine, ConcurrentRequestsInF32GetTheirSoloTokens) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    std::vector<std::pair<std::string, LoadedModel>> models;
    models.emplace_back("llama31-hd128-f16",
                        load_model((test::source_dir() / "tests/fixtures/models/llama31-hd128-f16").string()));
    models.emplace_back("tiny (synthetic)", make_synthetic_model("tiny"));
    for (const auto& [name, m] : models) {
        auto weights = std::make_shared<const gpu::GpuWeights>(m.config, m.model->weights(), gpu::GpuDtype::kF32);
        std::vector<Job> jobs;
        for (int i = 0; i < 16; ++i) {
            SamplingParams s{0.0f, 0, 1.0f, 0};
            if (i % 3 == 1) s = {0.9f, 20, 0.9f, static_cast<uint64_t>(100 + i)};
            const int64_t n_prompt = 7 + (i * 41) % 260;  // dense and sparse (over the budget of 128)
            jobs.push_back({random_tokens(n_prompt, m.config.n_vocab, 2000 + static_cast<uint32_t>(i)), 10 + i % 9, s});
        }
        for (KvMode kind : {KvMode::kFull, KvMode::kFreekv}) {
            const std::string what = name + " " + kv_mode_name(kind);
            std::vector<Result> solo;
            for (const Job& j : jobs) solo.push_back(run_together(m, gpu_config(weights, kind, 1), {j})[0]);
            const std::vector<Result> together = run_together(m, gpu_config(weights, kind, 4), jobs);
            int equal = 0;
            for (size_t i = 0; i < jobs.size(); ++i) {
                ASSERT_TRUE(together[i].outcome.has_value()) << what << " request " << i;
                EXPECT_EQ(together[i].outcome->reason, FinishReason::kLength) << what << " " << together[i].outcome->error;
                EXPECT_EQ(static_cast<int64_t>(solo[i].tokens.size()), jobs[i].max_tokens) << what << " request " << i;
                EXPECT_EQ(together[i].tokens, solo[i].tokens) << what << " request " << i << " (prompt "
                                                              << jobs[i].prompt.size() << ") differs from its solo run";
                equal += together[i].tokens == solo[i].tokens;
            }
            std::printf("%s: %d of 16 batched requests equal their solo runs\n", what.c_str(), equal);
        }
    }
}

// Planted faults: an admission whose KV slot cannot be had, and first prompt chunks whose device
// allocation fails (one staged prompt of two chunks, one prompt of a single chunk) while other
// sequences decode: each ends its own request with kError; the others get their solo tokens, and a
// later staged prompt still runs (the failed stage was dropped).
TEST(GpuServingEngine, AFailedAllocationEndsItsRequestOnly) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const LoadedModel m = load_model((test::source_dir() / "tests/fixtures/models/llama31-hd128-f16").string());
    auto weights = std::make_shared<const gpu::GpuWeights>(m.config, m.model->weights(), gpu::GpuDtype::kF32);
    std::vector<Job> jobs;
    for (int i = 0; i < 10; ++i) {
        const int64_t n_prompt = 7 + (i * 41) % 260;  // job 2: 89 tokens (two chunks), job 7: 34 (one)
        jobs.push_back({random_tokens(n_prompt, m.config.n_vocab, 3000 + static_cast<uint32_t>(i)), 12, {0.0f, 0, 1.0f, 0}});
    }
    for (KvMode kind : {KvMode::kFull, KvMode::kFreekv}) {
        std::vector<Result> solo;
        for (const Job& j : jobs) solo.push_back(run_together(m, gpu_config(weights, kind, 1), {j})[0]);
        EngineConfig cfg = gpu_config(weights, kind, 4);
        cfg.faults.fail_admissions = {1};
        cfg.faults.fail_first_chunks = {2, 7};
        Engine engine(m, cfg);
        std::vector<Result> got(jobs.size());
        Waiter waiter;
        for (size_t i = 0; i < jobs.size(); ++i) engine.submit(request_for(jobs[i], got[i], waiter));  // admission i
        ASSERT_TRUE(waiter.wait_for(static_cast<int>(jobs.size())));
        for (size_t i = 0; i < jobs.size(); ++i) {
            const std::string what = std::string(kv_mode_name(kind)) + " request " + std::to_string(i);
            ASSERT_TRUE(got[i].outcome.has_value()) << what;
            if (i == 1 || i == 2 || i == 7) {
                EXPECT_EQ(got[i].outcome->reason, FinishReason::kError) << what;
                EXPECT_NE(got[i].outcome->error.find("injected"), std::string::npos) << what << ": " << got[i].outcome->error;
                EXPECT_TRUE(got[i].tokens.empty()) << what;
                continue;
            }
            EXPECT_EQ(got[i].outcome->reason, FinishReason::kLength) << what << " " << got[i].outcome->error;
            EXPECT_EQ(got[i].tokens, solo[i].tokens) << what << " changed by a neighbour's failure";
        }
        EXPECT_EQ(engine.metrics().finished[static_cast<int>(FinishReason::kError)], 3);
        Result again;
        Waiter w2;
        engine.submit(request_for(jobs[2], again, w2));  // the staged prompt that failed, now without a fault
        ASSERT_TRUE(w2.wait_for(1));
        EXPECT_EQ(again.tokens, solo[2].tokens) << kv_mode_name(kind);
    }
}

// The CPU runner (RetrievalKv) and the GPU runner, given the same three sequences (one dense prompt
// that turns sparse while decoding, one just past the budget, one well past it) and the same
// tokens, plan every decode step identically: regime, appended slot, attended slots, boundaries and
// the slots each completed page leaves and enters, forced steps and the selection kind.
TEST(GpuServingEngine, PlansOfBothBackendsAreEqualStepByStep) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const LoadedModel m = load_model((test::source_dir() / "tests/fixtures/models/llama31-hd128-f16").string());
    auto weights = std::make_shared<const gpu::GpuWeights>(m.config, m.model->weights(), gpu::GpuDtype::kF32);
    const std::vector<int64_t> prompt_lengths = {90, 130, 200};
    for (KvMode kind : {KvMode::kFreekv, KvMode::kArkvale, KvMode::kQuest, KvMode::kBudgetOnly}) {
        const std::string what = kv_mode_name(kind);
        const KvModeConfig mode = mode_for(kind);
        auto cpu = make_model_runner(m, mode, 3, 320);
        auto gpu = make_model_runner(m, mode, 3, 320, weights);
        std::vector<int32_t> seqs, last(prompt_lengths.size());
        std::vector<int64_t> held;
        std::vector<int32_t> ids;
        std::vector<float> values;
        for (size_t i = 0; i < prompt_lengths.size(); ++i) {
            const int32_t a = cpu->add_sequence(), b = gpu->add_sequence();
            ASSERT_EQ(a, b);
            seqs.push_back(a);
            const auto prompt = random_tokens(prompt_lengths[i], m.config.n_vocab, 4000 + static_cast<uint32_t>(i));
            const SequenceSpan span{a, 0, prompt_lengths[i], 0};
            const int64_t row = prompt_lengths[i] - 1;
            ASSERT_TRUE(cpu->forward_top(prompt, std::span(&span, 1), std::span(&row, 1), 1, ids, values).empty());
            last[i] = ids[0];
            ASSERT_TRUE(gpu->forward_top(prompt, std::span(&span, 1), std::span(&row, 1), 1, ids, values).empty());
            held.push_back(prompt_lengths[i]);
        }
        int64_t boundaries = 0, forced = 0, sparse_rows = 0;
        for (int step = 0; step < 60; ++step) {
            std::vector<SequenceSpan> spans;
            std::vector<int64_t> rows;
            for (size_t i = 0; i < seqs.size(); ++i) {
                spans.push_back({seqs[i], held[i], 1, static_cast<int64_t>(i)});
                rows.push_back(static_cast<int64_t>(i));
            }
            ASSERT_TRUE(cpu->forward_top(last, spans, rows, 1, ids, values).empty());
            const std::vector<int32_t> next = ids;  // both runners get the CPU's tokens
            std::vector<int32_t> gpu_ids;
            ASSERT_TRUE(gpu->forward_top(last, spans, rows, 1, gpu_ids, values).empty());
            const std::vector<RowPlan> a = cpu->last_decode_plan(), b = gpu->last_decode_plan();
            ASSERT_EQ(a.size(), seqs.size()) << what << " step " << step;
            ASSERT_EQ(b.size(), seqs.size()) << what << " step " << step;
            for (size_t r = 0; r < a.size(); ++r) {
                EXPECT_TRUE(a[r] == b[r]) << what << " step " << step << " row " << r << ": pos " << a[r].pos << " vs "
                                          << b[r].pos << ", slot " << a[r].append_slot << " vs " << b[r].append_slot
                                          << ", attend " << a[r].n_attend << " vs " << b[r].n_attend << ", select "
                                          << int(a[r].select) << " vs " << int(b[r].select) << ", forced " << a[r].forced
                                          << " vs " << b[r].forced << ", boundary " << a[r].has_boundary << " vs "
                                          << b[r].has_boundary;
                boundaries += a[r].has_boundary;
                forced += a[r].forced;
                sparse_rows += a[r].sparse;
            }
            last = next;
            for (auto& h : held) ++h;
        }
        // The run covered what the plans decide: boundaries, a sequence entering the sparse regime
        // (forced at position 128) and the two that started sparse (forced on their first step).
        EXPECT_GE(boundaries, 9) << what;
        EXPECT_EQ(forced, 3) << what;
        EXPECT_GT(sparse_rows, 120) << what;
    }
}

TEST(GpuServingEngine, TheMemoryPlanBoundsWhatTheEngineAllocates) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const LoadedModel m = make_synthetic_model("tiny");
    for (gpu::GpuDtype dtype : {gpu::GpuDtype::kBF16, gpu::GpuDtype::kF32}) {
        auto weights = std::make_shared<const gpu::GpuWeights>(m.config, m.model->weights(), dtype);
        for (KvMode kind : {KvMode::kFull, KvMode::kFreekv, KvMode::kQuest, KvMode::kBudgetOnly}) {
            const KvModeConfig mode = mode_for(kind);
            const int64_t batch = 3, n_ctx = 1000;
            const gpu::GpuMemoryPlan plan =
                gpu::plan_gpu_memory(m.config, mode, dtype == gpu::GpuDtype::kF32 ? 4 : 2, weights->bytes(), n_ctx);
            gpu::GpuEngine engine(weights, mode, batch, n_ctx);
            // The longest prefill, then decode steps of the whole batch: the peak of every buffer.
            std::vector<float> logits;
            for (int32_t b = 0; b < batch; ++b) {
                const int32_t seq = engine.add_sequence();
                const auto prompt = random_tokens(n_ctx - 8, m.config.n_vocab, 7 + static_cast<uint32_t>(b));
                const SequenceSpan span{seq, 0, static_cast<int64_t>(prompt.size()), 0};
                const int64_t last[1] = {static_cast<int64_t>(prompt.size()) - 1};
                engine.forward(prompt, std::span(&span, 1), last, logits);
            }
            for (int step = 0; step < 4; ++step) {
                std::vector<int32_t> tokens(static_cast<size_t>(batch), 5);
                std::vector<SequenceSpan> spans;
                std::vector<int64_t> rows;
                for (int32_t b = 0; b < batch; ++b) {
                    spans.push_back({b, engine.n_tokens(b), 1, b});
                    rows.push_back(b);
                }
                engine.forward(tokens, spans, rows, logits);
            }
            const std::string what = std::string(kv_mode_name(kind)) + " " + gpu::gpu_dtype_name(dtype);
            std::printf("%s: engine %.2f MiB device, %.2f MiB pinned; plan %.2f MiB (%.2f of it prefill), %.2f MiB pinned\n",
                        what.c_str(), static_cast<double>(engine.device_bytes()) / 1048576.0, static_cast<double>(engine.host_bytes()) / 1048576.0,
                        static_cast<double>(plan.device_bytes(batch)) / 1048576.0, static_cast<double>(plan.prefill_bytes) / 1048576.0,
                        static_cast<double>(plan.host_bytes(batch)) / 1048576.0);
            EXPECT_LE(engine.device_bytes(), plan.device_bytes(batch)) << what << ": the plan must be an upper bound";
            EXPECT_GE(engine.device_bytes(), plan.device_bytes(batch) - plan.prefill_bytes - plan.device_fixed)
                << what << ": the plan's per-sequence part is more than the engine holds";
            EXPECT_GE(engine.host_bytes(), plan.host_bytes(batch)) << what;
            EXPECT_LE(engine.host_bytes(), plan.host_bytes(batch) + plan.host_per_sequence) << what;
            if (!engine.chunked_prefill()) continue;
            // Chunked prefill (what the serving Engine does): the plan of 128-token chunks bounds
            // the engine at the moment the last chunk runs, its prompt's K/V all staged.
            const int64_t chunk = 128;
            const gpu::GpuMemoryPlan chunk_plan = gpu::plan_gpu_memory(m.config, mode, 4, weights->bytes(), n_ctx, chunk);
            gpu::GpuEngine chunked(weights, mode, batch, n_ctx);
            int64_t peak = 0;
            for (int32_t b = 0; b < batch; ++b) {
                const int32_t seq = chunked.add_sequence();
                const auto prompt = random_tokens(n_ctx - 8, m.config.n_vocab, 7 + static_cast<uint32_t>(b));
                const auto n = static_cast<int64_t>(prompt.size());
                chunked.begin_prompt(seq, n);
                for (int64_t pos0 = 0; pos0 < n; pos0 += chunk) {
                    const int64_t len = std::min(chunk, n - pos0);
                    const SequenceSpan span{seq, pos0, len, 0};
                    const int64_t row[1] = {len - 1};
                    chunked.forward(std::span(prompt).subspan(static_cast<size_t>(pos0), static_cast<size_t>(len)),
                                    std::span(&span, 1), row, logits);
                    peak = std::max(peak, chunked.device_bytes());
                }
            }
            EXPECT_LE(peak, chunk_plan.device_bytes(batch)) << what << ": the chunked plan must be an upper bound";
            EXPECT_LT(chunk_plan.prefill_bytes, plan.prefill_bytes) << what << ": chunks need less than a whole prompt";
        }
    }
}

// A prompt prefilled in chunks (begin_prompt, then one forward per chunk against the staged K/V
// of all earlier chunks) gives the logits of the whole-prompt prefill and the same decode steps
// after it: f32 (the cuBLAS attention path) and bf16 (the flash kernel), full and freekv in the
// sparse regime. A bf16 engine whose head_dim the flash kernel lacks refuses to chunk, by name.
TEST(GpuServingEngine, ChunkedPrefillMatchesTheWholePrompt) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const LoadedModel m = load_model((test::source_dir() / "tests/fixtures/models/llama31-hd128-f16").string());
    for (gpu::GpuDtype dtype : {gpu::GpuDtype::kF32, gpu::GpuDtype::kBF16}) {
        auto weights = std::make_shared<const gpu::GpuWeights>(m.config, m.model->weights(), dtype);
        for (KvMode kind : {KvMode::kFull, KvMode::kFreekv}) {
            const std::string what = std::string(kv_mode_name(kind)) + " " + gpu::gpu_dtype_name(dtype);
            const auto prompt = random_tokens(300, m.config.n_vocab, 77);
            gpu::GpuEngine whole(weights, mode_for(kind), 1, 320), chunked(weights, mode_for(kind), 1, 320);
            ASSERT_TRUE(chunked.chunked_prefill()) << what;
            const int32_t a = whole.add_sequence(), b = chunked.add_sequence();
            std::vector<float> want, got;
            const SequenceSpan all{a, 0, 300, 0};
            const int64_t last_row[1] = {299};
            whole.forward(prompt, std::span(&all, 1), last_row, want);
            chunked.begin_prompt(b, 300);
            for (int64_t pos0 = 0; pos0 < 300; pos0 += 64) {
                const int64_t n = std::min<int64_t>(64, 300 - pos0);
                const SequenceSpan chunk{b, pos0, n, 0};
                const int64_t row[1] = {n - 1};
                chunked.forward(std::span(prompt).subspan(static_cast<size_t>(pos0), static_cast<size_t>(n)), std::span(&chunk, 1),
                                pos0 + n == 300 ? std::span<const int64_t>(row) : std::span<const int64_t>(), got);
                EXPECT_EQ(chunked.n_tokens(b), pos0 + n) << what;
            }
            // NOTE: the two differ only in GEMM row counts (cuBLAS summation order) and, in f32, the
            // attention's query chunks; in bf16 each layer's input is rounded to bf16, which turns
            // those last-bit differences into bf16-sized ones (NMSE ~1e-5); a wrong key, position or
            // mask moves the logits by far more (NMSE ~1e-1).
            const double tol = dtype == gpu::GpuDtype::kF32 ? 1e-9 : 1e-3;
            EXPECT_LE(test::nmse(got, want), tol) << what << ": last prompt token";
            for (int step = 0; step < 6; ++step) {
                const auto argmax = [](const std::vector<float>& v) {
                    return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
                };
                const int32_t ta = argmax(want), tb = argmax(got);
                if (dtype == gpu::GpuDtype::kF32) {
                    EXPECT_EQ(ta, tb) << what << ": greedy token of decode step " << step;
                }
                const int32_t t[1] = {ta};
                const int64_t row[1] = {0};
                const SequenceSpan da{a, whole.n_tokens(a), 1, 0}, db{b, chunked.n_tokens(b), 1, 0};
                whole.forward(t, std::span(&da, 1), row, want);
                chunked.forward(t, std::span(&db, 1), row, got);
                EXPECT_LE(test::nmse(got, want), tol) << what << ": decode step " << step;
            }
        }
    }
    const LoadedModel tiny = make_synthetic_model("tiny");  // head_dim 32
    auto weights = std::make_shared<const gpu::GpuWeights>(tiny.config, tiny.model->weights(), gpu::GpuDtype::kBF16);
    gpu::GpuEngine engine(weights, mode_for(KvMode::kFull), 1, 320);
    EXPECT_FALSE(engine.chunked_prefill());
    const int32_t seq = engine.add_sequence();
    try {
        engine.begin_prompt(seq, 100);
        ADD_FAILURE() << "a bf16 engine with head_dim 32 cannot chunk";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("--gpu-dtype f32"), std::string::npos) << e.what();
    }
}

// The prompt (whole with chunk 0, else in chunks of `chunk` against the staged K/V), then `steps`
// greedy decode steps; every step's logits, the prompt's last first.
std::vector<float> greedy_logits(gpu::GpuEngine& engine, const std::vector<int32_t>& prompt, int steps, int64_t chunk = 0) {
    const int32_t seq = engine.add_sequence();
    const auto n = static_cast<int64_t>(prompt.size());
    std::vector<float> logits;
    if (chunk > 0 && chunk < n) engine.begin_prompt(seq, n);
    const int64_t part = chunk > 0 ? chunk : n;
    for (int64_t pos0 = 0; pos0 < n; pos0 += part) {
        const int64_t len = std::min(part, n - pos0);
        const SequenceSpan span{seq, pos0, len, 0};
        const int64_t row[1] = {len - 1};
        engine.forward(std::span(prompt).subspan(static_cast<size_t>(pos0), static_cast<size_t>(len)), std::span(&span, 1),
                       pos0 + len == n ? std::span<const int64_t>(row) : std::span<const int64_t>(), logits);
    }
    std::vector<float> all = logits;
    for (int step = 0; step < steps; ++step) {
        const int32_t t[1] = {static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin())};
        const int64_t row[1] = {0};
        const SequenceSpan d{seq, engine.n_tokens(seq), 1, 0};
        engine.forward(t, std::span(&d, 1), row, logits);
        all.insert(all.end(), logits.begin(), logits.end());
    }
    return all;
}

// Where a prefilled layer's install runs (on the main stream after it, beside the next layer on
// the second stream, or there on a small grid that walks the pages: 1 and 3 blocks per KV head)
// changes no output: the install writes the same summaries, store blocks and slots either way.
TEST(GpuServingEngine, WhereTheInstallRunsChangesNoOutput) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const LoadedModel m = load_model((test::source_dir() / "tests/fixtures/models/llama31-hd128-f16").string());
    auto weights = std::make_shared<const gpu::GpuWeights>(m.config, m.model->weights(), gpu::GpuDtype::kF32);
    const auto prompt = random_tokens(300, m.config.n_vocab, 78);
    struct Placement {
        bool beside;
        int32_t ctas;
    };
    std::vector<std::vector<float>> runs;
    for (const Placement p : {Placement{false, 0}, Placement{true, 0}, Placement{true, 1}, Placement{true, 3}}) {
        gpu::GpuTuning tuning;
        tuning.prefill_install_beside = p.beside;
        tuning.prefill_install_ctas = p.ctas;
        gpu::GpuEngine engine(weights, mode_for(KvMode::kFreekv), 1, 320, tuning);
        runs.push_back(greedy_logits(engine, prompt, 6));  // decode reads what the install wrote
    }
    // NOTE: with a small grid cuBLAS runs on fewer SMs beside it and may sum in another order (f32
    // last bits, NMSE ~1e-12); a page installed wrong moves the logits by far more (NMSE ~1e-2).
    for (size_t i = 1; i < runs.size(); ++i) EXPECT_LE(test::nmse(runs[i], runs[0]), 1e-9) << "placement " << i;
}

// CUDA graphs (on by default; --no-cuda-graphs) replay the decode step's launches from a graph where its shape repeats, PDL
// (on by default; --no-pdl) launches the GEMVs as programmatic dependents (alone and inside the graphs), and
// --attn-fused-combine merges the attention's split-K partials in its last blocks (the prompt makes ~11 splits): the
// logits of 45 greedy steps after a 300-token prompt (page boundaries every 16 steps run directly,
// the steps between them from graphs) equal those of direct launches, bit for bit, in budget-only
// and full attention with bf16 weights (head_dim 128: the bf16 attention kernel).
TEST(GpuServingEngine, CudaGraphsReplayTheSameLogits) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const LoadedModel m = load_model((test::source_dir() / "tests/fixtures/models/llama31-hd128-f16").string());
    auto weights = std::make_shared<const gpu::GpuWeights>(m.config, m.model->weights(), gpu::GpuDtype::kBF16);
    const auto prompt = random_tokens(300, m.config.n_vocab, 91);
    for (KvMode kind : {KvMode::kBudgetOnly, KvMode::kFull}) {
        std::vector<std::vector<float>> runs;
        for (int variant : {0, 1, 2, 3, 4}) {  // direct; graphs; PDL; graphs with PDL; that with the fused combine
            gpu::GpuTuning tuning;
            tuning.cuda_graphs = variant % 2 == 1 || variant == 4;
            tuning.pdl = variant >= 2;
            tuning.attn_fused_combine = variant == 4;
            gpu::GpuEngine engine(weights, mode_for(kind), 1, 400, tuning);
            runs.push_back(greedy_logits(engine, prompt, 45));
        }
        for (size_t v = 1; v < runs.size(); ++v) {
            ASSERT_EQ(runs[0].size(), runs[v].size());
            size_t differ = 0, first = runs[0].size();
            float worst = 0.0f;
            for (size_t i = 0; i < runs[0].size(); ++i)
                if (runs[0][i] != runs[v][i]) {
                    ++differ;
                    first = std::min(first, i);
                    worst = std::max(worst, std::abs(runs[0][i] - runs[v][i]));
                }
            // Where and how much (a wrong input moves the logits by far more than a summation order's last bits).
            const size_t vocab = static_cast<size_t>(m.config.n_vocab);
            EXPECT_EQ(differ, 0u) << kv_mode_name(kind) << ": logits of variant " << v
                                  << " (1 graphs, 2 PDL, 3 both, 4 both + fused combine) differ from direct launches, first at step "
                                  << first / vocab << ", largest difference " << worst << ", NMSE " << test::nmse(runs[v], runs[0]);
        }
    }
}

// A run is a function of its inputs: bf16 engines repeated in every launch variant (CUDA graphs,
// PDL of the GEMVs and of the attention, the prefill's install beside the next layer or inline) after a whole or a chunked prompt
// give the logits of the most serialized variant (no graphs, no PDL, install inline) bit for bit,
// in full and freekv. A race between kernels shows as runs that differ from it now and then, so
// each variant runs several times and the table of differing runs is printed.
TEST(GpuServingEngine, RepeatedRunsAreBitIdenticalInEveryLaunchVariant) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const LoadedModel m = load_model((test::source_dir() / "tests/fixtures/models/llama31-hd128-f16").string());
    auto weights = std::make_shared<const gpu::GpuWeights>(m.config, m.model->weights(), gpu::GpuDtype::kBF16);
    const auto prompt = random_tokens(300, m.config.n_vocab, 77);
    const size_t vocab = static_cast<size_t>(m.config.n_vocab);
    struct Variant {
        const char* name;
        bool graphs, pdl, beside, attn_pdl = false, v_registers = false;
    };
    const Variant variants[] = {{"serial", false, false, false},
                                {"default (graphs, pdl, install beside)", true, true, true},
                                {"pdl", false, true, false},
                                {"graphs", true, false, false},
                                {"install beside", false, false, true},
                                {"attention pdl (--attn-pdl)", false, false, false, true},
                                {"default with --attn-pdl", true, true, true, true},
                                {"V in registers (--attn-v-registers)", false, false, false, false, true},
                                {"default with both", true, true, true, true, true}};
    constexpr int kRepeats = 4;
    for (KvMode kind : {KvMode::kFull, KvMode::kFreekv})
        for (bool chunked : {false, true}) {
            std::vector<float> reference;
            for (const Variant& v : variants) {
                int differing = 0;
                size_t first = SIZE_MAX;
                double worst = 0.0;
                for (int r = 0; r < kRepeats; ++r) {
                    gpu::GpuTuning tuning;
                    tuning.cuda_graphs = v.graphs;
                    tuning.pdl = v.pdl;
                    tuning.prefill_install_beside = v.beside;
                    tuning.attn_pdl = v.attn_pdl;
                    tuning.attn_v_registers = v.v_registers;
                    gpu::GpuEngine engine(weights, mode_for(kind), 1, 400, tuning);
                    const std::vector<float> run = greedy_logits(engine, prompt, 24, chunked ? 64 : 0);
                    if (reference.empty()) reference = run;
                    ASSERT_EQ(run.size(), reference.size());
                    for (size_t i = 0; i < run.size(); ++i)
                        if (run[i] != reference[i]) {
                            first = std::min(first, i / vocab);
                            ++differing;
                            worst = std::max(worst, test::nmse(run, reference));
                            break;
                        }
                }
                std::printf("%s, %s prompt, %s: %d of %d runs differ from the serial run%s\n", kv_mode_name(kind),
                            chunked ? "chunked" : "whole", v.name, differing, kRepeats,
                            differing > 0 ? fmt::format(" (first at logits row {}, NMSE up to {:.3g})", first, worst).c_str() : "");
                EXPECT_EQ(differing, 0) << kv_mode_name(kind) << (chunked ? ", chunked prompt, " : ", whole prompt, ") << v.name;
            }
        }
}

TEST(GpuServingEngine, AMemoryCapLowersTheBatchOrRefusesWithTheFlags) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const LoadedModel m = make_synthetic_model("tiny");
    auto weights = std::make_shared<const gpu::GpuWeights>(m.config, m.model->weights(), gpu::GpuDtype::kBF16);
    EngineConfig c = gpu_config(weights, KvMode::kFull, 16);
    c.n_ctx = 4096;
    const gpu::GpuMemoryPlan plan = gpu::plan_gpu_memory(m.config, c.kv_mode, 2, weights->bytes(), c.n_ctx);
    const double gib = static_cast<double>(int64_t{1} << 30);
    // Room for 3.5 sequences: 3 fit.
    c.gpu_memory_gib = static_cast<double>(plan.weight_bytes + plan.device_fixed + plan.prefill_bytes +
                                           plan.device_per_sequence * 7 / 2) / gib;
    {
        Engine engine(m, c);
        EXPECT_EQ(engine.config().max_batch, 3) << engine.memory_plan();
        EXPECT_NE(engine.memory_plan().find("only 3 of --max-batch 16"), std::string::npos) << engine.memory_plan();
        EXPECT_NE(engine.memory_plan().find("--gpu-memory-gib"), std::string::npos) << engine.memory_plan();
    }
    // freekv keeps only the budget on the GPU: all 16 fit in the same cap.
    EngineConfig f = c;
    f.kv_mode = mode_for(KvMode::kFreekv);
    {
        Engine engine(m, f);
        EXPECT_EQ(engine.config().max_batch, 16) << engine.memory_plan();
    }
    // A pinned-store cap too small for one sequence of freekv.
    f.cpu_kv_gib = 1e-6;
    try {
        Engine engine(m, f);
        ADD_FAILURE() << "a cpu store cap below one sequence must be refused";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("--cpu-kv-gib"), std::string::npos) << e.what();
    }
    // Not even one sequence of full KV in the cap.
    c.gpu_memory_gib = static_cast<double>(plan.weight_bytes + plan.device_per_sequence / 2) / gib;
    try {
        Engine engine(m, c);
        ADD_FAILURE() << "a cap below one sequence must be refused";
    } catch (const Error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("--gpu-memory-gib"), std::string::npos) << what;
        EXPECT_NE(what.find("-c/--ctx-size"), std::string::npos) << what;
    }
}

}  // namespace
}  // namespace freekv
