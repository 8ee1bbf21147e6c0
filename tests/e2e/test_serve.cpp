// test_serve.cpp: `freekv serve` end to end, in process over real HTTP on a free port (cpp-httplib's
// client): health and model list; a completion equals generate() on the same model and sampling
// (greedy), and the streamed form carries the same tokens then [DONE]; max_tokens 0; every bad
// request gets a 400 JSON error that names the problem (bad JSON, a text prompt without a tokenizer,
// ids outside the vocabulary, a prompt longer than the context, n > 1); unknown routes a JSON 404;
// a port in use is an error, not a second server sharing it.
// Uses the synthetic `tiny` shape (token-id prompts); with the reference model (text prompts) also
// checks stop strings against the same completion without them.
#include <gtest/gtest.h>
#include <httplib.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "engine/generator.h"
#include "model/synthetic_model.h"
#include "serve/completion_server.h"
#include "test_util.h"

namespace freekv::serve {
namespace {

using nlohmann::json;

// A server on a free port of 127.0.0.1, running on its own thread for the test's lifetime.
class RunningServer {
public:
    RunningServer(const LoadedModel& m, GenerateParams base) : server_(m, std::move(base), "test-model") {
        port_ = server_.bind("127.0.0.1", 0);
        thread_ = std::thread([this] { server_.run(); });
    }
    ~RunningServer() {
        server_.stop();
        thread_.join();
    }
    httplib::Client client() const {
        httplib::Client c("127.0.0.1", port_);
        c.set_read_timeout(120, 0);
        return c;
    }

private:
    CompletionServer server_;
    int port_ = 0;
    std::thread thread_;
};

GenerateParams base_params(int64_t n_ctx) {
    GenerateParams p;
    p.n_ctx = n_ctx;
    p.progress = false;
    p.kv_mode = full_kv_mode();
    return p;
}

json post(httplib::Client& c, const json& body, int want_status) {
    auto res = c.Post("/v1/completions", body.dump(), "application/json");
    EXPECT_TRUE(res) << "no response";
    if (!res) return {};
    EXPECT_EQ(res->status, want_status) << res->body;
    return json::parse(res->body);
}

std::vector<int32_t> engine_tokens(const LoadedModel& m, const std::vector<int32_t>& prompt, int64_t n, int64_t n_ctx) {
    GenerateParams p = base_params(n_ctx);
    p.n_predict = n;
    p.sampling.temperature = 0.0f;
    const auto stop = m.stop_ids();
    std::vector<int32_t> out;
    generate(m, prompt, p, [&](int32_t id) {
        if (std::find(stop.begin(), stop.end(), id) == stop.end()) out.push_back(id);
        return true;
    });
    return out;
}

TEST(Serve, CompletionsOfTheSyntheticModel) {
    const LoadedModel m = make_synthetic_model("tiny");
    RunningServer server(m, base_params(256));
    auto c = server.client();

    auto health = c.Get("/health");
    ASSERT_TRUE(health);
    EXPECT_EQ(health->status, 200);
    EXPECT_EQ(json::parse(health->body)["status"], "ok");
    auto models = c.Get("/v1/models");
    ASSERT_TRUE(models);
    EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "test-model");
    EXPECT_EQ(json::parse(models->body)["data"][0]["context_length"], 256);

