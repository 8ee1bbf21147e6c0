// full_attention_kv.cpp: append + dense causal attention per span (see full_attention_kv.h).
#include "kv/full_attention_kv.h"

#include <vector>

#include "backend/ops.h"
#include "core/error.h"

namespace freekv {

void FullAttentionKv::begin_forward(std::span<const SequenceSpan> spans) {
    for (const auto& s : spans) {
        FREEKV_CHECK(s.pos0 == cache_.n_tokens(s.seq), "sequence {} holds {} tokens but the span starts at {}", s.seq,
                     cache_.n_tokens(s.seq), s.pos0);
        FREEKV_CHECK(cache_.can_reserve(s.seq, s.n_tok),
                     "KV cache has no room for {} more tokens of sequence {} after {} (capacity {} tokens)", s.n_tok,
                     s.seq, s.pos0, cache_.capacity_tokens());
        cache_.reserve(s.seq, s.n_tok);
    }
}

void FullAttentionKv::attend(int64_t il, std::span<const SequenceSpan> spans, const float* q, const float* k,
                             const float* v, float* out) {
    const int64_t n_kv = cache_.n_head_kv(), hd = cache_.head_dim();
    for (const auto& s : spans) {
        for (int64_t t = 0; t < s.n_tok; ++t)
            cache_.write(il, s.seq, s.pos0 + t, k + (s.offset + t) * n_kv * hd, v + (s.offset + t) * n_kv * hd);
        std::vector<int32_t> positions(static_cast<size_t>(s.n_tok));
        for (int64_t t = 0; t < s.n_tok; ++t) positions[static_cast<size_t>(t)] = static_cast<int32_t>(s.pos0 + t);
        const AttentionArgs args{s.n_tok, n_head_, n_kv, hd, positions.data()};
        const PagedKvView view = cache_.view(il, s.seq);
        const float* qs = q + s.offset * n_head_ * hd;
        float* os = out + s.offset * n_head_ * hd;
        if (impl_ == OpsImpl::kRef) ref::attention(qs, args, view, os);
        else cpu::attention(qs, args, view, os);
    }
}

}  // namespace freekv
