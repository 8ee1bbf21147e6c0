// model_loader.cpp: HF folder / GGUF detection, config + weights + tokenizer binding, summary.
#include "model/model_loader.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "core/mapped_file.h"
#include "core/progress.h"
#include "model/loader/gguf.h"

namespace freekv {

namespace {

GenerationDefaults read_generation_config(const std::filesystem::path& file, ModelConfig& config) {
    GenerationDefaults g;
    if (!std::filesystem::exists(file)) return g;
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(read_text_file(file.string()));
    } catch (const nlohmann::json::exception& e) {
        FREEKV_FAIL("{}: not valid JSON ({})", file.string(), e.what());
    }
    if (j.contains("temperature") && j["temperature"].is_number()) g.temperature = j["temperature"].get<float>();
    if (j.contains("top_p") && j["top_p"].is_number()) g.top_p = j["top_p"].get<float>();
    // Integers are read as int64 and range-checked: a float or a huge number is never cast.
    const auto small_int = [](const nlohmann::json& v) {
        return v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t{1} << 31) &&
               v.get<int64_t>() >= 0 && v.get<int64_t>() < int64_t{1} << 31;
    };
    if (j.contains("top_k") && small_int(j["top_k"])) g.top_k = static_cast<int>(j["top_k"].get<int64_t>());
    if (j.contains("eos_token_id")) {
        const auto& e = j["eos_token_id"];
        const auto add = [&](const nlohmann::json& x) {
            if (!small_int(x))
                FREEKV_FAIL("{}: eos_token_id must hold token ids (integers in [0, 2^31)), got {}", file.string(), x.dump());
            config.eos_token_ids.push_back(static_cast<int32_t>(x.get<int64_t>()));
        };
        if (e.is_number_integer()) add(e);
        if (e.is_array())
            for (const auto& x : e) add(x);
    }
    return g;
}

}  // namespace

std::vector<int32_t> LoadedModel::stop_ids() const {
    std::vector<int32_t> ids = config.eos_token_ids;
    if (tokenizer && tokenizer->eos_id()) ids.push_back(*tokenizer->eos_id());
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    return ids;
}

std::string LoadedModel::summary() const {
    const ModelConfig& c = config;
    const double gib = static_cast<double>(tensors->total_bytes()) / (1024.0 * 1024.0 * 1024.0);
    std::string s = fmt::format(
        "load: arch {} | n_layer {} | n_head {} | n_head_kv {} | head_dim {} | n_embd {} | n_ff {} | n_vocab {}\n",
        c.arch, c.n_layer, c.n_head, c.n_head_kv, c.head_dim, c.n_embd, c.n_ff, c.n_vocab);
    s += fmt::format("load: n_ctx_train {} | rope {}{} | {} | weights {:.2f} GiB ({})\n", c.n_ctx_train,
                     c.rope_description(), c.rope_style == RopeStyle::kInterleaved ? " (interleaved)" : "",
                     weights_dtype, gib, format);
    if (c.rope_freq_dtype != DType::kF32)
        s += fmt::format("load: rope frequencies rounded to {} (--rope-freq-dtype checkpoint)\n", dtype_name(c.rope_freq_dtype));
    s += fmt::format("load: kv {} KiB/token at bf16 ({} KiB at f32) | qkv bias {} | tied embeddings {}",
                     static_cast<double>(c.kv_bytes_per_token(2)) / 1024.0,
                     static_cast<double>(c.kv_bytes_per_token(4)) / 1024.0, c.qkv_bias ? "yes" : "no",
                     c.tie_word_embeddings ? "yes" : "no");
    return s;
}

LoadedModel load_model(const std::string& path, const LoadOptions& options) {
    namespace fs = std::filesystem;
    LoadedModel m;
    m.path = path;
    if (!fs::exists(path)) FREEKV_FAIL("model path {} does not exist; pass a Hugging Face folder or a .gguf file to -m", path);
    if (fs::is_directory(path)) {
        m.format = "safetensors";
        const fs::path dir(path);
        const fs::path config_path = dir / "config.json";
        if (!fs::exists(config_path)) FREEKV_FAIL("{} has no config.json; is it a Hugging Face model folder?", path);
        m.config = parse_hf_config(read_text_file(config_path.string()), config_path.string());
        m.generation = read_generation_config(dir / "generation_config.json", m.config);
        m.tensors = open_safetensors_folder(path);
        if (fs::exists(dir / "tokenizer.json")) m.tokenizer = load_tokenizer_json((dir / "tokenizer.json").string());
    } else {
        m.format = "gguf";
        GgufModel g = open_gguf_model(path);
        m.config = std::move(g.config);
        m.tensors = std::move(g.tensors);
        m.tokenizer = std::make_unique<Tokenizer>(g.tokenizer);
    }
    LlamaWeights weights = LlamaWeights::bind(*m.tensors, m.config);
    // Page the weights in now, with a progress line for large models, rather than stalling silently
    // inside the first forward pass.
    const int64_t total = m.tensors->total_bytes();
    if (total >= (int64_t{1} << 30)) {
        int64_t files_bytes = 0;
        for (int i = 0; i < m.tensors->n_files(); ++i) files_bytes += static_cast<int64_t>(m.tensors->file(i).size());
        ProgressLine progress("load", files_bytes >> 20, "MiB");
        int64_t done = 0;
        for (int i = 0; i < m.tensors->n_files(); ++i)
            m.tensors->file(i).prefetch(0, m.tensors->file(i).size(), [&](size_t n) {
                done += static_cast<int64_t>(n);
                progress.update(done >> 20);
            });
    }
    m.weights_dtype = std::string(dtype_name(weights.layers.front().wq.dtype));
    if (options.rope_freq_checkpoint_dtype) {
        const DType stored = weights.layers.front().wq.dtype;
        if (stored == DType::kBF16 || stored == DType::kF16) m.config.rope_freq_dtype = stored;
    }
    if (m.tokenizer && m.tokenizer->n_vocab() > m.config.n_vocab)
        FREEKV_FAIL("{}: the tokenizer has {} tokens but the model's vocabulary is {}", path, m.tokenizer->n_vocab(),
                    m.config.n_vocab);
    m.model = std::make_unique<LlamaModel>(m.config, std::move(weights), options.impl);
    return m;
}

}  // namespace freekv
