// load_generator.h: `freekv bench-serve`'s client side: N concurrent streaming completion requests
// against a running server (any OpenAI-compatible one that streams `token_ids` or text chunks),
// at a fixed concurrency or with Poisson arrivals, timing every streamed chunk. Modelled on what
// vLLM's benchmark_serving reports: request throughput, output tokens/s, TTFT, TPOT, ITL, E2E.
// Invariants:
//   - prompts are random token ids in [first_id, vocab), a pure function of (seed, request index);
//   - a request counts as ok only with HTTP 200, a [DONE] and no error event; the others carry
//     the reason and are left out of every latency percentile;
//   - TTFT runs from sending the request to its first token; TPOT is (E2E - TTFT) / (tokens - 1);
//     ITL is every gap between two consecutive tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace freekv::serve {

struct LoadConfig {
    std::string host = "127.0.0.1";
    int port = 8080;
    int64_t concurrency = 1;     // requests in flight at most
    int64_t n_requests = 0;      // 0: as many as `concurrency`
    double request_rate = 0;     // Poisson arrivals per second; 0: all at once (up to concurrency)
    int64_t prompt_tokens = 512;
    int64_t max_tokens = 128;
    int32_t vocab = 1000, first_id = 0;
    bool ignore_eos = true;      // every request generates max_tokens
    uint64_t seed = 1;
    double timeout_s = 3600;     // per request
};

struct RequestTiming {
    bool ok = false;
    std::string error;
    int64_t n_prompt = 0, n_output = 0;
    double start_s = 0;          // since the run started
    double ttft_ms = 0, e2e_ms = 0, tpot_ms = 0;
    std::vector<double> itl_ms;
};

struct LatencySummary {
    double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
    int64_t n = 0;
};
/// Mean, percentiles (linear interpolation between ranks) and max; all 0 when empty.
LatencySummary summarize(std::vector<double> values);

struct LoadReport {
    LoadConfig config;
    double duration_s = 0;
    int64_t ok = 0, failed = 0, output_tokens = 0, prompt_tokens = 0;
    double request_per_s = 0, output_tok_per_s = 0, total_tok_per_s = 0;
    LatencySummary ttft, tpot, itl, e2e;
    std::vector<RequestTiming> requests;
    std::vector<std::string> errors;  // the distinct failure reasons, with counts

    /// A few lines for a terminal.
    std::string describe() const;
    /// One JSON object (no per-request detail).
    std::string to_json() const;
};

/// Runs the load; throws Error only for a bad config (failed requests are in the report).
LoadReport run_load(const LoadConfig& config);

/// Polls GET /health until 200 or timeout_s passes; false on timeout.
bool wait_until_ready(const std::string& host, int port, double timeout_s);

}  // namespace freekv::serve
