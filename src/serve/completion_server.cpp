// completion_server.cpp: see completion_server.h. Each HTTP request runs on one of cpp-httplib's
// pool threads: it checks the body, submits to the engine and then turns the tokens arriving on
// its TokenChannel into text (detokenizer, stop strings) and JSON or server-sent events.
#include "serve/completion_server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "serve/chat_template.h"
#include "serve/completion_request.h"
#include "serve/prometheus_metrics.h"
#include "serve/stop_matcher.h"
#include "serve/token_channel.h"
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

// Far more than the engine runs at once would only queue connections in the pool; fewer would
// keep accepted requests from being read while others stream.
int http_threads(const EngineConfig& e) { return static_cast<int>(std::min<int64_t>(e.max_batch + e.max_waiting + 4, 1024)); }

}  // namespace

struct CompletionServer::Impl {
    const LoadedModel& model;
    ServerOptions options;
    std::optional<ChatTemplate> chat;  // before the engine: a bad template fails before any allocation
    Engine engine;
    httplib::Server http;
    std::atomic<int> listen_socket{-1};  // recorded by the socket-options hook
    std::atomic<int64_t> next_id{0};

    Impl(const LoadedModel& m, ServerOptions o)
        : model(m), options(std::move(o)), chat(detect_chat(m, options)), engine(m, options.engine) {}

    static std::optional<ChatTemplate> detect_chat(const LoadedModel& m, const ServerOptions& o) {
        if (o.no_chat || !m.tokenizer) return std::nullopt;
        auto found = ChatTemplate::detect(m.path, *m.tokenizer);
        if (!found && !ChatTemplate::template_text(m.path).empty())
            FREEKV_FAIL("the chat_template of {}'s tokenizer_config.json is neither Llama 3 nor ChatML (the formats "
                        "freekv renders), or the tokenizer lacks their special tokens; pass --no-chat to serve "
                        "completions only",
                        m.path);
        return found;
    }

    // A checked request: the prompt and the engine's part.
    struct Job {
        CompletionRequest req;
        bool chat = false;
        std::vector<int32_t> prompt;
        SamplingParams sampling;
        std::vector<int32_t> stop_ids;
    };

    Job prepare(const std::string& body, bool is_chat) {
        Job job{is_chat ? parse_chat_request(body) : parse_completion_request(body), is_chat, {}, {}, model.stop_ids()};
        const ModelConfig& c = model.config;
        if (is_chat) {
            if (!model.tokenizer) throw BadRequest("this model has no tokenizer.json, so it cannot take chat messages");
            if (options.no_chat) throw BadRequest("chat is off on this server (--no-chat): use /v1/completions");
            if (!chat)
                throw BadRequest("this model's chat template is neither Llama 3 nor ChatML (the formats freekv renders); "
                                 "use /v1/completions with the prompt formatted by the client");
            job.prompt = model.tokenizer->encode(chat->render(job.req.messages), /*add_special=*/true);
            for (int32_t id : chat->end_token_ids()) job.stop_ids.push_back(id);
        } else if (job.req.prompt_text) {
            if (!model.tokenizer)
                throw BadRequest("this model has no tokenizer.json: send 'prompt' as an array of token ids");
            job.prompt = model.tokenizer->encode(*job.req.prompt_text, /*add_special=*/true);
        } else {
            job.prompt = job.req.prompt_ids;
            for (int32_t id : job.prompt)
                if (id >= c.n_vocab) throw BadRequest(fmt::format("prompt token {} is outside the vocabulary of {}", id, c.n_vocab));
        }
        const int64_t n_ctx = engine.config().n_ctx;
        const auto n_prompt = static_cast<int64_t>(job.prompt.size());
        if (n_prompt == 0) throw BadRequest("the prompt encodes to no tokens");
        if (n_prompt >= n_ctx)
            throw BadRequest(fmt::format("the prompt has {} tokens but the server's context is {} (its -c/--ctx-size); "
                                         "shorten the prompt", n_prompt, n_ctx));
        SamplingParams& p = job.sampling;
        p.temperature = job.req.temperature.value_or(model.generation.temperature.value_or(0.8f));
        p.top_k = job.req.top_k.value_or(model.generation.top_k.value_or(40));
        p.top_p = job.req.top_p.value_or(model.generation.top_p.value_or(0.95f));
        p.seed = job.req.seed.value_or(std::random_device{}());
        return job;
    }

