// llama_model.cpp: the forward pass (see llama_model.h). Activations are fp32, [n_tok, width].
#include "model/llama_model.h"

#include "backend/ops.h"
#include "core/error.h"

#include <algorithm>

namespace freekv {

namespace {

// Dispatches to the reference or the optimized CPU ops (tests run both).
struct Ops {
    OpsImpl impl;
    /// groups: consecutive row counts summing to the rows of x; each is multiplied on its own on
    /// the CPU backend (the reference computes every row alone anyway).
    void matmul(const float* x, std::span<const int64_t> groups, const WeightView& w, float* y,
                const WeightView* b = nullptr) const {
        int64_t m = 0;
        for (int64_t g : groups) m += g;
        impl == OpsImpl::kRef ? ref::matmul(x, m, w, y, b) : cpu::matmul_grouped(x, groups, w, y, b);
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
};

}  // namespace

LlamaModel::LlamaModel(ModelConfig config, LlamaWeights weights, OpsImpl impl)
    : config_(std::move(config)), weights_(std::move(weights)), impl_(impl), inv_freq_(config_.rope_inv_freq()) {}

void LlamaModel::set_tensor_parallel(const TensorParallelRank& rank) {
    FREEKV_CHECK(rank.peers != nullptr && rank.vocab_begin >= 0 && rank.vocab_begin + config_.n_vocab <= rank.n_vocab,
                 "a tensor-parallel rank's vocabulary rows [{}, {}) must lie in the vocabulary of {}", rank.vocab_begin,
                 rank.vocab_begin + config_.n_vocab, rank.n_vocab);
    tp_ = rank;
}

void LlamaModel::forward(std::span<const int32_t> tokens, int32_t seq, PagedKvCache& kv, int64_t n_out,
                         std::vector<float>& logits) const {
    const auto n_tok = static_cast<int64_t>(tokens.size());
    FREEKV_CHECK(n_tok > 0 && n_out >= 0 && n_out <= n_tok, "forward of {} tokens with {} outputs", n_tok, n_out);
    FullAttentionKv full(kv, config_.n_head, impl_);
    const SequenceSpan span{seq, kv.n_tokens(seq), n_tok, 0};
    std::vector<int64_t> rows;
    for (int64_t r = n_tok - n_out; r < n_tok; ++r) rows.push_back(r);
    forward_batch(tokens, std::span(&span, 1), full, rows, logits);
}

void LlamaModel::forward_batch(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans, AttentionKv& kv,
                               std::span<const int64_t> out_rows, std::vector<float>& logits) const {
    const ModelConfig& c = config_;
    const Ops ops{impl_};
    const auto n_tok = static_cast<int64_t>(tokens.size());
    int64_t covered = 0;
    for (const auto& s : spans) {
        FREEKV_CHECK(s.offset == covered && s.n_tok > 0, "spans must tile the batch in order");
        covered += s.n_tok;
    }
    FREEKV_CHECK(covered == n_tok && n_tok > 0, "spans cover {} of {} tokens", covered, n_tok);

    const int64_t q_dim = c.n_head * c.head_dim, kv_dim = c.n_head_kv * c.head_dim;
    std::vector<int32_t> positions(static_cast<size_t>(n_tok));
    for (const auto& s : spans)
        for (int64_t t = 0; t < s.n_tok; ++t) positions[static_cast<size_t>(s.offset + t)] = static_cast<int32_t>(s.pos0 + t);

    auto buf = [](int64_t n) { return std::vector<float>(static_cast<size_t>(n)); };
    std::vector<float> x = buf(n_tok * c.n_embd), h = buf(n_tok * c.n_embd);
    std::vector<float> q = buf(n_tok * q_dim), k = buf(n_tok * kv_dim), v = buf(n_tok * kv_dim);
    std::vector<float> attn = buf(n_tok * q_dim), proj = buf(n_tok * c.n_embd);
    std::vector<float> gate = buf(n_tok * c.n_ff), up = buf(n_tok * c.n_ff);

    // Each span's rows are multiplied apart from the other spans', so a sequence's numbers do not
    // depend on what it is batched with.
    std::vector<int64_t> groups;
    for (const auto& s : spans) groups.push_back(s.n_tok);

    // On a rank: the products of a row-parallel matrix (o, down) summed over the ranks before they
    // join the residual, which stays the same on every rank.
    auto sum_over_ranks = [&](std::vector<float>& part) {
        if (tp_.peers != nullptr) tp_.peers->all_reduce_sum(part.data(), static_cast<int64_t>(part.size()));
    };

    kv.begin_forward(spans);
    if (tp_.peers == nullptr) {
        ops.embedding(weights_.token_embd, tokens.data(), n_tok, x.data());
    } else {  // this rank's vocabulary rows; the others' tokens are zero here, their rank's rows there
        std::vector<int32_t> local(tokens.size());
        for (size_t t = 0; t < tokens.size(); ++t) {
            const int64_t id = tokens[t] - tp_.vocab_begin;
            local[t] = id >= 0 && id < c.n_vocab ? static_cast<int32_t>(id) : 0;
        }
        ops.embedding(weights_.token_embd, local.data(), n_tok, x.data());
        for (size_t t = 0; t < tokens.size(); ++t)
            if (tokens[t] < tp_.vocab_begin || tokens[t] >= tp_.vocab_begin + c.n_vocab)
                std::fill_n(x.begin() + static_cast<std::ptrdiff_t>(t) * c.n_embd, c.n_embd, 0.0f);
        sum_over_ranks(x);
    }
    for (int64_t il = 0; il < c.n_layer; ++il) {
        const LlamaLayerWeights& w = weights_.layers[static_cast<size_t>(il)];
        // ---- attention ----
        ops.rms_norm(x.data(), n_tok, c.n_embd, w.attn_norm, c.rms_norm_eps, h.data());
        ops.matmul(h.data(), groups, w.wq, q.data(), c.qkv_bias ? &w.bq : nullptr);
        ops.matmul(h.data(), groups, w.wk, k.data(), c.qkv_bias ? &w.bk : nullptr);
        ops.matmul(h.data(), groups, w.wv, v.data(), c.qkv_bias ? &w.bv : nullptr);
        ops.rope(q.data(), n_tok, c.n_head, c.head_dim, positions.data(), inv_freq_, c.rope_style);
        ops.rope(k.data(), n_tok, c.n_head_kv, c.head_dim, positions.data(), inv_freq_, c.rope_style);
        kv.attend(il, spans, q.data(), k.data(), v.data(), attn.data());
        ops.matmul(attn.data(), groups, w.wo, proj.data());
        sum_over_ranks(proj);
        for (int64_t i = 0; i < n_tok * c.n_embd; ++i) x[static_cast<size_t>(i)] += proj[static_cast<size_t>(i)];
        // ---- feed-forward ----
        ops.rms_norm(x.data(), n_tok, c.n_embd, w.ffn_norm, c.rms_norm_eps, h.data());
        ops.matmul(h.data(), groups, w.w_gate, gate.data());
        ops.matmul(h.data(), groups, w.w_up, up.data());
        ops.silu_mul(gate.data(), up.data(), n_tok * c.n_ff);
        ops.matmul(gate.data(), groups, w.w_down, proj.data());
        sum_over_ranks(proj);
        for (int64_t i = 0; i < n_tok * c.n_embd; ++i) x[static_cast<size_t>(i)] += proj[static_cast<size_t>(i)];
    }
    kv.end_forward(spans);
    const auto n_out = static_cast<int64_t>(out_rows.size());
    if (n_out == 0) return;
    std::vector<float> selected = buf(n_out * c.n_embd);
    // Output groups: runs of consecutive out_rows that fall in the same span.
    std::vector<int64_t> out_groups;
    size_t prev_span = spans.size();
    for (int64_t r = 0; r < n_out; ++r) {
        const int64_t row = out_rows[static_cast<size_t>(r)];
        FREEKV_CHECK(row >= 0 && row < n_tok, "output row out of range");
        std::copy_n(x.data() + row * c.n_embd, c.n_embd, selected.data() + r * c.n_embd);
        size_t is = 0;
        while (spans[is].offset + spans[is].n_tok <= row) ++is;
        if (is == prev_span) ++out_groups.back();
        else out_groups.push_back(1);
        prev_span = is;
    }
    ops.rms_norm(selected.data(), n_out, c.n_embd, weights_.output_norm, c.rms_norm_eps, selected.data());
    if (tp_.peers == nullptr) {
        logits.resize(static_cast<size_t>(n_out * c.n_vocab));
        ops.matmul(selected.data(), out_groups, weights_.output, logits.data());
        return;
    }
    std::vector<float> columns = buf(n_out * c.n_vocab);  // this rank's vocabulary rows' logits
    ops.matmul(selected.data(), out_groups, weights_.output, columns.data());
    logits.resize(static_cast<size_t>(n_out * tp_.n_vocab));
    tp_.peers->gather_columns(columns.data(), n_out, tp_.vocab_begin, c.n_vocab, logits.data(), tp_.n_vocab);
}

}  // namespace freekv
