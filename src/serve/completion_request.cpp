// completion_request.cpp: see completion_request.h.
#include "serve/completion_request.h"

#include <fmt/format.h>

#include <limits>
#include <nlohmann/json.hpp>

namespace freekv::serve {

namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& message) { throw BadRequest(message); }

int64_t integer(const json& v, const char* name, int64_t lo, int64_t hi) {
    if (!v.is_number_integer() && !v.is_number_unsigned()) bad(fmt::format("'{}' must be an integer", name));
    const auto x = v.is_number_unsigned() ? static_cast<int64_t>(std::min<uint64_t>(v.get<uint64_t>(), uint64_t{1} << 62))
                                          : v.get<int64_t>();
    if (x < lo || x > hi) bad(fmt::format("'{}' must be in [{}, {}], got {}", name, lo, hi, x));
    return x;
}

float real(const json& v, const char* name, double lo, double hi) {
    if (!v.is_number()) bad(fmt::format("'{}' must be a number", name));
    const double x = v.get<double>();
    if (!(x >= lo && x <= hi)) bad(fmt::format("'{}' must be in [{}, {}], got {}", name, lo, hi, x));
    return static_cast<float>(x);
}

}  // namespace

namespace {

json parse_object(std::string_view body, const char* what) {
    json j;
    try {
        j = json::parse(body);
    } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers past a double
        bad(fmt::format("the body is not valid JSON ({})", e.what()));
    }
    if (!j.is_object()) bad(fmt::format("the body must be a JSON object with at least {}", what));
    return j;
}

// The fields both APIs share: length, sampling, streaming, n, stop.
void parse_common(const json& j, CompletionRequest& r) {
    if (auto it = j.find("max_tokens"); it != j.end() && !it->is_null()) r.max_tokens = integer(*it, "max_tokens", 0, int64_t{1} << 24);
    if (auto it = j.find("temperature"); it != j.end() && !it->is_null()) r.temperature = real(*it, "temperature", 0.0, 100.0);
    if (auto it = j.find("top_p"); it != j.end() && !it->is_null()) r.top_p = real(*it, "top_p", 0.0, 1.0);
    if (auto it = j.find("top_k"); it != j.end() && !it->is_null()) r.top_k = static_cast<int>(integer(*it, "top_k", 0, 1 << 24));
    if (auto it = j.find("seed"); it != j.end() && !it->is_null())
        r.seed = static_cast<uint64_t>(integer(*it, "seed", 0, std::numeric_limits<int64_t>::max()));
    if (auto it = j.find("stream"); it != j.end() && !it->is_null()) {
        if (!it->is_boolean()) bad("'stream' must be true or false");
        r.stream = it->get<bool>();
    }
    if (auto it = j.find("ignore_eos"); it != j.end() && !it->is_null()) {
        if (!it->is_boolean()) bad("'ignore_eos' must be true or false");
        r.ignore_eos = it->get<bool>();
    }
    if (auto it = j.find("n"); it != j.end() && !it->is_null() && integer(*it, "n", 1, 1 << 20) != 1)
        bad("'n' must be 1: one completion per request");
    if (auto it = j.find("stop"); it != j.end() && !it->is_null()) {
        if (it->is_string()) {
            r.stop.push_back(it->get<std::string>());
        } else if (it->is_array()) {
            for (const auto& s : *it) {
                if (!s.is_string()) bad("'stop' must be a string or an array of strings");
                r.stop.push_back(s.get<std::string>());
            }
        } else {
            bad("'stop' must be a string or an array of strings");
        }
        if (r.stop.size() > 4) bad(fmt::format("'stop' has {} strings; at most 4 are allowed", r.stop.size()));
        for (const auto& s : r.stop)
            if (s.empty()) bad("'stop' strings must not be empty");
    }
}

}  // namespace

CompletionRequest parse_completion_request(std::string_view body) {
    const json j = parse_object(body, "a 'prompt'");
    CompletionRequest r;
    const auto prompt = j.find("prompt");
    if (prompt == j.end() || prompt->is_null()) bad("'prompt' is missing: send a string, or an array of token ids");
    if (prompt->is_string()) {
        r.prompt_text = prompt->get<std::string>();
        if (r.prompt_text->empty()) bad("'prompt' is empty");
    } else if (prompt->is_array()) {
        if (prompt->empty()) bad("'prompt' is an empty array");
        if ((*prompt)[0].is_string())
            bad("'prompt' as an array of strings (a batch of prompts) is not supported: send one request per prompt");
        for (const auto& id : *prompt) r.prompt_ids.push_back(static_cast<int32_t>(integer(id, "prompt[]", 0, std::numeric_limits<int32_t>::max())));
    } else {
        bad("'prompt' must be a string or an array of token ids");
    }
    parse_common(j, r);
    return r;
}

CompletionRequest parse_chat_request(std::string_view body) {
    const json j = parse_object(body, "'messages'");
    CompletionRequest r;
    const auto messages = j.find("messages");
    if (messages == j.end() || !messages->is_array() || messages->empty())
        bad("'messages' must be a non-empty array of {\"role\": ..., \"content\": ...} objects");
    for (const auto& m : *messages) {
        if (!m.is_object()) bad("each of 'messages' must be an object with 'role' and 'content'");
        const auto role = m.find("role"), content = m.find("content");
        if (role == m.end() || !role->is_string()) bad("a message has no 'role' string");
        const std::string rs = role->get<std::string>();
        if (rs != "system" && rs != "user" && rs != "assistant")
            bad(fmt::format("message role '{}' is not supported: use system, user or assistant", rs));
        if (content == m.end() || !content->is_string())
            bad("a message's 'content' must be a string (content parts and images are not supported)");
        r.messages.push_back({rs, content->get<std::string>()});
    }
    parse_common(j, r);
    if (auto it = j.find("max_completion_tokens"); it != j.end() && !it->is_null())
        r.max_tokens = integer(*it, "max_completion_tokens", 0, int64_t{1} << 24);
    return r;
}

}  // namespace freekv::serve
