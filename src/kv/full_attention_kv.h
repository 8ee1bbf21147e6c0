// full_attention_kv.h: the `full` KV mode: every token's K/V in a PagedKvCache, dense causal
// attention over all of it. The accuracy reference for every other mode.
// Invariant: after end_forward(), each span's sequence holds exactly pos0 + n_tok tokens.
#pragma once

#include "kv/paged_kv_cache.h"
#include "model/attention_kv.h"

namespace freekv {

enum class OpsImpl { kCpu, kRef };

class FullAttentionKv : public AttentionKv {
public:
    FullAttentionKv(PagedKvCache& cache, int64_t n_head, OpsImpl impl = OpsImpl::kCpu)
        : cache_(cache), n_head_(n_head), impl_(impl) {}
    void begin_forward(std::span<const SequenceSpan> spans) override;
    void attend(int64_t il, std::span<const SequenceSpan> spans, const float* q, const float* k, const float* v,
                float* out) override;
    void end_forward(std::span<const SequenceSpan>) override {}

private:
    PagedKvCache& cache_;
    int64_t n_head_;
    OpsImpl impl_;
};

}  // namespace freekv
