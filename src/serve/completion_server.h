// completion_server.h: `freekv serve`: an HTTP server for one loaded model with the OpenAI
// completions API: POST /v1/completions (JSON, or server-sent events with "stream": true),
// GET /v1/models and GET /health. Built on Debian's cpp-httplib.
// Invariants: requests are checked before any model work and a bad one gets 400 with a JSON error
// that says what was wrong; generations run one at a time (each in a fresh KvSession of the
// server's KV mode, on the GPU when weights are given), others wait their turn; a client that
// disconnects mid-stream stops its generation; the model is never modified by a request.
#pragma once

#include <memory>
#include <string>

#include "engine/generator.h"
#include "model/model_loader.h"

namespace freekv::serve {

class CompletionServer {
public:
    /// `base`: KV mode, context, GPU weights; sampling and length come from each request.
    CompletionServer(const LoadedModel& model, GenerateParams base, std::string model_name);
    ~CompletionServer();
    CompletionServer(const CompletionServer&) = delete;
    CompletionServer& operator=(const CompletionServer&) = delete;

    /// Binds host:port (port 0: a free port); returns the port. Error when it cannot.
    int bind(const std::string& host, int port);
    /// Serves until stop(); call after bind().
    void run();
    /// Makes run() return (from any thread).
    void stop();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace freekv::serve
