// completion_request.h: the body of a POST /v1/completions or /v1/chat/completions request (the
// OpenAI API subset that freekv serves), parsed and checked before any model work.
// Invariants: a parsed request is valid (prompt present and non-empty, numbers in range, at most 4
// stop strings, n == 1); anything else throws BadRequest naming the field and what it accepts.
// Fields the server does not use (model, user, ...) are ignored.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace freekv::serve {

/// A client error: the server answers 400 with this message.
class BadRequest : public std::runtime_error {
public:
    explicit BadRequest(const std::string& message) : std::runtime_error(message) {}
};

struct ChatMessage {
    std::string role;  // system, user or assistant
    std::string content;
};

struct CompletionRequest {
    std::optional<std::string> prompt_text;  // "prompt": a string ...
    std::vector<int32_t> prompt_ids;         // ... or an array of token ids
    std::vector<ChatMessage> messages;       // chat: "messages" instead of "prompt"
    int64_t max_tokens = 16;
    std::optional<float> temperature, top_p;  // unset: the model's generation_config.json, else 0.8 / 0.95
    std::optional<int> top_k;
    std::optional<uint64_t> seed;             // unset: a random seed
    bool stream = false;
    bool ignore_eos = false;  // vLLM's extension: generate max_tokens whatever the model's end tokens (load tests)
    std::vector<std::string> stop;
};

/// Parses and checks a /v1/completions body; throws BadRequest.
CompletionRequest parse_completion_request(std::string_view body);
/// Parses and checks a /v1/chat/completions body ("messages" with roles system, user, assistant;
/// max_completion_tokens is read as max_tokens); throws BadRequest.
CompletionRequest parse_chat_request(std::string_view body);

}  // namespace freekv::serve
