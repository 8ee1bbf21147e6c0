// cmd_tokenize.cpp: `freekv tokenize`: text to ids (one line, comma-separated) or, with --decode,
// ids to text. Loads only the tokenizer, not the weights.
#include <filesystem>

#include <fmt/ranges.h>

#include "app/commands.h"
#include "core/error.h"
#include "model/loader/gguf.h"
#include "tokenizer/bpe_tokenizer.h"

namespace freekv::app {

namespace {

std::unique_ptr<Tokenizer> open_tokenizer(const std::string& model) {
    namespace fs = std::filesystem;
    if (fs::is_directory(model)) {
        const fs::path p = fs::path(model) / "tokenizer.json";
        if (!fs::exists(p)) FREEKV_FAIL("{} has no tokenizer.json", model);
        return load_tokenizer_json(p.string());
    }
    if (model.ends_with(".json")) return load_tokenizer_json(model);
    return std::make_unique<Tokenizer>(open_gguf_model(model).tokenizer);
}

}  // namespace

Command register_tokenize(CLI::App& cmd) {
    struct Flags {
        std::string model, prompt, file;
        bool decode = false, add_special = false;
    };
    auto f = std::make_shared<Flags>();
    add_model_flag(cmd, f->model)->description("model folder, .gguf file or tokenizer.json");
    cmd.add_option("-p,--prompt", f->prompt, "text (or ids with --decode)");
    cmd.add_option("-f,--file", f->file, "file with the text");
    cmd.add_flag("--decode", f->decode, "read comma- or space-separated ids and print the text");
    cmd.add_flag("--add-special", f->add_special, "add the post-processor's special tokens (e.g. BOS)");
    return [f]() -> int {
        auto tok = open_tokenizer(f->model);
        const std::string text = read_prompt(f->prompt, f->file);
        if (f->decode) {
            std::vector<int32_t> ids;
            std::string cur;
            for (char ch : text + " ") {
                if (ch >= '0' && ch <= '9') {
                    cur += ch;
                } else if (!cur.empty()) {
                    ids.push_back(std::stoi(cur));
                    cur.clear();
                } else if (ch != ',' && ch != ' ' && ch != '\n' && ch != '[' && ch != ']') {
                    FREEKV_FAIL("--decode expects token ids separated by commas or spaces, found '{}'", ch);
                }
            }
            fmt::print("{}\n", tok->decode(ids));
            return 0;
        }
        fmt::print("{}\n", fmt::join(tok->encode(text, f->add_special), ", "));
        return 0;
    };
}

}  // namespace freekv::app
