// cmd_bench_serve.cpp: `freekv bench-serve`: a load generator against a running `freekv serve` (or
// any OpenAI-compatible server): concurrent streaming requests at each --concurrency level in
// turn, one summary per level on stdout and optionally one JSON row per level in --json.
#include <fstream>

#include "app/commands.h"
#include "core/error.h"
#include "serve/load_generator.h"

namespace freekv::app {

namespace {

struct BenchServeFlags {
    std::string host = "127.0.0.1", concurrency = "1", json, label;
    int port = 8080;
    int64_t requests = 0, prompt_tokens = 512, max_tokens = 128;
    double request_rate = 0, wait_ready_s = 0, timeout_s = 3600;
    int32_t vocab = 1000;
    uint64_t seed = 1;
    bool allow_eos = false;
};

}  // namespace

Command register_bench_serve(CLI::App& cmd) {
    auto f = std::make_shared<BenchServeFlags>();
    cmd.add_option("--host", f->host, "server address (127.0.0.1)");
    cmd.add_option("--port", f->port, "server port (8080)")->check(CLI::Range(1, 65535));
    cmd.add_option("--concurrency", f->concurrency, "requests in flight, a comma-separated list run in turn (1)");
    cmd.add_option("--requests", f->requests, "requests per level (default: the level's concurrency)")
        ->check(CLI::Range(int64_t{0}, int64_t{1} << 24));
    cmd.add_option("--request-rate", f->request_rate, "Poisson arrivals per second (default 0: all at once)")
        ->check(CLI::NonNegativeNumber);
    cmd.add_option("--prompt-tokens", f->prompt_tokens, "random token ids per prompt (512)")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
    cmd.add_option("--max-tokens", f->max_tokens, "tokens to generate per request (128)")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
    cmd.add_option("--vocab", f->vocab, "prompt ids are drawn from [0, vocab) (1000)")->check(CLI::Range(2, 1 << 24));
    cmd.add_option("--seed", f->seed, "seed of the prompts and arrivals (1)");
    cmd.add_flag("--allow-eos", f->allow_eos, "let requests end at the model's end tokens (default: ignore_eos)");
    cmd.add_option("--wait-ready", f->wait_ready_s, "wait up to this many seconds for GET /health to answer 200 first")
        ->check(CLI::NonNegativeNumber);
    cmd.add_option("--timeout", f->timeout_s, "seconds a request may take (3600)")->check(CLI::PositiveNumber);
    cmd.add_option("--json", f->json, "append one JSON row per level to this file");
    cmd.add_option("--label", f->label, "a name recorded in every JSON row (say, the server's --kv-mode)");
    return [f]() -> int {
        const std::vector<int64_t> levels = parse_int_list(f->concurrency, "--concurrency", 1, 1 << 16);
        if (f->wait_ready_s > 0 && !serve::wait_until_ready(f->host, f->port, f->wait_ready_s))
            FREEKV_FAIL("bench-serve: http://{}:{}/health did not answer 200 within {} s (--wait-ready)", f->host, f->port,
                        f->wait_ready_s);
        int failed = 0;
        for (int64_t level : levels) {
            serve::LoadConfig c;
            c.host = f->host;
            c.port = f->port;
            c.concurrency = level;
            c.n_requests = f->requests;
            c.request_rate = f->request_rate;
            c.prompt_tokens = f->prompt_tokens;
            c.max_tokens = f->max_tokens;
            c.vocab = f->vocab;
            c.seed = f->seed;
            c.ignore_eos = !f->allow_eos;
            c.timeout_s = f->timeout_s;
            const serve::LoadReport r = serve::run_load(c);
            fmt::print("{}{}", f->label.empty() ? "" : f->label + ": ", r.describe());
            std::fflush(stdout);
            if (!f->json.empty()) {
                std::ofstream out(f->json, std::ios::app);
                FREEKV_CHECK(out.good(), "bench-serve: cannot append to --json {}", f->json);
                std::string row = r.to_json();
                row.insert(1, fmt::format(R"("label":"{}",)", f->label));
                out << row << "\n";
            }
            if (r.failed > 0) failed = 1;
        }
        return failed;
    };
}

}  // namespace freekv::app
