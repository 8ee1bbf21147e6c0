// attention_kv.h: the seam between the forward pass and KV management. The model computes q, k, v
// for a batch of token spans (one span per sequence) and hands them, layer by layer, to an
// AttentionKv, which stores k/v wherever its KV mode keeps them and returns the attention output.
// Invariants: begin_forward() is called once before layer 0 of every forward, attend() once per
// layer in increasing layer order, end_forward() after the last layer; spans list each sequence at
// most once, with positions pos0 .. pos0 + n_tok - 1 following the tokens it already holds.
#pragma once

#include <cstdint>
#include <span>

namespace freekv {

struct SequenceSpan {
    int32_t seq = 0;     // sequence id in the KV manager
    int64_t pos0 = 0;    // position of the span's first token
    int64_t n_tok = 0;   // tokens of this sequence in the batch
    int64_t offset = 0;  // index of the span's first token in the batch
};

class AttentionKv {
public:
    virtual ~AttentionKv() = default;
    /// Step prologue (page boundaries, reservations) for the tokens about to be processed.
    virtual void begin_forward(std::span<const SequenceSpan> spans) = 0;
    /// q: [n_tok, n_head, head_dim] post-RoPE; k, v: [n_tok, n_head_kv, head_dim] (k post-RoPE);
    /// out: [n_tok, n_head, head_dim]. n_tok is the sum of the spans' n_tok.
    virtual void attend(int64_t il, std::span<const SequenceSpan> spans, const float* q, const float* k,
                        const float* v, float* out) = 0;
    virtual void end_forward(std::span<const SequenceSpan> spans) = 0;
};

}  // namespace freekv
