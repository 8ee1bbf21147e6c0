// completion_server.h: `freekv serve`: an HTTP server (Debian's cpp-httplib) in front of one
// long-lived Engine, with the OpenAI API subset: POST /v1/completions and /v1/chat/completions
// (JSON, or server-sent events with "stream": true), GET /v1/models; plus GET /health, GET
// /metrics (Prometheus text), POST /tokenize and POST /detokenize.
// Invariants: requests are checked before any model work; a bad one gets 400 with a JSON error
// saying what was wrong, a full queue 429, a stopping engine 503; every accepted request runs in
// the engine's continuous batch beside the others; a client that disconnects mid-stream, or a
// stop string, cancels its request and frees its slot; the model is never modified by a request.
#pragma once

#include <memory>
#include <string>

#include "engine/engine.h"
#include "model/model_loader.h"

namespace freekv::serve {

struct ServerOptions {
    std::string model_name = "model";
    EngineConfig engine;  // KV mode, context, batch slots, queue, GPU weights
    // Serve completions only: /v1/chat/completions answers 400. Without it a chat_template in
    // tokenizer_config.json that is neither Llama 3 nor ChatML stops the start-up (no silent fallback).
    bool no_chat = false;
    // > 0: a request still waiting or generating this long after it arrived ends (HTTP 504, or an
    // error event in a stream) and frees its slot; 0: no limit.
    double request_timeout_s = 0;
};

class CompletionServer {
public:
    /// Starts the engine (memory for engine.max_batch sequences of engine.n_ctx tokens).
    CompletionServer(const LoadedModel& model, ServerOptions options);
    ~CompletionServer();
    CompletionServer(const CompletionServer&) = delete;
    CompletionServer& operator=(const CompletionServer&) = delete;

    /// Binds host:port (port 0: a free port); returns the port. Error when it cannot.
    int bind(const std::string& host, int port);
    /// Serves until stop(); call after bind().
    void run();
    /// Makes run() return (from any thread).
    void stop();
    /// The chat format in use ("llama3", "chatml") or "none".
    std::string chat_format() const;
    Engine& engine();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace freekv::serve
