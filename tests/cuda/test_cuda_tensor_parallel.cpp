// test_cuda_tensor_parallel.cpp: tensor parallelism on the GPU (engine/gpu_tensor_parallel_runner.h).
// On one GPU, 2 and 4 ranks sharing it (sums staged through host memory) decode the tokens of the
// unsplit GPU runner in full, freekv and budget-only (f32 weights: the numbers of one rank up to
// summation order; bf16: within its rounding), with the per-head recall counters of one rank in head
// order; a group of every visible GPU sums with NCCL (one GPU: one rank, whose logits must be the
// unsplit runner's bit for bit, its CUDA graphs capturing the all-reduce); the engine serves
// concurrent requests with 2 ranks as the unsplit engine does.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "core/error.h"
#include "engine/bench.h"
#include "engine/engine.h"
#include "engine/gpu_tensor_parallel_runner.h"
#include "engine/model_runner.h"
#include "gpu/gpu_collectives.h"
#include "gpu/gpu_engine.h"
#include "model/synthetic_model.h"
#include "decode_helpers.h"
#include "test_util.h"

namespace freekv {
namespace {

bool have_gpu() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// 4 KV heads (up to 4 ranks), head_dim 128 (the flash prefill and the staged decode attention).
LoadedModel split_model() {
    ModelConfig c = named_shape("tiny");
    c.n_layer = 2, c.n_embd = 512, c.n_ff = 1024, c.n_head = 8, c.n_head_kv = 4, c.head_dim = 128, c.n_vocab = 1024;
    c.n_ctx_train = 4096;
    return make_synthetic_model(c, "gpu-tp");
}

KvModeConfig mode_for(KvMode kind) { return test::small_budget_mode(kind); }

// Two sequences, each prompt prefilled whole, then 24 greedy steps of both (decode_helpers.h).
test::Decoded decode_two(ModelRunner& runner, int64_t n_vocab) { return test::decode_two(runner, n_vocab, 900, 0); }

test::Decoded unsplit(const LoadedModel& m, KvMode kind, gpu::GpuDtype dtype) {
    auto weights = std::make_shared<const gpu::GpuWeights>(m.config, m.model->weights(), dtype);
    auto runner = make_model_runner(m, mode_for(kind), 2, 240, weights);
    return decode_two(*runner, m.config.n_vocab);
}

TEST(GpuTensorParallel, RanksSharingOneGpuDecodeTheUnsplitTokens) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const LoadedModel m = split_model();
    for (KvMode kind : {KvMode::kFull, KvMode::kFreekv, KvMode::kBudgetOnly}) {
        const test::Decoded one = unsplit(m, kind, gpu::GpuDtype::kF32);
        for (int n : {2, 4}) {
            const std::string what = fmt::format("{}, {} ranks on GPU 0, f32", kv_mode_name(kind), n);
            auto runner = make_gpu_tensor_parallel_runner(m, mode_for(kind), 2, 240, gpu::GpuDtype::kF32, {},
                                                          std::vector<int>(static_cast<size_t>(n), 0));
            const test::Decoded split = decode_two(*runner, m.config.n_vocab);
            EXPECT_EQ(split.tokens, one.tokens) << what;
            ASSERT_EQ(split.logits.size(), one.logits.size()) << what;
            // The ranks' partial products are added in another order than one GEMV's: fp32 rounding.
            EXPECT_LE(test::nmse(split.logits, one.logits), 1e-9) << what;
            if (kind == KvMode::kFull) continue;
            EXPECT_EQ(split.stats.recalled_sync, one.stats.recalled_sync) << what;
            EXPECT_EQ(split.stats.recalled_background, one.stats.recalled_background) << what;
            EXPECT_EQ(split.stats.head_flags, one.stats.head_flags) << what;
        }
    }
    // bf16 weights and KV: the split rounds its partial products to bf16 inputs at other points than
    // one rank does, so only closeness is asserted (the f32 runs above are the exact check), on the
    // unsplit run's tokens: a random model's logits are nearly flat, and a near tie that the rounding
    // flips would otherwise compare two different continuations.
    const test::Decoded one = unsplit(m, KvMode::kFreekv, gpu::GpuDtype::kBF16);
    auto runner = make_gpu_tensor_parallel_runner(m, mode_for(KvMode::kFreekv), 2, 240, gpu::GpuDtype::kBF16, {}, {0, 0});
    const test::Decoded split = test::decode_two(*runner, m.config.n_vocab, 900, 0, 24, &one.tokens);
    ASSERT_EQ(split.logits.size(), one.logits.size());
    EXPECT_LE(test::nmse(split.logits, one.logits), 1e-3) << "freekv, 2 ranks on GPU 0, bf16";
}

TEST(GpuTensorParallel, EveryVisibleGpuSumsWithNccl) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const LoadedModel m = split_model();
    const int n = std::min(gpu::device_count(), 4) == 3 ? 2 : std::min(gpu::device_count(), 4);  // a divisor of 4 KV heads
    std::vector<int> devices(static_cast<size_t>(n));
    for (int d = 0; d < n; ++d) devices[static_cast<size_t>(d)] = d;
    std::unique_ptr<ModelRunner> runner;
    try {
        runner = make_gpu_tensor_parallel_runner(m, mode_for(KvMode::kFreekv), 2, 240, gpu::GpuDtype::kF32, {}, devices);
    } catch (const Error& e) {
        if (std::string(e.what()).find("libnccl.so.2") != std::string::npos) GTEST_SKIP() << e.what();
        throw;
    }
    const test::Decoded split = decode_two(*runner, m.config.n_vocab);
    const test::Decoded one = unsplit(m, KvMode::kFreekv, gpu::GpuDtype::kF32);
    EXPECT_EQ(split.tokens, one.tokens) << n << " GPUs";
    if (n == 1) {
        // One rank: NCCL's sum of one is the identity, so nothing may differ.
        EXPECT_EQ(split.logits, one.logits);
    } else {
        EXPECT_LE(test::nmse(split.logits, one.logits), 1e-9) << n << " GPUs";
    }
}