    const std::vector<int32_t> prompt{3, 14, 15, 92, 65, 35};
    const auto want = engine_tokens(m, prompt, 12, 256);
    ASSERT_FALSE(want.empty());
    const json r = post(c, {{"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}}, 200);
    EXPECT_EQ(r["object"], "text_completion");
    EXPECT_EQ(r["model"], "test-model");
    EXPECT_EQ(r["choices"][0]["token_ids"].get<std::vector<int32_t>>(), want) << "the server must give generate()'s tokens";
    EXPECT_EQ(r["choices"][0]["finish_reason"], want.size() == 12 ? "length" : "stop");
    EXPECT_EQ(r["usage"]["prompt_tokens"], 6);
    EXPECT_EQ(r["usage"]["completion_tokens"], want.size());

    // Streamed: the same tokens in events, a final chunk with the finish reason, then [DONE].
    auto res = c.Post("/v1/completions", json{{"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}, {"stream", true}}.dump(),
                      "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_NE(res->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
    std::vector<int32_t> streamed;
    std::string last_reason, last_data;
    size_t at = 0;
    while ((at = res->body.find("data: ", at)) != std::string::npos) {
        const size_t end = res->body.find("\n\n", at);
        ASSERT_NE(end, std::string::npos);
        last_data = res->body.substr(at + 6, end - at - 6);
        at = end;
        if (last_data == "[DONE]") break;
        const json ev = json::parse(last_data);
        for (int32_t id : ev["choices"][0]["token_ids"]) streamed.push_back(id);
        if (!ev["choices"][0]["finish_reason"].is_null()) last_reason = ev["choices"][0]["finish_reason"];
    }
    EXPECT_EQ(last_data, "[DONE]");
    EXPECT_EQ(streamed, want);
    EXPECT_EQ(last_reason, r["choices"][0]["finish_reason"]);

    const json zero = post(c, {{"prompt", prompt}, {"max_tokens", 0}}, 200);
    EXPECT_TRUE(zero["choices"][0]["token_ids"].empty());
    EXPECT_EQ(zero["usage"]["prompt_tokens"], 6);
}

TEST(Serve, BadRequestsGetClearErrors) {
    const LoadedModel m = make_synthetic_model("tiny");
    RunningServer server(m, base_params(64));
    auto c = server.client();
    auto message = [&](const std::string& body, int status) {
        auto res = c.Post("/v1/completions", body, "application/json");
        EXPECT_TRUE(res);
        if (!res) return std::string{};
        EXPECT_EQ(res->status, status) << body;
        return json::parse(res->body)["error"]["message"].get<std::string>();
    };
    EXPECT_NE(message("{oops", 400).find("not valid JSON"), std::string::npos);
    EXPECT_NE(message(R"({"prompt":"hello"})", 400).find("no tokenizer.json"), std::string::npos);
    EXPECT_NE(message(json{{"prompt", {1, m.config.n_vocab}}}.dump(), 400).find("outside the vocabulary"), std::string::npos);
    EXPECT_NE(message(json{{"prompt", std::vector<int32_t>(64, 7)}}.dump(), 400).find("context is 64"), std::string::npos);
    EXPECT_NE(message(R"({"prompt":[1],"n":3})", 400).find("'n' must be 1"), std::string::npos);
    auto nope = c.Get("/v1/chat/nothing");
    ASSERT_TRUE(nope);
    EXPECT_EQ(nope->status, 404);
    EXPECT_NE(json::parse(nope->body)["error"]["message"].get<std::string>().find("POST /v1/completions"), std::string::npos);
    // The server still answers after all that.
    EXPECT_EQ(post(c, {{"prompt", {1, 2}}, {"max_tokens", 2}, {"temperature", 0}}, 200)["usage"]["prompt_tokens"], 2);
}

TEST(Serve, APortInUseIsAClearError) {
    const LoadedModel m = make_synthetic_model("tiny");
    CompletionServer first(m, base_params(64), "a");
    const int port = first.bind("127.0.0.1", 0);
    CompletionServer second(m, base_params(64), "b");
    try {
        second.bind("127.0.0.1", port);
        FAIL() << "a second server bound port " << port << " that the first holds";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("--port"), std::string::npos) << e.what();
    }
}

TEST(Serve, StopStringsCutTheTextOfTheReferenceModel) {
    const auto dir = test::ref_model_dir();
    if (!dir) GTEST_SKIP() << "reference model not found (../shared/models/freekv-ref-28m)";
    const LoadedModel m = load_model(dir->string());
    RunningServer server(m, base_params(512));
    auto c = server.client();
    const json body{{"prompt", "The Emperor rode along the line of the regiments and"}, {"max_tokens", 40}, {"temperature", 0}};
    const std::string full = post(c, body, 200)["choices"][0]["text"];
    ASSERT_GE(full.size(), 20u) << full;
    const std::string stop = full.substr(12, 3);
    const size_t cut = full.find(stop);
    json with_stop = body;
    with_stop["stop"] = {"@@never@@", stop};
    const json r = post(c, with_stop, 200);
    EXPECT_EQ(r["choices"][0]["text"], full.substr(0, cut)) << "stop '" << stop << "' in '" << full << "'";
    EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
    with_stop["stream"] = true;
    auto res = c.Post("/v1/completions", with_stop.dump(), "application/json");
    ASSERT_TRUE(res);
    std::string streamed;
    size_t at = 0;
    while ((at = res->body.find("data: {", at)) != std::string::npos) {
        const size_t end = res->body.find("\n\n", at);
        streamed += json::parse(res->body.substr(at + 6, end - at - 6))["choices"][0]["text"].get<std::string>();
        at = end;
    }
    EXPECT_EQ(streamed, full.substr(0, cut));
}

}  // namespace
}  // namespace freekv::serve
