// gguf.h: reader for GGUF v2/v3 files (llama.cpp's single-file format): metadata key/values,
// tensor infos and tensor data, plus the translation of a llama/qwen2 GGUF into freekv's
// ModelConfig, Hugging Face tensor names and a TokenizerSpec.
// Invariants: every read is bounds-checked against the file, so a truncated or lying file gives an
// Error naming the file and the field, never a crash; tensor views lie wholly inside the file.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "model/loader/tensor_source.h"
#include "model/model_config.h"
#include "tokenizer/bpe_tokenizer.h"

namespace freekv {

struct GgufValue {
    // integers of every width are widened; arrays hold their elements
    std::variant<int64_t, uint64_t, double, bool, std::string, std::vector<GgufValue>> value;

    bool is_string() const { return std::holds_alternative<std::string>(value); }
    bool is_array() const { return std::holds_alternative<std::vector<GgufValue>>(value); }
    /// Throws Error naming `key` when the value is not of the asked kind.
    int64_t as_int(const std::string& key) const;
    double as_float(const std::string& key) const;
    bool as_bool(const std::string& key) const;
    const std::string& as_string(const std::string& key) const;
    const std::vector<GgufValue>& as_array(const std::string& key) const;
};

struct GgufModel {
    std::map<std::string, GgufValue> metadata;
    std::unique_ptr<TensorSource> tensors;  // renamed to Hugging Face names
    ModelConfig config;
    TokenizerSpec tokenizer;
};

/// Parses the container: metadata, and tensors added to `tensors` under rename(gguf name) (skipped
/// when that is empty; nullptr keeps the GGUF names).
void read_gguf(const std::string& path, std::map<std::string, GgufValue>& metadata, TensorSource& tensors,
               std::string (*rename)(const std::string&) = nullptr);

/// Opens a GGUF model file of a supported architecture.
GgufModel open_gguf_model(const std::string& path);

/// The Hugging Face name of a GGUF tensor name, or "" if it has none.
std::string gguf_to_hf_name(const std::string& gguf_name);

/// GGUF value type codes (as stored).
enum class GgufType : uint32_t {
    kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
    kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};
/// ggml tensor type codes freekv reads.
enum class GgmlType : uint32_t { kF32 = 0, kF16 = 1, kQ8_0 = 8, kBF16 = 30 };

}  // namespace freekv
