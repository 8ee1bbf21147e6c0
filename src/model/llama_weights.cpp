// llama_weights.cpp: binds Hugging Face tensor names to the LlamaWeights fields.
#include "model/llama_weights.h"

#include <fmt/format.h>

namespace freekv {

LlamaWeights LlamaWeights::bind(const TensorSource& s, const ModelConfig& c) {
    const int64_t q_dim = c.n_head * c.head_dim, kv_dim = c.n_head_kv * c.head_dim;
    LlamaWeights w;
    w.token_embd = s.require("model.embed_tokens.weight", {c.n_vocab, c.n_embd});
    w.output_norm = s.require("model.norm.weight", {c.n_embd});
    if (c.tie_word_embeddings || !s.contains("lm_head.weight")) {
        w.output = w.token_embd;
    } else {
        w.output = s.require("lm_head.weight", {c.n_vocab, c.n_embd});
    }
    for (int64_t il = 0; il < c.n_layer; ++il) {
        const std::string p = fmt::format("model.layers.{}.", il);
        LlamaLayerWeights l;
        l.attn_norm = s.require(p + "input_layernorm.weight", {c.n_embd});
        l.wq = s.require(p + "self_attn.q_proj.weight", {q_dim, c.n_embd});
        l.wk = s.require(p + "self_attn.k_proj.weight", {kv_dim, c.n_embd});
        l.wv = s.require(p + "self_attn.v_proj.weight", {kv_dim, c.n_embd});
        l.wo = s.require(p + "self_attn.o_proj.weight", {c.n_embd, q_dim});
        if (c.qkv_bias) {
            l.bq = s.require(p + "self_attn.q_proj.bias", {q_dim});
            l.bk = s.require(p + "self_attn.k_proj.bias", {kv_dim});
            l.bv = s.require(p + "self_attn.v_proj.bias", {kv_dim});
        }
        l.ffn_norm = s.require(p + "post_attention_layernorm.weight", {c.n_embd});
        l.w_gate = s.require(p + "mlp.gate_proj.weight", {c.n_ff, c.n_embd});
        l.w_up = s.require(p + "mlp.up_proj.weight", {c.n_ff, c.n_embd});
        l.w_down = s.require(p + "mlp.down_proj.weight", {c.n_embd, c.n_ff});
        w.layers.push_back(std::move(l));
    }
    return w;
}

}  // namespace freekv
