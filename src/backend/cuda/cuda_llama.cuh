// cuda_llama.cuh: a first Llama-family forward pass on the GPU for the `full` KV mode: bf16
// weights uploaded once, fp32 activations (bf16 into the cuBLAS GEMMs), a bf16 paged KV cache of
// one sequence. Correct first: prefill attention runs the decode kernel once per prompt token (one
// causal page list each); the flash-style prefill kernel and the retrieval pipeline come later.
// Host API only (no CUDA types). Invariant: forward() appends exactly the given tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "model/llama_weights.h"
#include "model/model_config.h"

namespace freekv::cuda {

class CudaLlama {
public:
    /// Uploads the weights (converted to bf16 when stored otherwise) and reserves a KV cache of
    /// max_tokens for one sequence. Throws Error when the device has too little memory.
    CudaLlama(const ModelConfig& config, const LlamaWeights& weights, int64_t max_tokens);
    ~CudaLlama();
    CudaLlama(const CudaLlama&) = delete;
    CudaLlama& operator=(const CudaLlama&) = delete;

    /// Runs the tokens at positions n_tokens() ..; logits of the last token, [n_vocab], on the host.
    void forward(std::span<const int32_t> tokens, std::vector<float>& logits);
    int64_t n_tokens() const { return n_tokens_; }

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    int64_t n_tokens_ = 0;
};

}  // namespace freekv::cuda
