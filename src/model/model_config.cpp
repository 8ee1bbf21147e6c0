// model_config.cpp: config.json parsing and validation, and the rotary frequencies (including
// Llama 3.1's frequency-dependent scaling), computed as transformers computes them.
#include "model/model_config.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <limits>
#include <numbers>
#include <type_traits>

#include "core/error.h"

namespace freekv {

namespace {

using nlohmann::json;

// An integer of T's range. A float (1e40) or an integer past T is an error, never a cast: nlohmann
// converts a float to an integer with a plain cast, undefined behaviour when it does not fit.
template <typename T>
T integer_value(const json& v, const char* key, const std::string& path) {
    constexpr auto lo = static_cast<int64_t>(std::numeric_limits<T>::min()), hi = static_cast<int64_t>(std::numeric_limits<T>::max());
    const bool fits = v.is_number_integer() && (v.is_number_unsigned() ? v.get<uint64_t>() <= static_cast<uint64_t>(hi)
                                                                        : v.get<int64_t>() >= lo && v.get<int64_t>() <= hi);
    if (!fits) FREEKV_FAIL("{}: field '{}' must be an integer in [{}, {}], got {}", path, key, lo, hi, v.dump());
    return static_cast<T>(v.get<int64_t>());
}

template <typename T>
T get_value(const json& v, const char* key, const std::string& path) {
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
        return integer_value<T>(v, key, path);
    } else {
        try {
            return v.get<T>();
        } catch (const json::exception&) {
            FREEKV_FAIL("{}: field '{}' has the wrong type ({})", path, key, v.dump());
        }
    }
}

template <typename T>
T get_required(const json& j, const char* key, const std::string& path) {
    if (!j.contains(key) || j[key].is_null()) FREEKV_FAIL("{}: required field '{}' is missing", path, key);
    return get_value<T>(j[key], key, path);
}

template <typename T>
T get_or(const json& j, const char* key, T fallback, const std::string& path) {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    return get_value<T>(j[key], key, path);
}

void parse_rope(const json& j, ModelConfig& c, const std::string& path) {
    // Newer transformers write rope settings under rope_parameters; older ones use rope_theta and
    // rope_scaling at top level. Accept both.
    const json* scaling = nullptr;
    if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
        const json& rp = j["rope_parameters"];
        c.rope_theta = get_or<double>(rp, "rope_theta", get_or<double>(j, "rope_theta", 10000.0, path), path);
        scaling = &rp;
    } else {
        c.rope_theta = get_or<double>(j, "rope_theta", 10000.0, path);
        if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) scaling = &j["rope_scaling"];
    }
    if (scaling == nullptr) return;
    std::string type = get_or<std::string>(*scaling, "rope_type", "", path);
    if (type.empty()) type = get_or<std::string>(*scaling, "type", "default", path);
    if (type == "default") return;
    if (type == "llama3") {
        c.rope_scaling = RopeScaling::kLlama3;
        c.rope_factor = get_required<double>(*scaling, "factor", path);
        c.rope_low_freq_factor = get_or<double>(*scaling, "low_freq_factor", 1.0, path);
        c.rope_high_freq_factor = get_or<double>(*scaling, "high_freq_factor", 4.0, path);
        c.rope_original_ctx = get_required<int64_t>(*scaling, "original_max_position_embeddings", path);
        return;
    }
    if (type == "linear") {
        c.rope_scaling = RopeScaling::kLinear;
        c.rope_factor = get_required<double>(*scaling, "factor", path);
        return;
    }
    FREEKV_FAIL("{}: rope scaling type '{}' is not supported (supported: default, linear, llama3)", path, type);
}

}  // namespace

ModelConfig parse_hf_config(const std::string& json_text, const std::string& path) {
    json j;
    try {
        j = json::parse(json_text);
    } catch (const json::exception& e) {
        FREEKV_FAIL("{}: not valid JSON ({})", path, e.what());
    }
    if (!j.is_object()) FREEKV_FAIL("{}: top level is not a JSON object", path);
    ModelConfig c;
    c.arch = get_required<std::string>(j, "model_type", path);
    if (c.arch != "llama" && c.arch != "qwen2" && c.arch != "mistral")
        FREEKV_FAIL("{}: model_type '{}' is not supported (supported: {})", path, c.arch, kSupportedArchitectures);
    c.n_layer = get_required<int64_t>(j, "num_hidden_layers", path);
    c.n_embd = get_required<int64_t>(j, "hidden_size", path);
    c.n_ff = get_required<int64_t>(j, "intermediate_size", path);
    c.n_head = get_required<int64_t>(j, "num_attention_heads", path);
    c.n_head_kv = get_or<int64_t>(j, "num_key_value_heads", c.n_head, path);
    c.head_dim = get_or<int64_t>(j, "head_dim", c.n_head > 0 ? c.n_embd / c.n_head : 0, path);
    c.n_vocab = get_required<int64_t>(j, "vocab_size", path);
    c.n_ctx_train = get_or<int64_t>(j, "max_position_embeddings", 4096, path);
    c.rms_norm_eps = static_cast<float>(get_or<double>(j, "rms_norm_eps", 1e-6, path));
    c.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", false, path);
    c.qkv_bias = c.arch == "qwen2" || get_or<bool>(j, "attention_bias", false, path);
    if (get_or<std::string>(j, "hidden_act", "silu", path) != "silu")
        FREEKV_FAIL("{}: hidden_act '{}' is not supported (only silu)", path, j["hidden_act"].dump());
    if (get_or<bool>(j, "mlp_bias", false, path)) FREEKV_FAIL("{}: mlp_bias = true is not supported", path);
    c.torch_dtype = get_or<std::string>(j, "torch_dtype", get_or<std::string>(j, "dtype", "", path), path);
    parse_rope(j, c, path);
    c.bos_token_id = get_or<int32_t>(j, "bos_token_id", -1, path);
    if (j.contains("eos_token_id")) {
        if (j["eos_token_id"].is_array()) {
            for (const auto& e : j["eos_token_id"]) c.eos_token_ids.push_back(integer_value<int32_t>(e, "eos_token_id", path));
        } else if (j["eos_token_id"].is_number_integer()) {
            c.eos_token_ids.push_back(integer_value<int32_t>(j["eos_token_id"], "eos_token_id", path));
        }
    }
    c.validate(path);
    return c;
}

