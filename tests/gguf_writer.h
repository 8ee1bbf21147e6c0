// gguf_writer.h: a minimal GGUF v3 writer for tests only: turns a Hugging Face checkpoint into a
// GGUF file the way llama.cpp's converter lays it out (GGUF tensor names, ggml dimension order,
// llama q/k rows permuted to interleaved rotary pairs, Llama 3.1 scaling as a rope_freqs tensor),
// so the GGUF reader can be checked against the safetensors path on the same weights.
#pragma once

#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "core/dtype.h"
#include "model/loader/gguf.h"
#include "model/loader/tensor_source.h"
#include "model/model_config.h"
#include "tokenizer/bpe_tokenizer.h"

namespace freekv::test {

class GgufWriter {
public:
    using Value = std::variant<uint32_t, float, bool, std::string, std::vector<std::string>, std::vector<int32_t>>;
    void set(const std::string& key, Value v) { kv_.emplace_back(key, std::move(v)); }
    /// data: raw bytes in `type`'s layout; shape outermost first.
    void add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> shape, std::string data) {
        tensors_.push_back({name, type, std::move(shape), std::move(data)});
    }
    std::string bytes() const {
        std::string out;
        put<uint32_t>(out, 0x46554747u);
        put<uint32_t>(out, 3);
        put<uint64_t>(out, tensors_.size());
        put<uint64_t>(out, kv_.size());
        for (const auto& [k, v] : kv_) {
            put_string(out, k);
            std::visit([&](const auto& x) { put_value(out, x); }, v);
        }
        uint64_t offset = 0;
        for (const auto& t : tensors_) {
            put_string(out, t.name);
            put<uint32_t>(out, static_cast<uint32_t>(t.shape.size()));
            for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) put<uint64_t>(out, static_cast<uint64_t>(*it));
            put<uint32_t>(out, static_cast<uint32_t>(t.type));
            put<uint64_t>(out, offset);
            offset += (t.data.size() + 31) / 32 * 32;
        }
        out.resize((out.size() + 31) / 32 * 32, '\0');
        for (const auto& t : tensors_) {
            out += t.data;
            out.resize((out.size() + 31) / 32 * 32, '\0');
        }
        return out;
    }

private:
    template <typename T>
    static void put(std::string& out, T v) {
        out.append(reinterpret_cast<const char*>(&v), sizeof(T));
    }
    static void put_string(std::string& out, const std::string& s) {
        put<uint64_t>(out, s.size());
        out += s;
    }
    static void put_value(std::string& out, uint32_t v) { put<uint32_t>(out, 4), put<uint32_t>(out, v); }
    static void put_value(std::string& out, float v) { put<uint32_t>(out, 6), put<float>(out, v); }
    static void put_value(std::string& out, bool v) { put<uint32_t>(out, 7), put<uint8_t>(out, v ? 1 : 0); }
    static void put_value(std::string& out, const std::string& v) { put<uint32_t>(out, 8), put_string(out, v); }
    static void put_value(std::string& out, const std::vector<std::string>& v) {
        put<uint32_t>(out, 9), put<uint32_t>(out, 8), put<uint64_t>(out, v.size());
        for (const auto& s : v) put_string(out, s);
    }
    static void put_value(std::string& out, const std::vector<int32_t>& v) {
        put<uint32_t>(out, 9), put<uint32_t>(out, 5), put<uint64_t>(out, v.size());
        for (int32_t x : v) put<int32_t>(out, x);
    }
    struct Tensor {
        std::string name;
        GgmlType type;
        std::vector<int64_t> shape;
        std::string data;
    };
    std::vector<std::pair<std::string, Value>> kv_;
    std::vector<Tensor> tensors_;
};

/// Quantizes fp32 rows to Q8_0 blocks (scale = max|x| / 127, round to nearest).
inline std::string quantize_q8_0(const std::vector<float>& x) {
    std::string out;
    for (size_t b = 0; b < x.size() / 32; ++b) {
        float amax = 0;
        for (size_t i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[b * 32 + i]));
        const float d = amax / 127.0f;
        const uint16_t dh = f32_to_f16(d);
        out.append(reinterpret_cast<const char*>(&dh), 2);
        const float id = d > 0 ? 1.0f / d : 0.0f;
        for (size_t i = 0; i < 32; ++i) out.push_back(static_cast<char>(static_cast<int8_t>(std::lround(x[b * 32 + i] * id))));
    }
    return out;
}

