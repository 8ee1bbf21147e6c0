// gguf.cpp: GGUF container parsing (bounds-checked) and the llama/qwen2 translation.
// NOTE: GGUF files of the llama architecture store q/k projection rows permuted so that rotary
// pairs are interleaved (2i, 2i+1); rather than permuting the weights back (a copy), freekv runs
// RoPE in the interleaved style for them. Attention is invariant to this consistent permutation.
#include "model/loader/gguf.h"

#include <cstring>

#include "core/error.h"

namespace freekv {

namespace {

class Reader {
public:
    Reader(const MappedFile& f) : f_(f) {}
    template <typename T>
    T read(const char* what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, f_.data() + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }
    std::string read_string(const char* what) {
        const uint64_t n = read<uint64_t>(what);
        need(n, what);
        std::string s(reinterpret_cast<const char*>(f_.data() + pos_), n);
        pos_ += n;
        return s;
    }
    void need(uint64_t n, const char* what) const {
        if (n > f_.size() - pos_)
            FREEKV_FAIL("{}: truncated while reading {} at offset {} (needs {} bytes, {} left)", f_.path(), what, pos_, n,
                        f_.size() - pos_);
    }
    uint64_t pos() const { return pos_; }

private:
    const MappedFile& f_;
    uint64_t pos_ = 0;
};

GgufValue read_value(Reader& r, uint32_t type, const std::string& key, const std::string& path, int depth) {
    GgufValue v;
    switch (static_cast<GgufType>(type)) {
        case GgufType::kU8: v.value = static_cast<int64_t>(r.read<uint8_t>("u8")); break;
        case GgufType::kI8: v.value = static_cast<int64_t>(r.read<int8_t>("i8")); break;
        case GgufType::kU16: v.value = static_cast<int64_t>(r.read<uint16_t>("u16")); break;
        case GgufType::kI16: v.value = static_cast<int64_t>(r.read<int16_t>("i16")); break;
        case GgufType::kU32: v.value = static_cast<int64_t>(r.read<uint32_t>("u32")); break;
        case GgufType::kI32: v.value = static_cast<int64_t>(r.read<int32_t>("i32")); break;
        case GgufType::kU64: v.value = r.read<uint64_t>("u64"); break;
        case GgufType::kI64: v.value = r.read<int64_t>("i64"); break;
        case GgufType::kF32: v.value = static_cast<double>(r.read<float>("f32")); break;
        case GgufType::kF64: v.value = r.read<double>("f64"); break;
        case GgufType::kBool: v.value = r.read<uint8_t>("bool") != 0; break;
        case GgufType::kString: v.value = r.read_string("string value"); break;
        case GgufType::kArray: {
            if (depth > 2) FREEKV_FAIL("{}: metadata '{}' nests arrays too deeply", path, key);
            const uint32_t elem_type = r.read<uint32_t>("array type");
            const uint64_t n = r.read<uint64_t>("array length");
            r.need(n, "array elements");  // every element takes at least one byte
            std::vector<GgufValue> items;
            items.reserve(n);
            for (uint64_t i = 0; i < n; ++i) items.push_back(read_value(r, elem_type, key, path, depth + 1));
            v.value = std::move(items);
            break;
        }
        default: FREEKV_FAIL("{}: metadata '{}' has unknown value type {}", path, key, type);
    }
    return v;
}

DType ggml_to_dtype(uint32_t t, const std::string& name, const std::string& path) {
    switch (static_cast<GgmlType>(t)) {
        case GgmlType::kF32: return DType::kF32;
        case GgmlType::kF16: return DType::kF16;
        case GgmlType::kBF16: return DType::kBF16;
        case GgmlType::kQ8_0: return DType::kQ8_0;
    }
    FREEKV_FAIL("{}: tensor '{}' has ggml type {}, which freekv does not read (supported: F32, F16, BF16, Q8_0)", path,
                name, t);
}

const GgufValue* find(const std::map<std::string, GgufValue>& m, const std::string& key) {
    auto it = m.find(key);
    return it == m.end() ? nullptr : &it->second;
}

const GgufValue& require(const std::map<std::string, GgufValue>& m, const std::string& key, const std::string& path) {
    const GgufValue* v = find(m, key);
    if (v == nullptr) FREEKV_FAIL("{}: required metadata '{}' is missing", path, key);
    return *v;
}

// Pre-tokenizer regexes for the tokenizer.ggml.pre names of the supported families.
constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

TokenizerSpec gguf_tokenizer(const std::map<std::string, GgufValue>& m, const std::string& path) {
    TokenizerSpec spec;
    const std::string model = require(m, "tokenizer.ggml.model", path).as_string("tokenizer.ggml.model");
    if (model != "gpt2") FREEKV_FAIL("{}: tokenizer model '{}' is not supported (only gpt2-style byte-level BPE)", path, model);
    const auto& tokens = require(m, "tokenizer.ggml.tokens", path).as_array("tokenizer.ggml.tokens");
    const GgufValue* types = find(m, "tokenizer.ggml.token_type");
    for (size_t i = 0; i < tokens.size(); ++i) {
        const std::string& text = tokens[i].as_string("tokenizer.ggml.tokens");
        const int64_t type = types != nullptr ? types->as_array("tokenizer.ggml.token_type").at(i).as_int("token_type") : 1;
        // 3 = control, 4 = user-defined: matched literally in text, like added tokens.
        if (type == 3 || type == 4) {
            AddedToken t;
            t.id = static_cast<int32_t>(i);
            t.content = text;
            t.special = type == 3;
            spec.added_tokens.push_back(std::move(t));
        } else {
            spec.vocab.emplace_back(text, static_cast<int32_t>(i));
        }
    }
    if (const GgufValue* merges = find(m, "tokenizer.ggml.merges")) {
        for (const auto& mv : merges->as_array("tokenizer.ggml.merges")) {
            const std::string& s = mv.as_string("tokenizer.ggml.merges");
            const size_t space = s.find(' ', 1);
            if (space == std::string::npos) FREEKV_FAIL("{}: merge '{}' has no space", path, s);
            spec.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
        }
    }
    std::string pre = "default";
    if (const GgufValue* p = find(m, "tokenizer.ggml.pre")) pre = p->as_string("tokenizer.ggml.pre");
    PreTokenizerStep split;
    split.kind = PreTokenizerStep::Kind::kSplit;
    PreTokenizerStep byte_level;
    byte_level.kind = PreTokenizerStep::Kind::kByteLevel;
    if (pre == "llama-bpe" || pre == "llama3" || pre == "smaug-bpe") {
        split.pattern = kLlama3Pattern;
        byte_level.use_regex = false;
        spec.pre_tokenizer = {split, byte_level};
        spec.ignore_merges = true;
    } else if (pre == "qwen2") {
        split.pattern = kQwen2Pattern;
        byte_level.use_regex = false;
        spec.pre_tokenizer = {split, byte_level};
        spec.normalize_nfc = true;
    } else if (pre == "smollm") {
        PreTokenizerStep digits;
        digits.kind = PreTokenizerStep::Kind::kDigits;
        digits.individual_digits = true;
        spec.pre_tokenizer = {digits, byte_level};
    } else if (pre == "default" || pre == "gpt-2" || pre == "gpt2") {
        spec.pre_tokenizer = {byte_level};
    } else {
        FREEKV_FAIL("{}: tokenizer.ggml.pre '{}' is not supported (supported: llama-bpe, qwen2, smollm, gpt-2)", path, pre);
    }
    if (const GgufValue* v = find(m, "tokenizer.ggml.bos_token_id")) spec.bos_id = static_cast<int32_t>(v->as_int("bos"));
    if (const GgufValue* v = find(m, "tokenizer.ggml.eos_token_id")) spec.eos_id = static_cast<int32_t>(v->as_int("eos"));
    bool add_bos = pre == "llama-bpe" || pre == "llama3";
    if (const GgufValue* v = find(m, "tokenizer.ggml.add_bos_token")) add_bos = v->as_bool("tokenizer.ggml.add_bos_token");
    if (add_bos && spec.bos_id) spec.prefix_ids.push_back(*spec.bos_id);
    return spec;
}

}  // namespace

int64_t GgufValue::as_int(const std::string& key) const {
    if (auto* i = std::get_if<int64_t>(&value)) return *i;
    if (auto* u = std::get_if<uint64_t>(&value)) {
        if (*u > static_cast<uint64_t>(INT64_MAX)) FREEKV_FAIL("GGUF metadata '{}' = {} is too large", key, *u);
        return static_cast<int64_t>(*u);
    }
    FREEKV_FAIL("GGUF metadata '{}' is not an integer", key);
}
double GgufValue::as_float(const std::string& key) const {
    if (auto* d = std::get_if<double>(&value)) return *d;
    return static_cast<double>(as_int(key));
}
bool GgufValue::as_bool(const std::string& key) const {
    if (auto* b = std::get_if<bool>(&value)) return *b;
    FREEKV_FAIL("GGUF metadata '{}' is not a bool", key);
}
const std::string& GgufValue::as_string(const std::string& key) const {
    if (auto* s = std::get_if<std::string>(&value)) return *s;
    FREEKV_FAIL("GGUF metadata '{}' is not a string", key);
}
const std::vector<GgufValue>& GgufValue::as_array(const std::string& key) const {
    if (auto* a = std::get_if<std::vector<GgufValue>>(&value)) return *a;
    FREEKV_FAIL("GGUF metadata '{}' is not an array", key);
}

void read_gguf(const std::string& path, std::map<std::string, GgufValue>& metadata, TensorSource& tensors,
               std::string (*rename)(const std::string&)) {
    const int file_index = tensors.add_file(MappedFile(path));
    const MappedFile& f = tensors.file(file_index);
    Reader r(f);
    const auto magic = r.read<uint32_t>("magic");
    if (magic != 0x46554747u) FREEKV_FAIL("{}: not a GGUF file (bad magic)", path);
    const auto version = r.read<uint32_t>("version");
    if (version != 2 && version != 3) FREEKV_FAIL("{}: GGUF version {} is not supported (2 or 3)", path, version);
    const auto n_tensors = r.read<uint64_t>("tensor count");
    const auto n_kv = r.read<uint64_t>("metadata count");
    if (n_tensors > (uint64_t{1} << 24) || n_kv > (uint64_t{1} << 24))
        FREEKV_FAIL("{}: absurd tensor count {} or metadata count {}", path, n_tensors, n_kv);
    for (uint64_t i = 0; i < n_kv; ++i) {
        std::string key = r.read_string("metadata key");
        const auto type = r.read<uint32_t>("metadata type");
        metadata[key] = read_value(r, type, key, path, 0);
    }
    uint64_t alignment = 32;
    if (auto it = metadata.find("general.alignment"); it != metadata.end()) {
        alignment = static_cast<uint64_t>(it->second.as_int("general.alignment"));
        if (alignment == 0 || (alignment & (alignment - 1)) != 0)
            FREEKV_FAIL("{}: general.alignment {} is not a power of two", path, alignment);
    }
    struct Info {
        std::string name;
        std::vector<int64_t> shape;
        DType dtype;
        uint64_t offset;
    };
    std::vector<Info> infos;
    for (uint64_t i = 0; i < n_tensors; ++i) {
        Info info;
        info.name = r.read_string("tensor name");
        const auto n_dims = r.read<uint32_t>("tensor dims");
        if (n_dims == 0 || n_dims > 4) FREEKV_FAIL("{}: tensor '{}' has {} dimensions", path, info.name, n_dims);
        std::vector<int64_t> ne(n_dims);
        for (auto& d : ne) {
            const auto v = r.read<uint64_t>("tensor dim");
            if (v == 0 || v > (uint64_t{1} << 40)) FREEKV_FAIL("{}: tensor '{}' has dimension {}", path, info.name, v);
            d = static_cast<int64_t>(v);
        }
        info.shape.assign(ne.rbegin(), ne.rend());  // ggml lists the innermost dimension first
        info.dtype = ggml_to_dtype(r.read<uint32_t>("tensor type"), info.name, path);
        info.offset = r.read<uint64_t>("tensor offset");
        if (info.dtype == DType::kQ8_0 && info.shape.back() % kQ8BlockSize != 0)
            FREEKV_FAIL("{}: q8_0 tensor '{}' has a row of {} values, not a multiple of 32", path, info.name, info.shape.back());
        infos.push_back(std::move(info));
    }
    const uint64_t data_start = (r.pos() + alignment - 1) / alignment * alignment;
    if (data_start > f.size()) FREEKV_FAIL("{}: truncated before the tensor data", path);
    for (auto& info : infos) {
        WeightView view;
        view.name = rename != nullptr ? rename(info.name) : info.name;
        if (view.name.empty()) continue;
        view.dtype = info.dtype;
        view.shape = info.shape;
        const uint64_t bytes = static_cast<uint64_t>(view.rows() * view.row_bytes());
        if (info.offset > f.size() - data_start || bytes > f.size() - data_start - info.offset)
            FREEKV_FAIL("{}: tensor '{}' ({} bytes at data offset {}) extends past the end of the file (truncated?)",
                        path, info.name, bytes, info.offset);
        view.data = f.data() + data_start + info.offset;
        tensors.add(std::move(view), file_index);
    }
}

std::string gguf_to_hf_name(const std::string& n) {
    static const std::map<std::string, std::string> global = {
        {"token_embd.weight", "model.embed_tokens.weight"},
        {"output_norm.weight", "model.norm.weight"},
        {"output.weight", "lm_head.weight"},
        {"rope_freqs.weight", "rope_freqs.weight"},
    };
    if (auto it = global.find(n); it != global.end()) return it->second;
    static const std::map<std::string, std::string> per_layer = {
        {"attn_norm.weight", "input_layernorm.weight"},       {"attn_q.weight", "self_attn.q_proj.weight"},
        {"attn_k.weight", "self_attn.k_proj.weight"},         {"attn_v.weight", "self_attn.v_proj.weight"},
        {"attn_q.bias", "self_attn.q_proj.bias"},             {"attn_k.bias", "self_attn.k_proj.bias"},
        {"attn_v.bias", "self_attn.v_proj.bias"},             {"attn_output.weight", "self_attn.o_proj.weight"},
        {"ffn_norm.weight", "post_attention_layernorm.weight"}, {"ffn_gate.weight", "mlp.gate_proj.weight"},
        {"ffn_up.weight", "mlp.up_proj.weight"},              {"ffn_down.weight", "mlp.down_proj.weight"},
    };
    if (n.rfind("blk.", 0) != 0) return "";
    const size_t dot = n.find('.', 4);
    if (dot == std::string::npos) return "";
    auto it = per_layer.find(n.substr(dot + 1));
    if (it == per_layer.end()) return "";
    return "model.layers." + n.substr(4, dot - 4) + "." + it->second;
}

GgufModel open_gguf_model(const std::string& path) {
    GgufModel model;
    model.tensors = std::make_unique<TensorSource>();
    read_gguf(path, model.metadata, *model.tensors, &gguf_to_hf_name);
    const auto& m = model.metadata;
    const std::string arch = require(m, "general.architecture", path).as_string("general.architecture");
    if (arch != "llama" && arch != "qwen2")
        FREEKV_FAIL("{}: architecture '{}' is not supported (supported GGUF architectures: llama, qwen2)", path, arch);
    auto key = [&](const char* k) { return arch + "." + k; };
    ModelConfig& c = model.config;
    c.arch = arch;
    c.n_layer = require(m, key("block_count"), path).as_int(key("block_count"));
    c.n_embd = require(m, key("embedding_length"), path).as_int(key("embedding_length"));
    c.n_ff = require(m, key("feed_forward_length"), path).as_int(key("feed_forward_length"));
    c.n_head = require(m, key("attention.head_count"), path).as_int(key("attention.head_count"));
    c.n_head_kv = c.n_head;
    if (auto* v = find(m, key("attention.head_count_kv"))) c.n_head_kv = v->as_int(key("attention.head_count_kv"));
    c.head_dim = c.n_head > 0 ? c.n_embd / c.n_head : 0;
    if (auto* v = find(m, key("attention.key_length"))) c.head_dim = v->as_int(key("attention.key_length"));
    c.n_ctx_train = require(m, key("context_length"), path).as_int(key("context_length"));
    c.rms_norm_eps = static_cast<float>(require(m, key("attention.layer_norm_rms_epsilon"), path).as_float("eps"));
    if (auto* v = find(m, key("rope.freq_base"))) c.rope_theta = v->as_float(key("rope.freq_base"));
    if (auto* v = find(m, key("rope.scaling.type")); v != nullptr && v->as_string("rope.scaling.type") == "linear") {
        c.rope_scaling = RopeScaling::kLinear;
        c.rope_factor = require(m, key("rope.scaling.factor"), path).as_float("rope.scaling.factor");
    }
    c.rope_style = arch == "llama" ? RopeStyle::kInterleaved : RopeStyle::kNeox;
    c.qkv_bias = arch == "qwen2";

    const auto embd = model.tensors->find("model.embed_tokens.weight");
    if (!embd) FREEKV_FAIL("{}: tensor 'token_embd.weight' is missing", path);
    c.n_vocab = embd->shape.front();
    c.tie_word_embeddings = !model.tensors->contains("lm_head.weight");
    if (auto freqs = model.tensors->find("rope_freqs.weight")) {
        if (freqs->numel() != c.head_dim / 2 || freqs->dtype != DType::kF32)
            FREEKV_FAIL("{}: rope_freqs.weight must be {} f32 values", path, c.head_dim / 2);
        c.rope_freq_divisors.resize(static_cast<size_t>(c.head_dim / 2));
        convert_to_f32(freqs->dtype, freqs->data, c.rope_freq_divisors.data(), c.head_dim / 2);
    }
    model.tokenizer = gguf_tokenizer(m, path);
    if (model.tokenizer.bos_id) c.bos_token_id = *model.tokenizer.bos_id;
    if (model.tokenizer.eos_id) c.eos_token_ids.push_back(*model.tokenizer.eos_id);
    c.validate(path);
    return model;
}

}  // namespace freekv