void ModelConfig::validate(const std::string& source) const {
    auto in_range = [&](const char* name, int64_t v, int64_t lo, int64_t hi) {
        if (v < lo || v > hi) FREEKV_FAIL("{}: {} = {} is outside [{}, {}]", source, name, v, lo, hi);
    };
    in_range("n_layer (num_hidden_layers)", n_layer, 1, 1024);
    in_range("n_embd (hidden_size)", n_embd, 1, 1 << 17);
    in_range("n_ff (intermediate_size)", n_ff, 1, 1 << 20);
    in_range("n_head (num_attention_heads)", n_head, 1, 1024);
    in_range("n_head_kv (num_key_value_heads)", n_head_kv, 1, n_head);
    in_range("head_dim", head_dim, 2, 1024);
    in_range("n_vocab (vocab_size)", n_vocab, 1, 1 << 24);
    in_range("n_ctx_train (max_position_embeddings)", n_ctx_train, 1, int64_t{1} << 24);
    if (n_head % n_head_kv != 0)
        FREEKV_FAIL("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", source, n_head, n_head_kv);
    if (head_dim % 2 != 0) FREEKV_FAIL("{}: head_dim {} must be even for rotary embeddings", source, head_dim);
    if (!(rope_theta > 0) || !std::isfinite(rope_theta)) FREEKV_FAIL("{}: rope_theta {} must be positive", source, rope_theta);
    if (!(rms_norm_eps > 0) || !std::isfinite(rms_norm_eps))
        FREEKV_FAIL("{}: rms_norm_eps {} must be positive", source, rms_norm_eps);
    if (rope_scaling != RopeScaling::kNone && !(rope_factor >= 1.0 && std::isfinite(rope_factor)))
        FREEKV_FAIL("{}: rope scaling factor {} must be >= 1", source, rope_factor);
    if (rope_scaling == RopeScaling::kLlama3) {
        if (rope_original_ctx <= 0) FREEKV_FAIL("{}: rope original_max_position_embeddings must be positive", source);
        if (!(rope_high_freq_factor > rope_low_freq_factor))
            FREEKV_FAIL("{}: rope high_freq_factor must exceed low_freq_factor", source);
    }
}

std::vector<float> ModelConfig::rope_inv_freq() const {
    const int64_t half = head_dim / 2;
    std::vector<float> inv(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i) {
        // transformers computes 1 / theta^(2i/d) in float32 from an int64 arange.
        const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
        double f = 1.0 / std::pow(rope_theta, static_cast<double>(exponent));
        if (rope_scaling == RopeScaling::kLinear) f /= rope_factor;
        if (rope_scaling == RopeScaling::kLlama3) {
            const double low_wavelen = static_cast<double>(rope_original_ctx) / rope_low_freq_factor;
            const double high_wavelen = static_cast<double>(rope_original_ctx) / rope_high_freq_factor;
            const double wavelen = 2.0 * std::numbers::pi / f;
            if (wavelen > low_wavelen) {
                f = f / rope_factor;
            } else if (wavelen >= high_wavelen) {
                const double smooth = (static_cast<double>(rope_original_ctx) / wavelen - rope_low_freq_factor) /
                                      (rope_high_freq_factor - rope_low_freq_factor);
                f = (1.0 - smooth) * f / rope_factor + smooth * f;
            }
        }
        if (!rope_freq_divisors.empty()) f /= static_cast<double>(rope_freq_divisors[static_cast<size_t>(i)]);
        float value = static_cast<float>(f);
        if (rope_freq_dtype == DType::kBF16) value = bf16_to_f32(f32_to_bf16(value));
        if (rope_freq_dtype == DType::kF16) value = f16_to_f32(f32_to_f16(value));
        inv[static_cast<size_t>(i)] = value;
    }
    return inv;
}

std::string ModelConfig::rope_description() const {
    switch (rope_scaling) {
        case RopeScaling::kNone: return fmt::format("default, theta {}", rope_theta);
        case RopeScaling::kLinear: return fmt::format("linear, theta {}, factor {}", rope_theta, rope_factor);
        case RopeScaling::kLlama3: return fmt::format("llama3, theta {}, factor {}", rope_theta, rope_factor);
    }
    return "?";
}

}  // namespace freekv
