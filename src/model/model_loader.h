// model_loader.h: opens a model given to -m: a Hugging Face folder (config.json, safetensors,
// tokenizer.json, generation_config.json) or a .gguf file, and binds it for the CPU forward pass.
// Invariant: the TensorSource (file maps) outlives the model that points into it; both live here.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "model/llama_model.h"
#include "model/loader/tensor_source.h"
#include "tokenizer/bpe_tokenizer.h"

namespace freekv {

struct GenerationDefaults {
    std::optional<float> temperature, top_p;
    std::optional<int> top_k;
};

struct LoadedModel {
    std::string path;
    std::string format;  // "safetensors" or "gguf"
    ModelConfig config;
    std::unique_ptr<TensorSource> tensors;
    std::unique_ptr<Tokenizer> tokenizer;  // null when the folder has no tokenizer.json
    std::unique_ptr<LlamaModel> model;
    GenerationDefaults generation;
    std::string weights_dtype;  // of the projection weights

    /// Token ids that end generation (config eos ids and the tokenizer's eos).
    std::vector<int32_t> stop_ids() const;
    /// The load summary lines (conventions.md section 9).
    std::string summary() const;
};

struct LoadOptions {
    OpsImpl impl = OpsImpl::kCpu;
    /// Round the rotary frequencies to the checkpoint dtype, as transformers does for a checkpoint
    /// loaded in its own dtype (see ModelConfig::rope_freq_dtype). Default: exact fp32.
    bool rope_freq_checkpoint_dtype = false;
};

/// Loads and validates a model; throws Error naming the file and problem.
LoadedModel load_model(const std::string& path, const LoadOptions& options = {});

}  // namespace freekv