    struct Submitted {
        int64_t id = 0;
        std::shared_ptr<TokenChannel> channel;
    };

    // Hands the job to the engine; throws Error (400), EngineBusy (429 or 503).
    Submitted submit(const Job& job) {
        auto channel = std::make_shared<TokenChannel>();
        EngineRequest r;
        r.prompt = job.prompt;
        r.max_tokens = job.req.max_tokens;
        r.sampling = job.sampling;
        if (!job.req.ignore_eos) r.stop_ids = job.stop_ids;
        r.timeout_s = options.request_timeout_s;
        r.on_token = [channel](int32_t t) { return channel->push(t); };
        r.on_done = [channel](const RequestOutcome& o) { channel->finish(o); };
        return {engine.submit(std::move(r)), channel};
    }

    struct Finished {
        std::string reason;          // stop, length, cancelled, error, timeout
        std::string error;           // for error and timeout
        std::vector<int32_t> tokens;
        RequestOutcome outcome;
    };

    // Takes the tokens off the channel; emit(text, token) gets each piece of text that may be sent
    // (token -1 for the final flush) and returns false when the client is gone.
    Finished collect(const Job& job, const Submitted& s, const std::function<bool(const std::string&, int32_t)>& emit) {
        std::optional<StreamingDecoder> decoder;
        if (model.tokenizer) decoder.emplace(*model.tokenizer);
        StopMatcher stops(job.req.stop);
        Finished f;
        bool cut = false, client_gone = false;
        for (;;) {
            auto item = s.channel->next();
            if (const auto* token = std::get_if<int32_t>(&item)) {
                if (cut) continue;  // arrived before the engine saw the cancel
                f.tokens.push_back(*token);
                const std::string text = stops.push(decoder ? decoder->push(*token) : std::string{});
                if (!emit(text, *token)) client_gone = true;
                if (client_gone || stops.stopped()) {
                    cut = true;
                    s.channel->abandon();
                    engine.cancel(s.id);
                }
                continue;
            }
            f.outcome = std::get<RequestOutcome>(item);
            break;
        }
        if (stops.stopped()) {
            f.reason = "stop";
        } else if (client_gone) {
            f.reason = "cancelled";
        } else {
            f.reason = f.outcome.reason == FinishReason::kStop      ? "stop"
                       : f.outcome.reason == FinishReason::kLength  ? "length"
                       : f.outcome.reason == FinishReason::kError   ? "error"
                       : f.outcome.reason == FinishReason::kTimeout ? "timeout"
                                                                    : "cancelled";
            f.error = f.outcome.error;
            if (f.outcome.reason == FinishReason::kTimeout) f.error += " (--request-timeout)";
            if (f.outcome.reason != FinishReason::kError && f.outcome.reason != FinishReason::kTimeout)
                emit(stops.push(decoder ? decoder->flush() : std::string{}) + stops.flush(), -1);
        }
        fmt::print(stderr, "serve: {} prompt + {} generated tokens in {:.0f} ms (queue {:.0f} ms, first token {:.0f} ms), "
                   "finish {}{}\n", job.prompt.size(), f.tokens.size(), f.outcome.total_ms, f.outcome.queue_ms,
                   f.outcome.ttft_ms, f.reason, job.req.stream ? " (streamed)" : "");
        return f;
    }

    json usage(const Job& job, const Finished& f) const {
        const auto n_prompt = static_cast<int64_t>(job.prompt.size()), n_gen = static_cast<int64_t>(f.tokens.size());
        return {{"prompt_tokens", n_prompt}, {"completion_tokens", n_gen}, {"total_tokens", n_prompt + n_gen}};
    }

    json choice(const Job& job, const std::string& text, const json& tokens, const json& reason, bool first) const {
        if (!job.chat) return json{{"index", 0}, {"text", text}, {"token_ids", tokens}, {"finish_reason", reason}};
        json delta = json::object();
        if (first) delta["role"] = "assistant";
        if (!text.empty() || first) delta["content"] = text;
        return json{{"index", 0}, {"delta", delta}, {"finish_reason", reason}};
    }

