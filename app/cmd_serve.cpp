// cmd_serve.cpp: `freekv serve`: the model behind an HTTP server with the OpenAI completions API
// (src/serve/completion_server.h), under any KV mode, on the CPU or the GPU.
#include "app/commands.h"
#include "app/kv_flags.h"
#include "core/error.h"
#include "serve/completion_server.h"

namespace freekv::app {

namespace {

struct ServeFlags {
    std::string model, host = "127.0.0.1", name;
    int port = 8080;
    int64_t n_ctx = 0;
    KvFlags kv;
    RunFlags run;
};

}  // namespace

Command register_serve(CLI::App& cmd) {
    auto f = std::make_shared<ServeFlags>();
    add_model_flag(cmd, f->model);
    cmd.add_option("--host", f->host, "address to listen on (127.0.0.1; 0.0.0.0 for every interface)")->envname("FREEKV_ARG_HOST");
    cmd.add_option("--port", f->port, "port to listen on (8080; 0 picks a free one)")
        ->envname("FREEKV_ARG_PORT")->check(CLI::Range(0, 65535));
    cmd.add_option("--name", f->name, "model name reported by the API (default: the model folder's name)");
    cmd.add_option("-c,--ctx-size", f->n_ctx, "context per request, prompt plus completion (0 = the model's trained context)")
        ->envname("FREEKV_ARG_CTX_SIZE")->check(CLI::Range(int64_t{0}, int64_t{1} << 24));
    f->kv.add_to(cmd);
    f->run.add_to(cmd);
    return [f]() -> int {
        f->run.apply();
        LoadedModel m = load_model(f->model);
        fmt::print(stderr, "{}\n", m.summary());
        GenerateParams base;
        base.gpu = f->run.gpu_weights(m);
        base.n_ctx = f->n_ctx;
        base.kv_mode = f->kv.resolve();
        base.progress = false;
        fmt::print(stderr, "{}\n", base.kv_mode.describe());
        std::string name = f->name;
        if (name.empty()) {
            const std::filesystem::path p(f->model);
            name = (p.has_filename() ? p.filename() : p.parent_path().filename()).string();
        }
        serve::CompletionServer server(m, base, name);
        const int port = server.bind(f->host, f->port);
        fmt::print(stderr, "serve: {} on http://{}:{} (POST /v1/completions, GET /v1/models, GET /health)\n", name, f->host, port);
        server.run();
        return 0;
    };
}

}  // namespace freekv::app