/// Converts an HF checkpoint (config + tensors) to GGUF bytes. `quantize`: matrices as Q8_0.
inline std::string hf_to_gguf(const ModelConfig& c, const TensorSource& src, bool quantize,
                              const TokenizerSpec* tokenizer, const std::string& pre) {
    GgufWriter w;
    const std::string arch = c.arch == "qwen2" ? "qwen2" : "llama";
    w.set("general.architecture", arch);
    w.set(arch + ".block_count", static_cast<uint32_t>(c.n_layer));
    w.set(arch + ".embedding_length", static_cast<uint32_t>(c.n_embd));
    w.set(arch + ".feed_forward_length", static_cast<uint32_t>(c.n_ff));
    w.set(arch + ".attention.head_count", static_cast<uint32_t>(c.n_head));
    w.set(arch + ".attention.head_count_kv", static_cast<uint32_t>(c.n_head_kv));
    w.set(arch + ".attention.key_length", static_cast<uint32_t>(c.head_dim));
    w.set(arch + ".context_length", static_cast<uint32_t>(c.n_ctx_train));
    w.set(arch + ".attention.layer_norm_rms_epsilon", c.rms_norm_eps);
    w.set(arch + ".rope.freq_base", static_cast<float>(c.rope_theta));
    if (tokenizer != nullptr) {
        std::vector<std::string> tokens;
        std::vector<int32_t> types;
        int32_t n = 0;
        for (const auto& [t, id] : tokenizer->vocab) n = std::max(n, id + 1);
        for (const auto& t : tokenizer->added_tokens) n = std::max(n, t.id + 1);
        tokens.resize(static_cast<size_t>(n));
        types.assign(static_cast<size_t>(n), 1);
        for (const auto& [t, id] : tokenizer->vocab) tokens[static_cast<size_t>(id)] = t;
        for (const auto& t : tokenizer->added_tokens) {
            tokens[static_cast<size_t>(t.id)] = t.content;
            types[static_cast<size_t>(t.id)] = t.special ? 3 : 4;
        }
        std::vector<std::string> merges;
        for (const auto& [a, b] : tokenizer->merges) merges.push_back(a + " " + b);
        w.set("tokenizer.ggml.model", std::string("gpt2"));
        w.set("tokenizer.ggml.pre", pre);
        w.set("tokenizer.ggml.tokens", tokens);
        w.set("tokenizer.ggml.token_type", types);
        w.set("tokenizer.ggml.merges", merges);
        w.set("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(0));
        w.set("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(0));
        w.set("tokenizer.ggml.add_bos_token", false);
    }
    // Reverse name table (HF -> GGUF) from the reader's own GGUF -> HF mapping.
    auto gguf_name = [&](const std::string& hf) -> std::string {
        static const char* global[][2] = {{"model.embed_tokens.weight", "token_embd.weight"},
                                          {"model.norm.weight", "output_norm.weight"},
                                          {"lm_head.weight", "output.weight"}};
        for (auto& g : global)
            if (hf == g[0]) return g[1];
        static const char* per_layer[] = {"attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
                                          "attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_output.weight",
                                          "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"};
        for (int64_t il = 0; il < c.n_layer; ++il)
            for (const char* s : per_layer) {
                const std::string g = "blk." + std::to_string(il) + "." + s;
                if (gguf_to_hf_name(g) == hf) return g;
            }
        return "";
    };
    for (const auto& [name, view] : src.tensors()) {
        const std::string g = gguf_name(name);
        if (g.empty()) continue;
        std::vector<float> x(static_cast<size_t>(view.numel()));
        convert_to_f32(view.dtype, view.data, x.data(), view.numel());
        const bool is_q = g.find("attn_q.") != std::string::npos, is_k = g.find("attn_k.") != std::string::npos;
        if (arch == "llama" && (is_q || is_k)) {  // rotate-half rows -> interleaved pairs
            const int64_t n_heads = is_q ? c.n_head : c.n_head_kv, hd = c.head_dim, cols = view.cols();
            std::vector<float> y(x.size());
            for (int64_t h = 0; h < n_heads; ++h)
                for (int64_t i = 0; i < hd / 2; ++i)
                    for (int64_t j = 0; j < 2; ++j)
                        std::memcpy(&y[static_cast<size_t>((h * hd + 2 * i + j) * cols)],
                                    &x[static_cast<size_t>((h * hd + j * hd / 2 + i) * cols)], static_cast<size_t>(cols) * 4);
            x = std::move(y);
        }
        std::string data;
        GgmlType type = GgmlType::kF32;
        if (quantize && view.shape.size() == 2 && view.cols() % 32 == 0) {
            type = GgmlType::kQ8_0;
            data = quantize_q8_0(x);
        } else if (view.dtype == DType::kBF16 || view.dtype == DType::kF16) {
            // exact: x holds (permuted) values that came from this dtype
            type = view.dtype == DType::kBF16 ? GgmlType::kBF16 : GgmlType::kF16;
            for (float v : x) {
                const uint16_t h = view.dtype == DType::kBF16 ? f32_to_bf16(v) : f32_to_f16(v);
                data.append(reinterpret_cast<const char*>(&h), 2);
            }
        } else {
            data.assign(reinterpret_cast<const char*>(x.data()), x.size() * 4);
        }
        w.add_tensor(g, type, view.shape, std::move(data));
    }
    if (c.rope_scaling == RopeScaling::kLlama3) {
        ModelConfig plain = c;
        plain.rope_scaling = RopeScaling::kNone;
        const auto base = plain.rope_inv_freq(), scaled = c.rope_inv_freq();
        std::vector<float> divisors(base.size());
        for (size_t i = 0; i < base.size(); ++i) divisors[i] = base[i] / scaled[i];
        w.add_tensor("rope_freqs.weight", GgmlType::kF32, {static_cast<int64_t>(divisors.size())},
                     std::string(reinterpret_cast<const char*>(divisors.data()), divisors.size() * 4));
    }
    return w.bytes();
}

}  // namespace freekv::test
