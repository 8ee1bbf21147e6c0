// llama_weights.h: views of every tensor of a Llama-family model, looked up by Hugging Face name
// and checked against the config's shapes.
// Invariants: every view points into a TensorSource that outlives this struct; biases are present
// iff config.qkv_bias; output is the embedding table when the embeddings are tied.
#pragma once

#include <vector>

#include "model/loader/tensor_source.h"
#include "model/model_config.h"

namespace freekv {

struct LlamaLayerWeights {
    WeightView attn_norm;        // [n_embd]
    WeightView wq, wk, wv, wo;   // [n_head*head_dim, n_embd], [n_head_kv*head_dim, n_embd] x2, [n_embd, n_head*head_dim]
    WeightView bq, bk, bv;       // [n_head*head_dim], [n_head_kv*head_dim] x2; data == nullptr without bias
    WeightView ffn_norm;         // [n_embd]
    WeightView w_gate, w_up;     // [n_ff, n_embd]
    WeightView w_down;           // [n_embd, n_ff]
};

struct LlamaWeights {
    WeightView token_embd;       // [n_vocab, n_embd]
    std::vector<LlamaLayerWeights> layers;
    WeightView output_norm;      // [n_embd]
    WeightView output;           // [n_vocab, n_embd]

    /// Looks up and shape-checks every tensor; throws Error naming the first missing or
    /// mis-shaped tensor and its file.
    static LlamaWeights bind(const TensorSource& source, const ModelConfig& config);
};

}  // namespace freekv
