// chat_template.h: turns chat messages into a prompt for the two chat formats of the model
// families freekv serves: Llama 3 (<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>) and
// ChatML (Qwen2.5, SmolLM2: <|im_start|>role\n...<|im_end|>\n). The format is recognised from the
// model's chat template (tokenizer_config.json's chat_template) and checked against the
// tokenizer's special tokens; no Jinja is evaluated.
// Invariants: render() ends with the assistant header (the model continues as the assistant);
// end_token_ids() are the tokens that end an assistant turn (added to the request's stop ids).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "serve/completion_request.h"
#include "tokenizer/bpe_tokenizer.h"

namespace freekv::serve {

enum class ChatFormat { kLlama3, kChatML };

class ChatTemplate {
public:
    /// The format of a model folder (its tokenizer_config.json, else the tokenizer's special
    /// tokens); nullopt when neither format fits (the server then answers chat requests with 400).
    static std::optional<ChatTemplate> detect(const std::string& model_path, const Tokenizer& tokenizer);
    /// The chat_template of the folder's tokenizer_config.json (the "default" one of a list);
    /// empty when there is none.
    static std::string template_text(const std::string& model_path);
    /// The same from the template text itself (tests, GGUF metadata).
    static std::optional<ChatTemplate> from_template_text(const std::string& text, const Tokenizer& tokenizer);

    ChatFormat format() const { return format_; }
    const char* name() const { return format_ == ChatFormat::kLlama3 ? "llama3" : "chatml"; }
    /// The prompt text (special tokens spelled out; encode it with add_special so BOS is added
    /// where the tokenizer's post-processor adds it).
    std::string render(const std::vector<ChatMessage>& messages) const;
    const std::vector<int32_t>& end_token_ids() const { return end_ids_; }

private:
    ChatTemplate(ChatFormat format, std::vector<int32_t> end_ids) : format_(format), end_ids_(std::move(end_ids)) {}
    ChatFormat format_;
    std::vector<int32_t> end_ids_;
};

}  // namespace freekv::serve
