// tp_plan.cpp: see tp_plan.h.
#include "parallel/tp_plan.h"

#include <string>

#include "core/error.h"

namespace freekv {

namespace {

// n split into `parts` ranges of whole kTpAlign units (the last rank also takes n % kTpAlign).
std::vector<TpRange> split_aligned(int64_t n, int parts) {
    const int64_t units = n / kTpAlign;
    std::vector<TpRange> out(static_cast<size_t>(parts));
    int64_t at = 0;
    for (int r = 0; r < parts; ++r) {
        const int64_t u = units / parts + (r < units % parts ? 1 : 0);
        out[static_cast<size_t>(r)] = {at, u * kTpAlign};
        at += u * kTpAlign;
    }
    out.back().count += n - at;
    return out;
}

}  // namespace

TpPlan make_tp_plan(const ModelConfig& c, int n) {
    if (n < 1) FREEKV_FAIL("--tensor-parallel {}: the model must be split over at least 1 rank", n);
    if (c.n_head_kv % n != 0) {
        std::string divisors;
        for (int64_t d = 1; d <= c.n_head_kv; ++d)
            if (c.n_head_kv % d == 0) divisors += (divisors.empty() ? "" : ", ") + std::to_string(d);
        FREEKV_FAIL("--tensor-parallel {}: the model's {} KV heads do not divide among {} ranks (each rank holds whole KV "
                    "heads); use one of {}", n, c.n_head_kv, n, divisors);
    }
    if (c.n_ff < n * kTpAlign || c.n_vocab < n * kTpAlign)
        FREEKV_FAIL("--tensor-parallel {}: the model is too small to split so (feed-forward width {}, vocabulary {}; each "
                    "rank needs at least {} of each); use fewer ranks", n, c.n_ff, c.n_vocab, kTpAlign);
    TpPlan plan;
    plan.n_ranks = n;
    const int64_t kv_per = c.n_head_kv / n, group = c.group_size();
    const auto ff = split_aligned(c.n_ff, n), vocab = split_aligned(c.n_vocab, n);
    for (int r = 0; r < n; ++r) {
        TpRank t;
        t.rank = r;
        t.kv_heads = {r * kv_per, kv_per};
        t.q_heads = {r * kv_per * group, kv_per * group};
        t.ff = ff[static_cast<size_t>(r)];
        t.vocab = vocab[static_cast<size_t>(r)];
        plan.ranks.push_back(t);
    }
    return plan;
}

ModelConfig tp_rank_config(const ModelConfig& config, const TpRank& rank) {
    ModelConfig c = config;
    c.n_head = rank.q_heads.count;
    c.n_head_kv = rank.kv_heads.count;
    c.n_ff = rank.ff.count;
    c.n_vocab = rank.vocab.count;
    return c;
}

int64_t tp_weight_bytes(const ModelConfig& c, const TpRank& r, int64_t elem_bytes) {
    const int64_t q = r.q_heads.count * c.head_dim, kv = r.kv_heads.count * c.head_dim, e = c.n_embd;
    int64_t layer = q * e + 2 * kv * e + e * q;  // wq, wk, wv, wo
    if (c.qkv_bias) layer += q + 2 * kv;
    layer += 3 * r.ff.count * e;  // gate, up, down
    layer += 2 * e;               // attention and feed-forward norms
    return elem_bytes * (c.n_layer * layer + 2 * r.vocab.count * e + e);  // + embedding, LM head, output norm
}

}  // namespace freekv
