// completion_server.cpp: see completion_server.h.
#include "serve/completion_server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "serve/completion_request.h"
#include "serve/stop_matcher.h"
#include "tokenizer/streaming_decoder.h"

namespace freekv::serve {

namespace {

using nlohmann::json;

void send_error(httplib::Response& res, int status, const std::string& message, const char* type) {
    res.status = status;
    res.set_content(json{{"error", {{"message", message}, {"type", type}}}}.dump(), "application/json");
}

int64_t unix_now() {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

struct CompletionServer::Impl {
    const LoadedModel& model;
    GenerateParams base;
    std::string name;
    httplib::Server http;
    std::mutex generating;  // one generation at a time
    int64_t next_id = 0;     // under `generating`

    Impl(const LoadedModel& m, GenerateParams b, std::string n) : model(m), base(std::move(b)), name(std::move(n)) {}

    // A checked request turned into what generate() needs; BadRequest when it does not fit.
    struct Job {
        CompletionRequest req;
        std::vector<int32_t> prompt;
        GenerateParams params;
    };

    Job prepare(const std::string& body) {
        Job job{parse_completion_request(body), {}, base};
        const ModelConfig& c = model.config;
        if (job.req.prompt_text) {
            if (!model.tokenizer)
                throw BadRequest("this model has no tokenizer.json: send 'prompt' as an array of token ids");
            job.prompt = model.tokenizer->encode(*job.req.prompt_text, /*add_special=*/true);
        } else {
            job.prompt = job.req.prompt_ids;
            for (int32_t id : job.prompt)
                if (id >= c.n_vocab) throw BadRequest(fmt::format("prompt token {} is outside the vocabulary of {}", id, c.n_vocab));
        }
        const int64_t n_ctx = base.n_ctx > 0 ? base.n_ctx : c.n_ctx_train;
        const auto n_prompt = static_cast<int64_t>(job.prompt.size());
        if (n_prompt == 0) throw BadRequest("the prompt encodes to no tokens");
        if (n_prompt >= n_ctx)
            throw BadRequest(fmt::format("the prompt has {} tokens but the server's context is {} (its -c/--ctx-size); "
                                         "shorten the prompt", n_prompt, n_ctx));
        GenerateParams& p = job.params;
        p.n_predict = job.req.max_tokens;
        p.progress = false;
        p.sampling.temperature = job.req.temperature.value_or(model.generation.temperature.value_or(0.8f));
        p.sampling.top_k = job.req.top_k.value_or(model.generation.top_k.value_or(40));
        p.sampling.top_p = job.req.top_p.value_or(model.generation.top_p.value_or(0.95f));
        p.sampling.seed = job.req.seed.value_or(std::random_device{}());
        return job;
    }

    // Runs a job and logs one line; `emit(text, token)` gets each piece of text that may be sent
    // (token -1 for the final flush) and returns false to stop. Returns the finish reason.
    std::string run_job(const Job& job, std::vector<int32_t>& tokens, int64_t& n_prompt,
                        const std::function<bool(const std::string&, int32_t)>& emit) {
        const auto t0 = std::chrono::steady_clock::now();
        const std::string reason = generate_text(job, tokens, emit);
        n_prompt = static_cast<int64_t>(job.prompt.size());
        fmt::print(stderr, "serve: {} prompt + {} generated tokens in {:.0f} ms, finish {}{}\n", n_prompt, tokens.size(),
                   std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(), reason,
                   job.req.stream ? " (streamed)" : "");
        return reason;
    }

    std::string generate_text(const Job& job, std::vector<int32_t>& tokens, const std::function<bool(const std::string&, int32_t)>& emit) {
        if (job.req.max_tokens == 0) return "length";
        const std::vector<int32_t> stop_ids = model.stop_ids();
        std::optional<StreamingDecoder> decoder;
        if (model.tokenizer) decoder.emplace(*model.tokenizer);
        StopMatcher stops(job.req.stop);
        std::string reason = "length";
        bool client_gone = false;
        generate(model, job.prompt, job.params, [&](int32_t id) {
            if (std::find(stop_ids.begin(), stop_ids.end(), id) != stop_ids.end()) {
                reason = "stop";
                return false;
            }
            tokens.push_back(id);
            const std::string text = stops.push(decoder ? decoder->push(id) : std::string{});
            if (!emit(text, id)) {
                client_gone = true;
                return false;
            }
            if (stops.stopped()) {
                reason = "stop";
                return false;
            }
            return true;
        });
        if (!client_gone && !stops.stopped()) emit(stops.push(decoder ? decoder->flush() : std::string{}) + stops.flush(), -1);
        if (stops.stopped()) reason = "stop";
        return reason;
    }

    json completion_json(const std::string& id, int64_t created) const {
        return json{{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", name}};
    }

    void handle_completion(const httplib::Request& req, httplib::Response& res) {
        auto job = std::make_shared<Job>(prepare(req.body));
        const int64_t created = unix_now();
        if (!job->req.stream) {
            std::lock_guard lock(generating);
            const std::string id = fmt::format("cmpl-{}", next_id++);
            std::vector<int32_t> tokens;
            int64_t n_prompt = 0;
            std::string text;
            const std::string reason = run_job(*job, tokens, n_prompt, [&](const std::string& piece, int32_t) {
                text += piece;
                return true;
            });
            json out = completion_json(id, created);
            out["choices"] = json::array({json{{"index", 0}, {"text", text}, {"token_ids", tokens}, {"finish_reason", reason}}});
            const auto n_gen = static_cast<int64_t>(tokens.size());
            out["usage"] = {{"prompt_tokens", n_prompt}, {"completion_tokens", n_gen}, {"total_tokens", n_prompt + n_gen}};
            res.set_content(out.dump(), "application/json");
            return;
        }
        res.set_header("Cache-Control", "no-cache");
        res.set_chunked_content_provider("text/event-stream", [this, job, created](size_t, httplib::DataSink& sink) {
            std::lock_guard lock(generating);
            const std::string id = fmt::format("cmpl-{}", next_id++);
            auto event = [&](const json& j) {
                const std::string s = "data: " + j.dump() + "\n\n";
                return sink.write(s.data(), s.size());
            };
            auto chunk = [&](const std::string& text, const json& tokens, const json& reason) {
                json j = completion_json(id, created);
                j["choices"] = json::array({json{{"index", 0}, {"text", text}, {"token_ids", tokens}, {"finish_reason", reason}}});
                return event(j);
            };
            std::vector<int32_t> tokens;
            int64_t n_prompt = 0;
            std::string reason;
            try {
                reason = run_job(*job, tokens, n_prompt, [&](const std::string& text, int32_t tok) {
                    if (tok < 0 && text.empty()) return true;  // nothing held back at the end
                    return chunk(text, tok >= 0 ? json::array({tok}) : json::array(), nullptr);
                });
            } catch (const std::exception& e) {  // the status line is gone: report in the stream
                event(json{{"error", {{"message", e.what()}, {"type", "server_error"}}}});
                sink.done();
                return true;
            }
            chunk("", json::array(), reason);
            const std::string done = "data: [DONE]\n\n";
            sink.write(done.data(), done.size());
            sink.done();
            return true;
        });
    }

    void routes() {
        // SO_REUSEADDR only: cpp-httplib's default also sets SO_REUSEPORT, with which a second server
        // on a port in use binds without error and the kernel splits the requests between the two.
        http.set_socket_options([](socket_t sock) {
            int yes = 1;
            setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
        });
        http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
            res.set_content(json{{"status", "ok"}, {"model", name}}.dump(), "application/json");
        });
        http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
            const json m{{"id", name}, {"object", "model"}, {"owned_by", "freekv"}, {"context_length", base.n_ctx > 0 ? base.n_ctx : model.config.n_ctx_train}};
            res.set_content(json{{"object", "list"}, {"data", json::array({m})}}.dump(), "application/json");
        });
        http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
            try {
                handle_completion(req, res);
            } catch (const BadRequest& e) {
                send_error(res, 400, e.what(), "invalid_request_error");
            } catch (const Error& e) {  // the engine's checks (context, memory): the request cannot be served
                send_error(res, 400, e.what(), "invalid_request_error");
            } catch (const std::exception& e) {
                send_error(res, 500, e.what(), "server_error");
            }
        });
        // Unknown routes and methods: a JSON 404 that lists what exists.
        http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
            if (res.status == 404)
                send_error(res, 404, fmt::format("no route {} {}; this server has POST /v1/completions, GET /v1/models, GET /health",
                                                 req.method, req.path), "not_found_error");
        });
    }
};

CompletionServer::CompletionServer(const LoadedModel& model, GenerateParams base, std::string model_name)
    : impl_(std::make_unique<Impl>(model, std::move(base), std::move(model_name))) {
    impl_->routes();
}

CompletionServer::~CompletionServer() { stop(); }

int CompletionServer::bind(const std::string& host, int port) {
    if (port == 0) {
        const int got = impl_->http.bind_to_any_port(host);
        if (got <= 0) FREEKV_FAIL("serve: cannot bind to {} (any port)", host);
        return got;
    }
    if (!impl_->http.bind_to_port(host, port))
        FREEKV_FAIL("serve: cannot bind to {}:{} (in use, or not an address of this machine); pick another --port or --host",
                    host, port);
    return port;
}

void CompletionServer::run() { impl_->http.listen_after_bind(); }

void CompletionServer::stop() { impl_->http.stop(); }

}  // namespace freekv::serve
