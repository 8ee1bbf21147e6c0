// load_generator.cpp: the bench-serve client (see load_generator.h): one thread per concurrent
// stream, each with its own keep-alive connection, pulling request indices from a shared counter.
#include "serve/load_generator.h"

#include <fmt/format.h>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <thread>

#include "core/error.h"

namespace freekv::serve {

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

std::vector<int32_t> prompt_of(const LoadConfig& c, int64_t index) {
    std::mt19937_64 rng(c.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(index));
    std::uniform_int_distribution<int32_t> id(c.first_id, c.vocab - 1);
    std::vector<int32_t> p(static_cast<size_t>(c.prompt_tokens));
    for (auto& t : p) t = id(rng);
    return p;
}

// Reads server-sent events as they arrive; counts tokens per event and notes [DONE] and errors.
class EventReader {
public:
    // Returns the tokens in the new complete events of `data`.
    int64_t feed(const char* data, size_t n) {
        buffer_.append(data, n);
        int64_t tokens = 0;
        for (size_t end; (end = buffer_.find("\n\n")) != std::string::npos;) {
            const std::string event = buffer_.substr(0, end);
            buffer_.erase(0, end + 2);
            if (event.rfind("data: ", 0) != 0) continue;
            const std::string payload = event.substr(6);
            if (payload == "[DONE]") {
                done_ = true;
                continue;
            }
            const json j = json::parse(payload, nullptr, /*allow_exceptions=*/false);
            if (j.is_discarded()) {
                error_ = "an event is not JSON: " + payload.substr(0, 200);
                continue;
            }
            if (j.contains("error")) {
                error_ = j["error"].value("message", j["error"].dump());
                continue;
            }
            if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].empty()) continue;
            const json& ch = j["choices"][0];
            if (auto ids = ch.find("token_ids"); ids != ch.end() && ids->is_array())
                tokens += static_cast<int64_t>(ids->size());
            else if (ch.value("text", std::string{}).size() > 0 ||
                     (ch.contains("delta") && ch["delta"].value("content", std::string{}).size() > 0))
                tokens += 1;  // a server without token_ids: one token per text chunk
        }
        return tokens;
    }
    bool done() const { return done_; }
    const std::string& error() const { return error_; }
    const std::string& rest() const { return buffer_; }

private:
    std::string buffer_, error_;
    bool done_ = false;
};

RequestTiming run_one(httplib::Client& client, const LoadConfig& c, int64_t index, Clock::time_point t0) {
    RequestTiming r;
    const std::vector<int32_t> prompt = prompt_of(c, index);
    r.n_prompt = static_cast<int64_t>(prompt.size());
    json body{{"prompt", prompt}, {"max_tokens", c.max_tokens}, {"stream", true}, {"temperature", 0.0},
              {"ignore_eos", c.ignore_eos}};
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    EventReader events;
    const Clock::time_point sent = Clock::now();
    Clock::time_point last = sent;
    r.start_s = std::chrono::duration<double>(sent - t0).count();
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
        const int64_t got = events.feed(data, n);
        if (got > 0) {
            const Clock::time_point now = Clock::now();
            if (r.n_output == 0)
                r.ttft_ms = ms_between(sent, now);
            else
                r.itl_ms.push_back(ms_between(last, now));  // a chunk of several tokens counts as one gap
            last = now;
            r.n_output += got;
        }
        return true;
    };
    httplib::Response res;
    httplib::Error err = httplib::Error::Success;
    const bool sent_ok = client.send(req, res, err);
    r.e2e_ms = ms_between(sent, Clock::now());
    if (!sent_ok) {
        r.error = "connection: " + httplib::to_string(err);
    } else if (res.status != 200) {
        const json j = json::parse(events.rest() + res.body, nullptr, false);
        r.error = fmt::format("HTTP {}: {}", res.status,
                              !j.is_discarded() && j.contains("error") ? j["error"].value("message", std::string{})
                                                                       : (events.rest() + res.body).substr(0, 200));
    } else if (!events.error().empty()) {
        r.error = "stream error: " + events.error();
    } else if (!events.done()) {
        r.error = "the stream ended without [DONE]";
    } else {
        r.ok = true;
        if (r.n_output > 1) r.tpot_ms = (r.e2e_ms - r.ttft_ms) / static_cast<double>(r.n_output - 1);
    }
    return r;
}

std::string json_of(const LatencySummary& s) {
    return fmt::format(R"({{"mean":{:.3f},"p50":{:.3f},"p90":{:.3f},"p99":{:.3f},"max":{:.3f},"n":{}}})", s.mean, s.p50,
                       s.p90, s.p99, s.max, s.n);
}

}  // namespace

LatencySummary summarize(std::vector<double> v) {
    LatencySummary s;
    if (v.empty()) return s;
    std::sort(v.begin(), v.end());
    s.n = static_cast<int64_t>(v.size());
    s.mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
    s.max = v.back();
    auto at = [&](double q) {
        const double pos = q * static_cast<double>(v.size() - 1);
        const auto lo = static_cast<size_t>(std::floor(pos));
        const size_t hi = std::min(lo + 1, v.size() - 1);
        return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
    };
    s.p50 = at(0.50);
    s.p90 = at(0.90);
    s.p99 = at(0.99);
    return s;
}

