// synthetic_model.h: models with deterministic random bf16 weights at named real shapes, made at
// start-up (nothing is read from disk), for benchmarks: `tiny` (runs anywhere in seconds),
// `llama-3.1-8b`, `llama-3.1-70b` (141 GB of weights: for several GPUs), `qwen2.5-7b`.
// Invariants: the same shape name and seed give bit-identical weights; random weights say nothing
// about accuracy, and query similarity in them is meaningless (benchmarks force correction rates).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/model_loader.h"

namespace freekv {

/// The config of a named shape; Error lists the names.
ModelConfig named_shape(const std::string& name);
/// A loaded model (no tokenizer) with random weights of that shape.
LoadedModel make_synthetic_model(const std::string& name, uint64_t seed = 1);
/// The same for any valid config (tests: a named shape with a real tokenizer's vocabulary). Throws
/// Error when its weights would not fit the host's available memory.
LoadedModel make_synthetic_model(const ModelConfig& config, const std::string& name, uint64_t seed = 1);

/// One tensor of a synthetic model: its Hugging Face name and shape, and how its bf16 values are
/// drawn (element i, counted row-major over the whole tensor, from splitmix64 of (stream, i),
/// uniform in centre +- scale): any block of it can be made alone, bit-identical to the same block
/// of the whole tensor (a tensor-parallel rank makes only its shard).
struct SyntheticTensor {
    std::string name;
    std::vector<int64_t> shape;
    uint64_t stream = 0;
    float centre = 0, scale = 0;
    int64_t rows() const { return shape.size() == 1 ? 1 : shape[0]; }
};
/// Every tensor of the synthetic model of `config` and `seed`, in the order make_synthetic_model adds them.
std::vector<SyntheticTensor> synthetic_tensors(const ModelConfig& config, uint64_t seed);
/// Rows [r0, r0 + rc) x columns [c0, c0 + cc) of t as bf16 bytes (a vector is one row).
std::vector<uint8_t> synthetic_block(const SyntheticTensor& t, int64_t r0, int64_t rc, int64_t c0, int64_t cc);

inline constexpr const char* kNamedShapes = "tiny, llama-3.1-8b, llama-3.1-70b, qwen2.5-7b";

}  // namespace freekv
