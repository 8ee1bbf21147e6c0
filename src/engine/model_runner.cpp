// model_runner.cpp: the CPU and GPU runners (see model_runner.h).
#include "engine/model_runner.h"

#include <algorithm>

#include "core/error.h"
#include "engine/retrieval_kv.h"
#include "engine/sampler.h"
#include "kv/full_attention_kv.h"
#include "kv/paged_kv_cache.h"

namespace freekv {

namespace {

// Top-k of each row of [n_rows][n_vocab] logits, rows concatenated.
void top_of_rows(const std::vector<float>& logits, int64_t n_rows, int64_t n_vocab, int32_t k, std::vector<int32_t>& ids,
                 std::vector<float>& values) {
    ids.clear();
    values.clear();
    std::vector<int32_t> row_ids;
    std::vector<float> row_values;
    for (int64_t r = 0; r < n_rows; ++r) {
        Sampler::top_candidates(std::span(logits).subspan(static_cast<size_t>(r * n_vocab), static_cast<size_t>(n_vocab)), k,
                                row_ids, row_values);
        ids.insert(ids.end(), row_ids.begin(), row_ids.end());
        values.insert(values.end(), row_values.begin(), row_values.end());
    }
}

class CpuModelRunner final : public ModelRunner {
public:
    CpuModelRunner(const LoadedModel& m, const KvModeConfig& mode, int64_t max_batch, int64_t max_tokens)
        : model_(*m.model), n_vocab_(m.config.n_vocab), max_batch_(max_batch), max_tokens_(max_tokens),
          live_(static_cast<size_t>(max_batch), false) {
        FREEKV_CHECK(max_batch >= 1 && max_tokens >= 1, "runner: batch {} and context {} must be positive", max_batch,
                     max_tokens);
        const ModelConfig& c = m.config;
        if (mode.mode == KvMode::kFull) {
            const int64_t pages = (max_tokens + mode.page_size - 1) / mode.page_size;
            cache_ = std::make_unique<PagedKvCache>(c.n_layer, c.n_head_kv, c.head_dim, mode.page_size, max_batch * pages);
            full_ = std::make_unique<FullAttentionKv>(*cache_, c.n_head);
        } else {
            retrieval_ = make_retrieval_kv(c, mode, max_batch, max_tokens);
        }
    }
    int64_t max_batch() const override { return max_batch_; }
    int64_t max_tokens() const override { return max_tokens_; }
    bool whole_prompt_prefill() const override { return false; }
    bool on_gpu() const override { return false; }
    int64_t n_free() const override { return static_cast<int64_t>(std::count(live_.begin(), live_.end(), false)); }

    int32_t add_sequence() override {
        FREEKV_CHECK(n_free() > 0, "the CPU runner holds {} sequences already (its batch size)", max_batch_);
        const int32_t seq = cache_ ? cache_->add_sequence() : retrieval_->add_sequence(max_tokens_);
        FREEKV_CHECK(seq >= 0 && seq < max_batch_ && !live_[static_cast<size_t>(seq)], "runner: slot {} handed out twice", seq);
        live_[static_cast<size_t>(seq)] = true;
        return seq;
    }
    void remove_sequence(int32_t seq) override {
        FREEKV_CHECK(seq >= 0 && seq < max_batch_ && live_[static_cast<size_t>(seq)], "runner: sequence {} is not live", seq);
        cache_ ? cache_->remove_sequence(seq) : retrieval_->remove_sequence(seq);
        live_[static_cast<size_t>(seq)] = false;
    }

