// synthetic_model.h: models with deterministic random bf16 weights at named real shapes, made at
// start-up (nothing is read from disk), for benchmarks: `tiny` (runs anywhere in seconds),
// `llama-3.1-8b`, `qwen2.5-7b`.
// Invariants: the same shape name and seed give bit-identical weights; random weights say nothing
// about accuracy, and query similarity in them is meaningless (benchmarks force correction rates).
#pragma once

#include <string>

#include "model/model_loader.h"

namespace freekv {

/// The config of a named shape; Error lists the names.
ModelConfig named_shape(const std::string& name);
/// A loaded model (no tokenizer) with random weights of that shape.
LoadedModel make_synthetic_model(const std::string& name, uint64_t seed = 1);
/// The same for any valid config (tests: a named shape with a real tokenizer's vocabulary).
LoadedModel make_synthetic_model(const ModelConfig& config, const std::string& name, uint64_t seed = 1);

inline constexpr const char* kNamedShapes = "tiny, llama-3.1-8b, qwen2.5-7b";

}  // namespace freekv
