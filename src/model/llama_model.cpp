// llama_model.cpp: the forward pass (see llama_model.h). Activations are fp32, [n_tok, width].
#include "model/llama_model.h"

#include "backend/ops.h"
#include "core/error.h"

namespace freekv {

namespace {

// Dispatches to the reference or the optimized CPU ops (tests run both).
struct Ops {
    OpsImpl impl;
    void matmul(const float* x, int64_t m, const WeightView& w, float* y, const WeightView* b = nullptr) const {
        impl == OpsImpl::kRef ? ref::matmul(x, m, w, y, b) : cpu::matmul(x, m, w, y, b);
    }
    void rms_norm(const float* x, int64_t m, int64_t n, const WeightView& w, float eps, float* y) const {
        impl == OpsImpl::kRef ? ref::rms_norm(x, m, n, w, eps, y) : cpu::rms_norm(x, m, n, w, eps, y);
    }
    void rope(float* x, int64_t n_tok, int64_t n_heads, int64_t hd, const int32_t* pos, std::span<const float> f,
              RopeStyle style) const {
        impl == OpsImpl::kRef ? ref::rope(x, n_tok, n_heads, hd, pos, f, style)
                              : cpu::rope(x, n_tok, n_heads, hd, pos, f, style);
    }
    void silu_mul(float* g, const float* u, int64_t n) const {
        impl == OpsImpl::kRef ? ref::silu_mul(g, u, n) : cpu::silu_mul(g, u, n);
    }
    void embedding(const WeightView& t, const int32_t* ids, int64_t n, float* out) const {
        impl == OpsImpl::kRef ? ref::embedding(t, ids, n, out) : cpu::embedding(t, ids, n, out);
    }
    void attention(const float* q, const AttentionArgs& a, const PagedKvCache& kv, float* out) const {
        impl == OpsImpl::kRef ? ref::attention(q, a, kv, out) : cpu::attention(q, a, kv, out);
    }
};

}  // namespace

LlamaModel::LlamaModel(ModelConfig config, LlamaWeights weights, OpsImpl impl)
    : config_(std::move(config)), weights_(std::move(weights)), impl_(impl), inv_freq_(config_.rope_inv_freq()) {}

void LlamaModel::forward(std::span<const int32_t> tokens, int32_t seq, PagedKvCache& kv, int64_t n_out,
                         std::vector<float>& logits) const {
    const ModelConfig& c = config_;
    const Ops ops{impl_};
    const auto n_tok = static_cast<int64_t>(tokens.size());
    FREEKV_CHECK(n_tok > 0 && n_out >= 0 && n_out <= n_tok, "forward of {} tokens with {} outputs", n_tok, n_out);
    const int64_t pos0 = kv.n_tokens(seq);
    FREEKV_CHECK(kv.can_reserve(seq, n_tok), "KV cache has no room for {} more tokens after {} (capacity {} tokens)",
                 n_tok, pos0, kv.capacity_tokens());
    kv.reserve(seq, n_tok);

    const int64_t q_dim = c.n_head * c.head_dim, kv_dim = c.n_head_kv * c.head_dim;
    std::vector<int32_t> positions(static_cast<size_t>(n_tok));
    for (int64_t t = 0; t < n_tok; ++t) positions[static_cast<size_t>(t)] = static_cast<int32_t>(pos0 + t);

    auto buf = [](int64_t n) { return std::vector<float>(static_cast<size_t>(n)); };
    std::vector<float> x = buf(n_tok * c.n_embd), h = buf(n_tok * c.n_embd);
    std::vector<float> q = buf(n_tok * q_dim), k = buf(n_tok * kv_dim), v = buf(n_tok * kv_dim);
    std::vector<float> attn = buf(n_tok * q_dim), proj = buf(n_tok * c.n_embd);
    std::vector<float> gate = buf(n_tok * c.n_ff), up = buf(n_tok * c.n_ff);

    ops.embedding(weights_.token_embd, tokens.data(), n_tok, x.data());
    for (int64_t il = 0; il < c.n_layer; ++il) {
        const LlamaLayerWeights& w = weights_.layers[static_cast<size_t>(il)];
        // ---- attention ----
        ops.rms_norm(x.data(), n_tok, c.n_embd, w.attn_norm, c.rms_norm_eps, h.data());
        ops.matmul(h.data(), n_tok, w.wq, q.data(), c.qkv_bias ? &w.bq : nullptr);
        ops.matmul(h.data(), n_tok, w.wk, k.data(), c.qkv_bias ? &w.bk : nullptr);
        ops.matmul(h.data(), n_tok, w.wv, v.data(), c.qkv_bias ? &w.bv : nullptr);
        ops.rope(q.data(), n_tok, c.n_head, c.head_dim, positions.data(), inv_freq_, c.rope_style);
        ops.rope(k.data(), n_tok, c.n_head_kv, c.head_dim, positions.data(), inv_freq_, c.rope_style);
        for (int64_t t = 0; t < n_tok; ++t)
            kv.write(il, seq, pos0 + t, k.data() + t * kv_dim, v.data() + t * kv_dim);
        AttentionArgs args{n_tok, c.n_head, c.n_head_kv, c.head_dim, positions.data(), seq, il};
        ops.attention(q.data(), args, kv, attn.data());
        ops.matmul(attn.data(), n_tok, w.wo, proj.data());
        for (int64_t i = 0; i < n_tok * c.n_embd; ++i) x[static_cast<size_t>(i)] += proj[static_cast<size_t>(i)];
        // ---- feed-forward ----
        ops.rms_norm(x.data(), n_tok, c.n_embd, w.ffn_norm, c.rms_norm_eps, h.data());
        ops.matmul(h.data(), n_tok, w.w_gate, gate.data());
        ops.matmul(h.data(), n_tok, w.w_up, up.data());
        ops.silu_mul(gate.data(), up.data(), n_tok * c.n_ff);
        ops.matmul(gate.data(), n_tok, w.w_down, proj.data());
        for (int64_t i = 0; i < n_tok * c.n_embd; ++i) x[static_cast<size_t>(i)] += proj[static_cast<size_t>(i)];
    }
    if (n_out == 0) return;
    const float* last = x.data() + (n_tok - n_out) * c.n_embd;
    ops.rms_norm(last, n_out, c.n_embd, weights_.output_norm, c.rms_norm_eps, h.data());
    logits.resize(static_cast<size_t>(n_out * c.n_vocab));
    ops.matmul(h.data(), n_out, weights_.output, logits.data());
}

}  // namespace freekv