LoadReport run_load(const LoadConfig& config) {
    LoadConfig c = config;
    if (c.n_requests <= 0) c.n_requests = c.concurrency;
    FREEKV_CHECK(c.concurrency >= 1, "bench-serve: --concurrency must be at least 1, got {}", c.concurrency);
    FREEKV_CHECK(c.prompt_tokens >= 1 && c.max_tokens >= 1, "bench-serve: --prompt-tokens and --max-tokens must be at least 1");
    FREEKV_CHECK(c.vocab > c.first_id && c.first_id >= 0, "bench-serve: --vocab {} must exceed the first id {}", c.vocab, c.first_id);
    FREEKV_CHECK(c.request_rate >= 0, "bench-serve: --request-rate must be >= 0");

    // Arrival times: all at zero, or a Poisson process of the given rate.
    std::vector<double> arrival(static_cast<size_t>(c.n_requests), 0.0);
    if (c.request_rate > 0) {
        std::mt19937_64 rng(c.seed ^ 0xA5A5A5A5ull);
        std::exponential_distribution<double> gap(c.request_rate);
        double t = 0;
        for (auto& a : arrival) {
            a = t;
            t += gap(rng);
        }
    }
    LoadReport report;
    report.config = c;
    report.requests.resize(static_cast<size_t>(c.n_requests));
    std::atomic<int64_t> next{0};
    const Clock::time_point t0 = Clock::now();
    const int64_t n_threads = std::min(c.concurrency, c.n_requests);
    std::vector<std::thread> threads;
    for (int64_t t = 0; t < n_threads; ++t)
        threads.emplace_back([&] {
            httplib::Client client(c.host, c.port);
            client.set_read_timeout(static_cast<time_t>(c.timeout_s), 0);
            client.set_write_timeout(60, 0);
            client.set_keep_alive(true);
            for (int64_t i; (i = next.fetch_add(1)) < c.n_requests;) {
                const auto due = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(arrival[static_cast<size_t>(i)]));
                std::this_thread::sleep_until(due);
                report.requests[static_cast<size_t>(i)] = run_one(client, c, i, t0);
            }
        });
    for (auto& t : threads) t.join();
    report.duration_s = std::chrono::duration<double>(Clock::now() - t0).count();

    std::vector<double> ttft, tpot, itl, e2e;
    std::map<std::string, int64_t> errors;
    for (const RequestTiming& r : report.requests) {
        if (!r.ok) {
            ++report.failed;
            ++errors[r.error];
            continue;
        }
        ++report.ok;
        report.output_tokens += r.n_output;
        report.prompt_tokens += r.n_prompt;
        ttft.push_back(r.ttft_ms);
        e2e.push_back(r.e2e_ms);
        if (r.n_output > 1) tpot.push_back(r.tpot_ms);
        itl.insert(itl.end(), r.itl_ms.begin(), r.itl_ms.end());
    }
    for (const auto& [what, n] : errors) report.errors.push_back(fmt::format("{} x {}", n, what));
    report.ttft = summarize(ttft);
    report.tpot = summarize(tpot);
    report.itl = summarize(itl);
    report.e2e = summarize(e2e);
    const double d = std::max(report.duration_s, 1e-9);
    report.request_per_s = static_cast<double>(report.ok) / d;
    report.output_tok_per_s = static_cast<double>(report.output_tokens) / d;
    report.total_tok_per_s = static_cast<double>(report.output_tokens + report.prompt_tokens) / d;
    return report;
}

std::string LoadReport::describe() const {
    std::string s = fmt::format(
        "concurrency {} | {} requests ({} ok, {} failed) | prompt {} + {} tokens | {:.1f} s\n"
        "  throughput {:.3f} req/s, {:.1f} output tok/s, {:.1f} total tok/s\n"
        "  TTFT ms  mean {:8.1f}  p50 {:8.1f}  p99 {:8.1f}\n"
        "  TPOT ms  mean {:8.2f}  p50 {:8.2f}  p99 {:8.2f}\n"
        "  ITL  ms  mean {:8.2f}  p50 {:8.2f}  p99 {:8.2f}\n"
        "  E2E  ms  mean {:8.1f}  p50 {:8.1f}  p99 {:8.1f}\n",
        config.concurrency, config.n_requests, ok, failed, config.prompt_tokens, config.max_tokens, duration_s,
        request_per_s, output_tok_per_s, total_tok_per_s, ttft.mean, ttft.p50, ttft.p99, tpot.mean, tpot.p50, tpot.p99,
        itl.mean, itl.p50, itl.p99, e2e.mean, e2e.p50, e2e.p99);
    for (const std::string& e : errors) s += "  failed: " + e + "\n";
    return s;
}

std::string LoadReport::to_json() const {
    json errs = errors;
    return fmt::format(
        R"({{"concurrency":{},"requests":{},"request_rate":{},"prompt_tokens":{},"max_tokens":{},"ok":{},"failed":{},)"
        R"("duration_s":{:.3f},"request_per_s":{:.4f},"output_tok_per_s":{:.2f},"total_tok_per_s":{:.2f},)"
        R"("output_tokens":{},"ttft_ms":{},"tpot_ms":{},"itl_ms":{},"e2e_ms":{},"errors":{}}})",
        config.concurrency, config.n_requests, config.request_rate, config.prompt_tokens, config.max_tokens, ok, failed,
        duration_s, request_per_s, output_tok_per_s, total_tok_per_s, output_tokens, json_of(ttft), json_of(tpot),
        json_of(itl), json_of(e2e), errs.dump());
}

bool wait_until_ready(const std::string& host, int port, double timeout_s) {
    const Clock::time_point end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
    for (;;) {
        httplib::Client client(host, port);
        client.set_connection_timeout(1, 0);
        client.set_read_timeout(5, 0);
        if (auto res = client.Get("/health"); res && res->status == 200) return true;
        if (Clock::now() >= end) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
}

}  // namespace freekv::serve
