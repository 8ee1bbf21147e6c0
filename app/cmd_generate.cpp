// cmd_generate.cpp: `freekv generate`: prompt in, text streamed to stdout, perf block to stderr.
#include <cstdio>
#include <random>

#include "app/commands.h"
#include "app/kv_flags.h"
#include "core/error.h"
#include "core/log.h"
#include "core/progress.h"
#include "engine/generator.h"
#include "engine/tensor_parallel_runner.h"
#include "tokenizer/streaming_decoder.h"

namespace freekv::app {

namespace {

struct GenerateFlags {
    std::string model, prompt, file, device = "auto";
    int64_t n_predict = 128, n_ctx = 0;
    float temp = -1, top_p = -1;
    int top_k = -1, threads = 0, tensor_parallel = 1;
    std::string tp_gpus;
    int64_t seed = -1;
    bool no_progress = false, kv_stats = false;
    KvFlags kv;
    std::string rope_freq_dtype = "f32", gpu_dtype = "bf16";
};

void print_perf(const GenerateStats& s) {
    auto per = [](double ms, int64_t n) { return n > 0 ? ms / static_cast<double>(n) : 0.0; };
    auto rate = [](double ms, int64_t n) { return ms > 0 ? 1000.0 * static_cast<double>(n) / ms : 0.0; };
    const int64_t n_eval = std::max<int64_t>(s.n_generated - 1, 0);
    fmt::print(stderr, "\nperf: prompt eval time = {:10.2f} ms / {:5} tokens ({:8.2f} ms per token, {:8.2f} tokens per second)\n",
               s.prompt_ms, s.n_prompt, per(s.prompt_ms, s.n_prompt), rate(s.prompt_ms, s.n_prompt));
    fmt::print(stderr, "perf: eval time        = {:10.2f} ms / {:5} runs   ({:8.2f} ms per token, {:8.2f} tokens per second)\n",
               s.decode_ms, n_eval, per(s.decode_ms, n_eval), rate(s.decode_ms, n_eval));
    std::vector<double> steps = s.step_ms;
    std::sort(steps.begin(), steps.end());
    const double p99 = steps.empty() ? 0.0 : steps[std::min(steps.size() - 1, steps.size() * 99 / 100)];
    fmt::print(stderr, "perf: TTFT {:.2f} ms | TPOT {:.2f} ms mean, {:.2f} ms p99\n", s.ttft_ms, per(s.decode_ms, n_eval), p99);
}

}  // namespace

Command register_generate(CLI::App& cmd) {
    auto f = std::make_shared<GenerateFlags>();
    add_model_flag(cmd, f->model);
    auto* p = cmd.add_option("-p,--prompt", f->prompt, "prompt text")->envname("FREEKV_ARG_PROMPT");
    auto* file = cmd.add_option("-f,--file", f->file, "prompt file")->envname("FREEKV_ARG_FILE");
    p->excludes(file);
    cmd.add_option("-n,--n-predict", f->n_predict, "tokens to generate (-1 = until EOS or the context is full)")
        ->envname("FREEKV_ARG_N_PREDICT")->check(CLI::Range(int64_t{-1}, int64_t{1} << 30));
    cmd.add_option("-c,--ctx-size", f->n_ctx, "context length (0 = the model's trained context)")
        ->envname("FREEKV_ARG_CTX_SIZE")->check(CLI::Range(int64_t{0}, int64_t{1} << 24));
    cmd.add_option("--temp", f->temp, "temperature (0 = greedy; default generation_config.json, else 0.8)")
        ->envname("FREEKV_ARG_TEMP")->check(CLI::Range(0.0f, 100.0f));
    cmd.add_option("--top-k", f->top_k, "top-k (0 = off; default generation_config.json, else 40)")
        ->envname("FREEKV_ARG_TOP_K")->check(CLI::Range(0, 1 << 24));
    cmd.add_option("--top-p", f->top_p, "top-p (1 = off; default generation_config.json, else 0.95)")
        ->envname("FREEKV_ARG_TOP_P")->check(CLI::Range(0.0f, 1.0f));
    cmd.add_option("-s,--seed", f->seed, "seed (-1 = random; the seed used is logged)")->envname("FREEKV_ARG_SEED");
    f->kv.add_to(cmd);
    cmd.add_flag("--kv-stats", f->kv_stats, "print correction and recall counters at the end");
    cmd.add_flag("--no-progress", f->no_progress, "no progress line");
    add_threads_flag(cmd, f->threads);
    add_tensor_parallel_flag(cmd, f->tensor_parallel, &f->tp_gpus);
    add_device_flag(cmd, f->device);
    add_gpu_dtype_flag(cmd, f->gpu_dtype);
    cmd.add_option("--rope-freq-dtype", f->rope_freq_dtype,
                   "rotary frequency precision: f32 (exact) or checkpoint (rounded to the stored dtype, as transformers "
                   "does after loading a bf16 checkpoint in bf16)")
        ->envname("FREEKV_ARG_ROPE_FREQ_DTYPE")->check(CLI::IsMember({"f32", "checkpoint"}));
    return [f]() -> int {
        apply_threads(f->threads);
        const std::string backend = resolve_device(f->device);
        const GpuRanks gpu_ranks = resolve_gpu_ranks(f->tensor_parallel, backend, f->tp_gpus, f->gpu_dtype);  // before any weights go to a GPU
        check_tensor_parallel(f->tensor_parallel, false, gpu_ranks.devices.size());
        ProgressLine::set_enabled(!f->no_progress);
        if (f->prompt.empty() && f->file.empty()) FREEKV_FAIL("no prompt: pass -p TEXT or -f FILE");
        const std::string text = read_prompt(f->prompt, f->file);
        LoadOptions options;
        options.rope_freq_checkpoint_dtype = f->rope_freq_dtype == "checkpoint";
        LoadedModel m = load_model(f->model, options);
        fmt::print(stderr, "{}\n", m.summary());
        if (!m.tokenizer) FREEKV_FAIL("{} has no tokenizer.json; freekv needs it to turn the prompt into tokens", f->model);
        GenerateParams params;
        if (backend == "cuda" && gpu_ranks.devices.empty()) params.gpu = make_gpu_weights(m, f->gpu_dtype);
        params.tensor_parallel = f->tensor_parallel;
        params.gpu_ranks = gpu_ranks;
        params.n_ctx = f->n_ctx;
        params.n_predict = f->n_predict;
        params.kv_mode = f->kv.resolve();
        fmt::print(stderr, "{}\n", params.kv_mode.describe());
        params.progress = !f->no_progress;
        params.sampling.temperature = f->temp >= 0 ? f->temp : m.generation.temperature.value_or(0.8f);
        params.sampling.top_k = f->top_k >= 0 ? f->top_k : m.generation.top_k.value_or(40);
        params.sampling.top_p = f->top_p >= 0 ? f->top_p : m.generation.top_p.value_or(0.95f);
        params.sampling.seed = f->seed >= 0 ? static_cast<uint64_t>(f->seed) : std::random_device{}();
        fmt::print(stderr, "sampling: temp {} | top-k {} | top-p {} | seed {}\n", params.sampling.temperature,
                   params.sampling.top_k, params.sampling.top_p, params.sampling.seed);
        const std::vector<int32_t> prompt = m.tokenizer->encode(text, /*add_special=*/true);
        StreamingDecoder decoder(*m.tokenizer);
        const GenerateStats stats = generate(m, prompt, params, [&](int32_t id) {
            std::fputs(decoder.push(id).c_str(), stdout);
            std::fflush(stdout);
            return true;
        });
        std::fputs(decoder.flush().c_str(), stdout);
        std::fputs("\n", stdout);
        print_perf(stats);
        if (f->kv_stats || params.kv_mode.mode != KvMode::kFull) {
            const KvStats& k = stats.kv;
            fmt::print(stderr, "kv:   correction {:.1f}% of sparse layer-steps | {:.2f} pages/step recalled ({:.1f} MiB sync, "
                       "{:.1f} MiB background read from the store)\n", 100.0 * k.correction_rate(), k.pages_per_step(),
                       static_cast<double>(k.transfer.sync_bytes) / 1048576.0,
                       static_cast<double>(k.transfer.background_bytes) / 1048576.0);
            if (k.store_bytes_per_token > 0)
                fmt::print(stderr, "kv:   CPU store {} ({:.0f} bytes per token of context)\n",
                           store_dtype_name(params.kv_mode.store_code), k.store_bytes_per_token);
            if (f->kv_stats && !k.sparse_pairs.empty()) {
                const auto n_kv = static_cast<size_t>(m.config.n_head_kv);
                for (size_t il = 0; il < k.sparse_pairs.size(); ++il) {
                    std::string heads;
                    for (size_t h = 0; h < n_kv; ++h) heads += fmt::format(" {:.2f}", k.layer_head_pages_per_step(il, h, n_kv));
                    fmt::print(stderr, "kv:   layer {:2} | correction {:5.1f}% | pages/step per KV head:{}\n", il,
                               100.0 * k.layer_correction_rate(il), heads);
                }
            }
        }
        return 0;
    };
}

}  // namespace freekv::app
