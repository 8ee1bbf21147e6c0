// model_config.h: the hyper-parameters of a Llama-family model (Llama 1/2/3/3.1, Qwen2/2.5,
// Mistral, SmolLM2), read from a Hugging Face config.json or from GGUF metadata.
// Invariants after validate(): every count is positive and within sane bounds, n_head is a
// multiple of n_head_kv, head_dim is even, and the rope parameters are finite.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/dtype.h"

namespace freekv {

enum class RopeScaling { kNone, kLlama3, kLinear };
/// kNeox: rotate-half pairs (i, i + head_dim/2) as in Hugging Face; kInterleaved: pairs (2i, 2i+1)
/// as in GGUF files of the llama architecture, whose q/k rows were permuted by the converter.
enum class RopeStyle { kNeox, kInterleaved };

struct ModelConfig {
    std::string arch;  // "llama", "qwen2", "mistral"
    int64_t n_layer = 0, n_embd = 0, n_ff = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_vocab = 0;
    int64_t n_ctx_train = 0;
    float rms_norm_eps = 1e-5f;
    bool qkv_bias = false;
    bool tie_word_embeddings = false;
    double rope_theta = 10000.0;
    RopeStyle rope_style = RopeStyle::kNeox;
    RopeScaling rope_scaling = RopeScaling::kNone;
    double rope_factor = 1.0, rope_low_freq_factor = 1.0, rope_high_freq_factor = 4.0;
    int64_t rope_original_ctx = 0;
    std::vector<float> rope_freq_divisors;  // [head_dim / 2] from a GGUF rope_freqs tensor, else empty
    // Precision of the rotary frequencies: kF32 (exact, the default) or the checkpoint's bf16/f16.
    // NOTE: transformers rounds its inv_freq buffer to the model dtype when a checkpoint is loaded in
    // bf16 (and keeps the rounding after .float()); kBF16 reproduces those outputs bit for bit.
    DType rope_freq_dtype = DType::kF32;
    int32_t bos_token_id = -1;
    std::vector<int32_t> eos_token_ids;
    std::string torch_dtype;

    int64_t group_size() const { return n_head / n_head_kv; }
    /// Bytes of K and V per token over all layers, for the given element size.
    int64_t kv_bytes_per_token(int64_t elem_bytes) const { return 2 * n_layer * n_head_kv * head_dim * elem_bytes; }
    /// Throws Error naming `source` and the field when a value is missing or absurd.
    void validate(const std::string& source) const;
    /// The per-pair inverse frequencies after scaling, [head_dim / 2].
    std::vector<float> rope_inv_freq() const;
    std::string rope_description() const;
};

/// Parses a Hugging Face config.json (text), naming `path` in errors.
ModelConfig parse_hf_config(const std::string& json_text, const std::string& path);

/// Architectures freekv runs, for error messages.
inline constexpr const char* kSupportedArchitectures = "llama, qwen2, mistral (SmolLM2 is llama)";

}  // namespace freekv
