// chat_template.cpp: see chat_template.h.
#include "serve/chat_template.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace freekv::serve {

namespace {

std::optional<int32_t> special(const Tokenizer& t, const char* text) { return t.find_token(text); }

// The template string of tokenizer_config.json: a string, or a list of {name, template} (the
// "default" one); empty when absent or unreadable.
std::string read_template(const std::string& model_path) {
    namespace fs = std::filesystem;
    fs::path dir(model_path);
    if (!fs::is_directory(dir)) dir = dir.parent_path();
    const fs::path file = dir / "tokenizer_config.json";
    std::ifstream in(file);
    if (!in) return {};
    std::stringstream ss;
    ss << in.rdbuf();
    const auto j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return {};
    const auto it = j.find("chat_template");
    if (it == j.end()) return {};
    if (it->is_string()) return it->get<std::string>();
    if (it->is_array())
        for (const auto& t : *it)
            if (t.is_object() && t.value("name", "") == "default" && t.contains("template") && t["template"].is_string())
                return t["template"].get<std::string>();
    return {};
}

std::string trim(const std::string& s) {
    const auto b = s.find_first_not_of(" \t\r\n");
    if (b == std::string::npos) return {};
    return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

}  // namespace

std::optional<ChatTemplate> ChatTemplate::from_template_text(const std::string& text, const Tokenizer& t) {
    const bool says_llama3 = text.find("<|start_header_id|>") != std::string::npos;
    const bool says_chatml = text.find("<|im_start|>") != std::string::npos;
    const auto header = special(t, "<|start_header_id|>"), header_end = special(t, "<|end_header_id|>"),
               eot = special(t, "<|eot_id|>");
    const auto im_start = special(t, "<|im_start|>"), im_end = special(t, "<|im_end|>");
    const bool has_llama3 = header && header_end && eot, has_chatml = im_start && im_end;
    // The template text decides when there is one; without it, the tokens alone.
    if ((says_llama3 || (text.empty() && has_llama3 && !has_chatml)) && has_llama3)
        return ChatTemplate(ChatFormat::kLlama3, {*eot});
    if ((says_chatml || (text.empty() && has_chatml && !has_llama3)) && has_chatml)
        return ChatTemplate(ChatFormat::kChatML, {*im_end});
    return std::nullopt;
}

std::string ChatTemplate::template_text(const std::string& model_path) { return read_template(model_path); }

std::optional<ChatTemplate> ChatTemplate::detect(const std::string& model_path, const Tokenizer& tokenizer) {
    return from_template_text(read_template(model_path), tokenizer);
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages) const {
    std::string out;
    if (format_ == ChatFormat::kLlama3) {
        // BOS comes from the tokenizer's post-processor (encode with add_special).
        for (const ChatMessage& m : messages)
            out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + trim(m.content) + "<|eot_id|>";
        out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
    } else {
        for (const ChatMessage& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
        out += "<|im_start|>assistant\n";
    }
    return out;
}

}  // namespace freekv::serve
