// cmd_serve.cpp: `freekv serve`: the model behind an HTTP server with the OpenAI completions and
// chat APIs (src/serve/completion_server.h), batching concurrent requests in one engine, under any
// KV mode, on the CPU or the GPU.
#include "app/commands.h"
#include "app/kv_flags.h"
#include "core/error.h"
#include "model/synthetic_model.h"
#include "serve/completion_server.h"

namespace freekv::app {

namespace {

struct ServeFlags {
    std::string model, host = "127.0.0.1", name;
    int port = 8080;
    std::string shape;
    int64_t n_ctx = 0, max_batch = 8, max_queue = 64, step_tokens = 2048, prefill_chunk = 0;
    double request_timeout_s = 0;
    double gpu_memory_gib = 0, cpu_kv_gib = 0;
    bool no_chat = false;
    KvFlags kv;
    RunFlags run;
    gpu::GpuTuning tuning;
    std::string diag = "off";
};

}  // namespace

Command register_serve(CLI::App& cmd) {
    auto f = std::make_shared<ServeFlags>();
    cmd.add_option("-m,--model", f->model, "model folder or .gguf file")->envname("FREEKV_ARG_MODEL");
    cmd.add_option("--shape", f->shape,
                   std::string("serve synthetic random weights of a named shape instead of -m (") + kNamedShapes +
                       "): no tokenizer, so prompts must be token-id arrays; for load tests");
    cmd.add_option("--host", f->host, "address to listen on (127.0.0.1; 0.0.0.0 for every interface)")->envname("FREEKV_ARG_HOST");
    cmd.add_option("--port", f->port, "port to listen on (8080; 0 picks a free one)")
        ->envname("FREEKV_ARG_PORT")->check(CLI::Range(0, 65535));
    cmd.add_option("--name", f->name, "model name reported by the API (default: the model folder's name)");
    cmd.add_option("-c,--ctx-size", f->n_ctx, "context per request, prompt plus completion (0 = the model's trained context)")
        ->envname("FREEKV_ARG_CTX_SIZE")->check(CLI::Range(int64_t{0}, int64_t{1} << 24));
    cmd.add_option("--max-batch", f->max_batch,
                   "sequences decoded together (8); memory is reserved for this many of -c tokens each")
        ->envname("FREEKV_ARG_MAX_BATCH")->check(CLI::Range(int64_t{1}, int64_t{4096}));
    cmd.add_option("--max-queue", f->max_queue, "requests that may wait for a slot (64); more get HTTP 429")
        ->envname("FREEKV_ARG_MAX_QUEUE")->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
    cmd.add_option("--step-tokens", f->step_tokens,
                   "tokens per engine step, decode tokens plus prompt chunks (2048); a step's first chunk runs "
                   "even when it goes over")
        ->envname("FREEKV_ARG_STEP_TOKENS")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
    cmd.add_option("--prefill-chunk", f->prefill_chunk,
                   "prompt tokens per chunk, prefilled between decode steps (default 512 on the CPU, 2048 on the GPU); "
                   "smaller chunks stall running requests less and reach the first token later")
        ->envname("FREEKV_ARG_PREFILL_CHUNK")->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
    cmd.add_option("--request-timeout", f->request_timeout_s,
                   "seconds a request may wait and generate before it ends with HTTP 504 (0: no limit)")
        ->envname("FREEKV_ARG_REQUEST_TIMEOUT")->check(CLI::NonNegativeNumber);
    cmd.add_flag("--no-chat", f->no_chat,
                 "serve completions only (needed when tokenizer_config.json has a chat template freekv does not render)");
    cmd.add_option("--gpu-memory-gib", f->gpu_memory_gib,
                   "GPU memory the server may use, weights included (default: what is free); --max-batch is lowered "
                   "to the sequences that fit")
        ->envname("FREEKV_ARG_GPU_MEMORY_GIB")->check(CLI::PositiveNumber);
    cmd.add_option("--cpu-kv-gib", f->cpu_kv_gib,
                   "pinned system RAM for the CPU KV store of the offloading modes on the GPU (default: up to half "
                   "of the RAM); --max-batch is lowered to the sequences that fit")
        ->envname("FREEKV_ARG_CPU_KV_GIB")->check(CLI::PositiveNumber);
    f->kv.add_to(cmd);
    f->run.add_to(cmd);
    add_gpu_tuning_flags(cmd, f->tuning, f->diag);
    return [f]() -> int {
        f->run.apply();
        finish_gpu_tuning(f->tuning, f->diag);
        if (f->model.empty() == f->shape.empty()) FREEKV_FAIL("serve needs one of -m/--model or --shape");
        LoadedModel m = f->model.empty() ? make_synthetic_model(f->shape) : load_model(f->model);
        fmt::print(stderr, "{}\n", m.summary());
        serve::ServerOptions options;
        options.engine.gpu = f->run.gpu_weights(m);
        options.engine.tensor_parallel = f->run.tensor_parallel;
        options.engine.gpu_devices = f->run.gpu_ranks.devices;
        options.engine.gpu_dtype = f->run.gpu_ranks.dtype;
        options.engine.n_ctx = f->n_ctx;
        options.engine.kv_mode = f->kv.resolve();
        options.engine.max_batch = f->max_batch;
        options.engine.max_waiting = f->max_queue;
        options.engine.step_tokens = f->step_tokens;
        options.engine.prefill_chunk = f->prefill_chunk;
        options.request_timeout_s = f->request_timeout_s;
        options.engine.gpu_memory_gib = f->gpu_memory_gib;
        options.engine.cpu_kv_gib = f->cpu_kv_gib;
        options.engine.gpu_tuning = f->tuning;
        if (options.engine.gpu) fmt::print(stderr, "serve: {}\n", f->tuning.describe());
        fmt::print(stderr, "{}\n", options.engine.kv_mode.describe());
        options.model_name = f->name;
        options.no_chat = f->no_chat;
        if (options.model_name.empty() && !f->shape.empty()) options.model_name = f->shape;
        if (options.model_name.empty()) {
            const std::filesystem::path p(f->model);
            options.model_name = (p.has_filename() ? p.filename() : p.parent_path().filename()).string();
        }
        serve::CompletionServer server(m, options);
        const int port = server.bind(f->host, f->port);
        const EngineConfig& e = server.engine().config();
        if (!server.engine().memory_plan().empty()) fmt::print(stderr, "serve: {}\n", server.engine().memory_plan());
        fmt::print(stderr, "serve: {} on http://{}:{} | {} | {} slots of {} tokens, queue {} | chat format {}\n",
                   options.model_name, f->host, port,
                   fmt::format("{}{}", server.engine().on_gpu() ? "cuda" : "cpu",
                               e.tensor_parallel > 1 ? fmt::format(" x {} tensor-parallel ranks", e.tensor_parallel) : ""),
                   e.max_batch, e.n_ctx,
                   e.max_waiting, server.chat_format());
        server.run();
        return 0;
    };
}

}  // namespace freekv::app