    void handle(const httplib::Request& req, httplib::Response& res, bool is_chat) {
        auto job = std::make_shared<Job>(prepare(req.body, is_chat));
        const Submitted s = submit(*job);
        const std::string id = fmt::format("{}-{}", is_chat ? "chatcmpl" : "cmpl", next_id++);
        const int64_t created = unix_now();
        auto head = [this, id, created, is_chat](bool chunk) {
            return json{{"id", id},
                        {"object", is_chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion"},
                        {"created", created},
                        {"model", options.model_name}};
        };
        if (!job->req.stream) {
            std::string text;
            const Finished f = collect(*job, s, [&](const std::string& piece, int32_t) {
                text += piece;
                return true;
            });
            if (f.reason == "error") return send_error(res, 500, f.error, "server_error");
            if (f.reason == "timeout") return send_error(res, 504, f.error, "timeout");
            if (f.reason == "cancelled") return send_error(res, 503, "the server is stopping", "server_error");
            json out = head(false);
            if (is_chat)
                out["choices"] = json::array({json{{"index", 0},
                                                   {"message", {{"role", "assistant"}, {"content", text}}},
                                                   {"finish_reason", f.reason}}});
            else
                out["choices"] = json::array({json{{"index", 0}, {"text", text}, {"token_ids", f.tokens}, {"finish_reason", f.reason}}});
            out["usage"] = usage(*job, f);
            res.set_content(out.dump(), "application/json");
            return;
        }
        res.set_header("Cache-Control", "no-cache");
        res.set_chunked_content_provider(
            "text/event-stream",
            [this, job, s, head](size_t, httplib::DataSink& sink) {
                auto event = [&](const json& j) {
                    const std::string e = "data: " + j.dump() + "\n\n";
                    return sink.write(e.data(), e.size());
                };
                bool first = true;
                const Finished f = collect(*job, s, [&](const std::string& text, int32_t tok) {
                    if (tok < 0 && text.empty()) return true;  // nothing held back at the end
                    json j = head(true);
                    j["choices"] = json::array({choice(*job, text, tok >= 0 ? json::array({tok}) : json::array(), nullptr, first)});
                    first = false;
                    return event(j);
                });
                if (f.reason == "cancelled" && f.outcome.reason != FinishReason::kCancelled) return false;  // client gone
                if (f.reason == "error" || f.reason == "timeout" || f.reason == "cancelled") {  // the status line is gone: report in the stream
                    event(json{{"error", {{"message", f.reason == "cancelled" ? "the server is stopping" : f.error},
                                          {"type", f.reason == "timeout" ? "timeout" : "server_error"}}}});
                } else {
                    json last = head(true);
                    last["choices"] = json::array({choice(*job, "", json::array(), f.reason, first)});
                    if (job->chat) last["choices"][0]["delta"] = json::object();
                    last["usage"] = usage(*job, f);
                    event(last);
                    const std::string done = "data: [DONE]\n\n";
                    sink.write(done.data(), done.size());
                }
                sink.done();
                return true;
            },
            [this, s](bool) {  // the response is over, or the client left before it began
                s.channel->abandon();
                engine.cancel(s.id);
            });
    }

    void post_json(const char* path, std::function<void(const httplib::Request&, httplib::Response&)> handler) {
        http.Post(path, [handler = std::move(handler)](const httplib::Request& req, httplib::Response& res) {
            try {
                handler(req, res);
            } catch (const BadRequest& e) {
                send_error(res, 400, e.what(), "invalid_request_error");
            } catch (const EngineBusy& e) {
                const bool stopping = std::string(e.what()).find("stopping") != std::string::npos;
                if (!stopping) res.set_header("Retry-After", "1");
                send_error(res, stopping ? 503 : 429, e.what(), stopping ? "server_error" : "rate_limit_error");
            } catch (const Error& e) {  // the engine's checks (context, vocabulary): the request cannot be served
                send_error(res, 400, e.what(), "invalid_request_error");
            } catch (const std::exception& e) {
                send_error(res, 500, e.what(), "server_error");
            }
        });
    }

    void tokenize(const httplib::Request& req, httplib::Response& res) {
        if (!model.tokenizer) throw BadRequest("this model has no tokenizer.json");
        const json j = json::parse(req.body, nullptr, false);
        if (!j.is_object() || !j.contains("content") || !j["content"].is_string())
            throw BadRequest("send {\"content\": \"text\"} (optional \"add_special\": true to add BOS as generation does)");
        bool add_special = false;
        if (j.contains("add_special")) {
            if (!j["add_special"].is_boolean()) throw BadRequest("'add_special' must be true or false");
            add_special = j["add_special"].get<bool>();
        }
        std::vector<int32_t> ids;
        try {
            ids = model.tokenizer->encode(j["content"].get<std::string>(), add_special);
        } catch (const Error& e) {
            throw BadRequest(e.what());
        }
        res.set_content(json{{"tokens", ids}}.dump(), "application/json");
    }

    void detokenize(const httplib::Request& req, httplib::Response& res) {
        if (!model.tokenizer) throw BadRequest("this model has no tokenizer.json");
        const json j = json::parse(req.body, nullptr, false);
        if (!j.is_object() || !j.contains("tokens") || !j["tokens"].is_array()) throw BadRequest("send {\"tokens\": [ids]}");
        std::vector<int32_t> ids;
        for (const auto& t : j["tokens"]) {
            if (!t.is_number_integer()) throw BadRequest("'tokens' must hold integers");
            const auto id = t.get<int64_t>();
            if (id < 0 || id >= model.tokenizer->n_vocab())
                throw BadRequest(fmt::format("token {} is outside the vocabulary of {}", id, model.tokenizer->n_vocab()));
            ids.push_back(static_cast<int32_t>(id));
        }
        res.set_content(json{{"content", model.tokenizer->decode(ids)}}.dump(), "application/json");
    }

    void routes() {
        // SO_REUSEADDR only: cpp-httplib's default also sets SO_REUSEPORT, with which a second server
        // on a port in use binds without error and the kernel splits the requests between the two.
        http.set_socket_options([this](socket_t sock) {
            int yes = 1;
            setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
            listen_socket = sock;
        });
        const int threads = http_threads(options.engine);
        http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
        http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
            const EngineMetrics m = engine.metrics();
            res.set_content(json{{"status", "ok"}, {"model", options.model_name}, {"slots", m.max_batch},
                                 {"running", m.running}, {"waiting", m.waiting}}.dump(), "application/json");
        });
        http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
            res.set_content(prometheus_text(engine.metrics()), "text/plain; version=0.0.4");
        });
        http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
            const json m{{"id", options.model_name}, {"object", "model"}, {"owned_by", "freekv"},
                         {"context_length", engine.config().n_ctx}};
            res.set_content(json{{"object", "list"}, {"data", json::array({m})}}.dump(), "application/json");
        });
        post_json("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) { handle(req, res, false); });
        post_json("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) { handle(req, res, true); });
        post_json("/tokenize", [this](const httplib::Request& req, httplib::Response& res) { tokenize(req, res); });
        post_json("/detokenize", [this](const httplib::Request& req, httplib::Response& res) { detokenize(req, res); });
        // Unknown routes and methods: a JSON 404 that lists what exists.
        http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
            if (res.status == 404)
                send_error(res, 404,
                           fmt::format("no route {} {}; this server has POST /v1/completions, POST /v1/chat/completions, "
                                       "GET /v1/models, GET /health, GET /metrics, POST /tokenize, POST /detokenize",
                                       req.method, req.path),
                           "not_found_error");
        });
    }
};