// Three requests at once through the engine (scheduler, chunked prefill between decode steps, the
// batch sized per GPU) with 2 ranks sharing GPU 0: each request's greedy tokens are the unsplit GPU
// engine's (f32).
std::vector<std::vector<int32_t>> serve_three(const LoadedModel& m, EngineConfig config) {
    config.kv_mode = mode_for(KvMode::kFreekv);
    config.n_ctx = 512;
    config.max_batch = 3;
    config.prefill_chunk = 128;
    std::vector<std::vector<int32_t>> prompts;
    for (uint32_t i = 0; i < 3; ++i) prompts.push_back(test::random_tokens(150 + 60 * i, m.config.n_vocab, 70 + i));
    return test::serve_greedy(m, config, prompts, 20);
}

TEST(GpuTensorParallel, TheEngineServesRanksLikeTheUnsplitEngine) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const LoadedModel m = split_model();
    EngineConfig whole;
    whole.gpu = std::make_shared<const gpu::GpuWeights>(m.config, m.model->weights(), gpu::GpuDtype::kF32);
    EngineConfig ranks;
    ranks.tensor_parallel = 2;
    ranks.gpu_devices = {0, 0};
    ranks.gpu_dtype = gpu::GpuDtype::kF32;
    const auto one = serve_three(m, whole), two = serve_three(m, ranks);
    EXPECT_EQ(one[2].size(), 20u);
    EXPECT_EQ(two, one);
}

// freekv bench on 2 ranks sharing GPU 0 (p.gpu_ranks): every cell runs, its counters are the ranks'
// merged ones (recall happens, the pinned stores of both ranks are counted), its step time is there.
TEST(GpuTensorParallel, TheBenchRunsRanks) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const LoadedModel m = split_model();
    BenchParams p;
    p.labels = {"budget-only", "freekv"};
    p.modes = {mode_for(KvMode::kBudgetOnly), mode_for(KvMode::kFreekv)};
    p.depths = {600};
    p.batches = {1, 2};
    p.n_gen = 4;
    p.n_breakdown = 4;
    p.reps = 1;
    p.synthetic_kv = true;
    p.gpu_ranks.devices = {0, 0};
    p.gpu_ranks.dtype = gpu::GpuDtype::kBF16;
    const std::vector<BenchRow> rows = run_bench(m, p);
    ASSERT_EQ(rows.size(), 4u);
    for (const BenchRow& r : rows) {
        const std::string what = fmt::format("{} b{}", r.label, r.batch);
        EXPECT_FALSE(r.oom) << what << ": " << r.error;
        EXPECT_GT(r.step_ms_median, 0.0) << what;
        EXPECT_GT(r.host_mib, 0.0) << what;
        if (r.label == "freekv") {
            EXPECT_GT(r.pages_per_step, 0.0) << what;
            EXPECT_GT(r.recall_gbps, 0.0) << what;
            EXPECT_DOUBLE_EQ(r.recall_gbps_per_gpu, r.recall_gbps / 2) << what;
        }
    }
}

TEST(GpuTensorParallel, ASplitTheGpusCannotTakeIsRefused) {
    if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
    const LoadedModel m = split_model();
    try {
        make_gpu_tensor_parallel_runner(m, mode_for(KvMode::kFull), 1, 64, gpu::GpuDtype::kF32, {}, {0, 0, 0});
        FAIL() << "4 KV heads over 3 ranks";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("--tensor-parallel 3"), std::string::npos) << e.what();
    }
    try {
        make_gpu_tensor_parallel_runner(m, mode_for(KvMode::kFull), 1, 64, gpu::GpuDtype::kF32, {}, {0, 99});
        FAIL() << "GPU 99";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("GPU 99 does not exist"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace freekv