    void forward(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans, std::span<const int64_t> out_rows,
                 std::vector<float>& logits) override {
        for (const SequenceSpan& s : spans) {
            FREEKV_CHECK(s.seq >= 0 && s.seq < max_batch_ && live_[static_cast<size_t>(s.seq)], "sequence {} was not added", s.seq);
            if (s.pos0 + s.n_tok > max_tokens_)
                FREEKV_FAIL("sequence {} would hold {} tokens, more than its context of {} (-c/--ctx-size)", s.seq,
                            s.pos0 + s.n_tok, max_tokens_);
        }
        AttentionKv& kv = full_ ? static_cast<AttentionKv&>(*full_) : static_cast<AttentionKv&>(*retrieval_);
        model_.forward_batch(tokens, spans, kv, out_rows, logits);
    }
    void forward_top(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans, std::span<const int64_t> out_rows,
                     int32_t k, std::vector<int32_t>& ids, std::vector<float>& values) override {
        forward(tokens, spans, out_rows, logits_);
        top_of_rows(logits_, static_cast<int64_t>(out_rows.size()), n_vocab_, k, ids, values);
    }
    KvStats stats() override { return retrieval_ ? retrieval_->stats() : KvStats{}; }

private:
    const LlamaModel& model_;
    int64_t n_vocab_, max_batch_, max_tokens_;
    std::vector<bool> live_;
    std::unique_ptr<PagedKvCache> cache_;
    std::unique_ptr<FullAttentionKv> full_;
    std::unique_ptr<RetrievalKv> retrieval_;
    std::vector<float> logits_;
};

class GpuModelRunner final : public ModelRunner {
public:
    GpuModelRunner(const ModelConfig& c, std::shared_ptr<const gpu::GpuWeights> weights, const KvModeConfig& mode,
                   int64_t max_batch, int64_t max_tokens, const gpu::GpuTuning& tuning)
        : engine_(std::move(weights), mode, max_batch, max_tokens, tuning), n_vocab_(c.n_vocab), max_batch_(max_batch),
          max_tokens_(max_tokens), full_mode_(mode.mode == KvMode::kFull), live_(static_cast<size_t>(max_batch), false) {}
    int64_t max_batch() const override { return max_batch_; }
    int64_t max_tokens() const override { return max_tokens_; }
    bool whole_prompt_prefill() const override { return true; }
    bool on_gpu() const override { return true; }
    int64_t n_free() const override { return static_cast<int64_t>(std::count(live_.begin(), live_.end(), false)); }
    int32_t add_sequence() override {
        const int32_t seq = engine_.add_sequence();
        live_[static_cast<size_t>(seq)] = true;
        return seq;
    }
    void remove_sequence(int32_t seq) override {
        engine_.remove_sequence(seq);
        live_[static_cast<size_t>(seq)] = false;
    }
    void forward(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans, std::span<const int64_t> out_rows,
                 std::vector<float>& logits) override {
        engine_.forward(tokens, spans, out_rows, logits);
    }
    void forward_top(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans, std::span<const int64_t> out_rows,
                     int32_t k, std::vector<int32_t>& ids, std::vector<float>& values) override {
        if (k <= gpu::kMaxDeviceTopK) {
            engine_.forward_top(tokens, spans, out_rows, k, ids, values);
            return;
        }
        engine_.forward(tokens, spans, out_rows, logits_);
        top_of_rows(logits_, static_cast<int64_t>(out_rows.size()), n_vocab_, k, ids, values);
    }
    KvStats stats() override { return full_mode_ ? KvStats{} : engine_.stats(); }

private:
    gpu::GpuEngine engine_;
    int64_t n_vocab_, max_batch_, max_tokens_;
    bool full_mode_;
    std::vector<bool> live_;
    std::vector<float> logits_;
};

}  // namespace

std::unique_ptr<ModelRunner> make_model_runner(const LoadedModel& model, const KvModeConfig& mode, int64_t max_batch,
                                               int64_t max_tokens, std::shared_ptr<const gpu::GpuWeights> gpu,
                                               const gpu::GpuTuning& tuning) {
    if (gpu) return std::make_unique<GpuModelRunner>(model.config, std::move(gpu), mode, max_batch, max_tokens, tuning);
    return std::make_unique<CpuModelRunner>(model, mode, max_batch, max_tokens);
}

}  // namespace freekv