CompletionServer::CompletionServer(const LoadedModel& model, ServerOptions options)
    : impl_(std::make_unique<Impl>(model, std::move(options))) {
    impl_->routes();
}

CompletionServer::~CompletionServer() { stop(); }

int CompletionServer::bind(const std::string& host, int port) {
    int got = port;
    if (port == 0) {
        got = impl_->http.bind_to_any_port(host);
        if (got <= 0) FREEKV_FAIL("serve: cannot bind to {} (any port)", host);
    } else if (!impl_->http.bind_to_port(host, port)) {
        FREEKV_FAIL("serve: cannot bind to {}:{} (in use, or not an address of this machine); pick another --port or --host",
                    host, port);
    }
    // Debian's cpp-httplib listens with a backlog of 5: a burst of clients connecting at once
    // would wait for SYN retries. listen() again raises it on the bound socket.
    if (impl_->listen_socket >= 0) ::listen(impl_->listen_socket, SOMAXCONN);
    return got;
}

void CompletionServer::run() { impl_->http.listen_after_bind(); }

void CompletionServer::stop() { impl_->http.stop(); }

std::string CompletionServer::chat_format() const { return impl_->chat ? impl_->chat->name() : "none"; }

Engine& CompletionServer::engine() { return impl_->engine; }

}  // namespace freekv::serve
