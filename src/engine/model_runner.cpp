// model_runner.cpp: the CPU and GPU runners (see model_runner.h).
#include "engine/model_runner.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"
#include "engine/retrieval_kv.h"
#include "engine/sampler.h"
#include "engine/gpu_tensor_parallel_runner.h"
#include "engine/tensor_parallel_runner.h"
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

// Some spans of a forward, their tokens packed and their output rows renumbered: into[j] is the
// index in the forward's out_rows of this part's row j.
struct SpanPart {
    std::vector<int32_t> tokens;
    std::vector<SequenceSpan> spans;
    std::vector<int64_t> rows;
    std::vector<size_t> into;
};

// Splits a forward into n_parts parts, span i going to part_of[i] (order kept within a part).
std::vector<SpanPart> split_spans(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans,
                                  std::span<const int64_t> out_rows, const std::vector<size_t>& part_of, size_t n_parts) {
    std::vector<SpanPart> parts(n_parts);
    std::vector<int64_t> local(spans.size());
    for (size_t i = 0; i < spans.size(); ++i) {
        SpanPart& p = parts[part_of[i]];
        SequenceSpan sp = spans[i];
        local[i] = static_cast<int64_t>(p.tokens.size());
        p.tokens.insert(p.tokens.end(), tokens.begin() + sp.offset, tokens.begin() + sp.offset + sp.n_tok);
        sp.offset = local[i];
        p.spans.push_back(sp);
    }
    for (size_t j = 0; j < out_rows.size(); ++j) {
        const int64_t r = out_rows[j];
        size_t i = 0;
        while (i < spans.size() && !(r >= spans[i].offset && r < spans[i].offset + spans[i].n_tok)) ++i;
        FREEKV_CHECK(i < spans.size(), "output row {} is in no span", r);
        SpanPart& p = parts[part_of[i]];
        p.rows.push_back(local[i] + (r - spans[i].offset));
        p.into.push_back(j);
    }
    return parts;
}

template <class T>
void scatter_rows(const std::vector<T>& part, size_t width, const std::vector<size_t>& into, std::vector<T>& out) {
    for (size_t j = 0; j < into.size(); ++j)
        std::copy_n(part.begin() + static_cast<std::ptrdiff_t>(j * width), width,
                    out.begin() + static_cast<std::ptrdiff_t>(into[j] * width));
}

// Admission order per slot, and which planted faults (FaultInjection) are due.
class PlantedFaults {
public:
    PlantedFaults(const FaultInjection& faults, int64_t max_batch)
        : faults_(faults), admission_of_(static_cast<size_t>(max_batch), -1) {}
    /// Throws when this admission is listed in fail_admissions; counts it either way.
    void admit(const char* store) {
        const int64_t a = n_admitted_++;
        if (FaultInjection::listed(faults_.fail_admissions, a))
            FREEKV_FAIL("could not reserve the {} for a new sequence: out of memory (an injected fault)", store);
        pending_ = a;
    }
    void admitted(int32_t seq) { admission_of_.at(static_cast<size_t>(seq)) = pending_; }
    void removed(int32_t seq) { admission_of_.at(static_cast<size_t>(seq)) = -1; }
    /// Whether this span is the first chunk of a sequence whose first chunk must fail.
    bool first_chunk_fails(const SequenceSpan& sp) const {
        return sp.pos0 == 0 && FaultInjection::listed(faults_.fail_first_chunks, admission_of_.at(static_cast<size_t>(sp.seq)));
    }

private:
    FaultInjection faults_;
    std::vector<int64_t> admission_of_;
    int64_t n_admitted_ = 0, pending_ = -1;
};

class CpuModelRunner final : public ModelRunner {
public:
    CpuModelRunner(const LoadedModel& m, const KvModeConfig& mode, int64_t max_batch, int64_t max_tokens,
                   const FaultInjection& faults)
        : model_(*m.model), n_vocab_(m.model->n_logits()), max_batch_(max_batch), max_tokens_(max_tokens),
          live_(static_cast<size_t>(max_batch), false), faults_(faults, max_batch) {
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
    void begin_prompt(int32_t, int64_t) override {}  // the KV manager grows with each chunk
    bool on_gpu() const override { return false; }
    int64_t n_free() const override { return static_cast<int64_t>(std::count(live_.begin(), live_.end(), false)); }

    int32_t add_sequence() override {
        FREEKV_CHECK(n_free() > 0, "the CPU runner holds {} sequences already (its batch size)", max_batch_);
        faults_.admit(cache_ ? "KV cache pages" : "CPU KV store pages");
        const int32_t seq = cache_ ? cache_->add_sequence() : retrieval_->add_sequence(max_tokens_);
        FREEKV_CHECK(seq >= 0 && seq < max_batch_ && !live_[static_cast<size_t>(seq)], "runner: slot {} handed out twice", seq);
        live_[static_cast<size_t>(seq)] = true;
        faults_.admitted(seq);
        return seq;
    }
    void remove_sequence(int32_t seq) override {
        FREEKV_CHECK(seq >= 0 && seq < max_batch_ && live_[static_cast<size_t>(seq)], "runner: sequence {} is not live", seq);
        cache_ ? cache_->remove_sequence(seq) : retrieval_->remove_sequence(seq);
        live_[static_cast<size_t>(seq)] = false;
        faults_.removed(seq);
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
    std::vector<FailedSpan> forward_top(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans,
                                        std::span<const int64_t> out_rows, int32_t k, std::vector<int32_t>& ids,
                                        std::vector<float>& values) override {
        // A planted first-chunk fault drops its span before the forward (nothing of it runs, as
        // when its allocation fails); the others run without it.
        std::vector<FailedSpan> failed;
        std::vector<size_t> part_of(spans.size(), 0);
        for (size_t i = 0; i < spans.size(); ++i)
            if (faults_.first_chunk_fails(spans[i])) {
                part_of[i] = 1;
                failed.push_back({spans[i].seq, fmt::format("could not allocate the activations of sequence {}'s first "
                                                            "prompt chunk: out of memory (an injected fault)", spans[i].seq)});
            }
        if (failed.empty()) {
            forward(tokens, spans, out_rows, logits_);
            top_of_rows(logits_, static_cast<int64_t>(out_rows.size()), n_vocab_, k, ids, values);
            return {};
        }
        const SpanPart run = std::move(split_spans(tokens, spans, out_rows, part_of, 2)[0]);
        ids.assign(out_rows.size() * static_cast<size_t>(k), 0);
        values.assign(ids.size(), 0.0f);
        if (run.spans.empty()) return failed;
        forward(run.tokens, run.spans, run.rows, logits_);
        top_of_rows(logits_, static_cast<int64_t>(run.rows.size()), n_vocab_, k, part_ids_, part_values_);
        scatter_rows(part_ids_, static_cast<size_t>(k), run.into, ids);
        scatter_rows(part_values_, static_cast<size_t>(k), run.into, values);
        return failed;
    }
    KvStats stats() override { return retrieval_ ? retrieval_->stats() : KvStats{}; }
    std::vector<RowPlan> last_decode_plan() const override {
        return retrieval_ ? retrieval_->last_decode_plan() : std::vector<RowPlan>{};
    }

private:
    const LlamaModel& model_;
    int64_t n_vocab_, max_batch_, max_tokens_;
    std::vector<bool> live_;
    std::unique_ptr<PagedKvCache> cache_;
    std::unique_ptr<FullAttentionKv> full_;
    std::unique_ptr<RetrievalKv> retrieval_;
    PlantedFaults faults_;
    std::vector<float> logits_, part_values_;
    std::vector<int32_t> part_ids_;
};

class GpuModelRunner final : public ModelRunner {
public:
    // rank.peers set: one rank of a tensor-parallel group (its vocabulary slice's logits; a chunk that
    // fails throws, since its peers' collectives wait for it).
    GpuModelRunner(const ModelConfig& c, std::shared_ptr<const gpu::GpuWeights> weights, const KvModeConfig& mode,
                   int64_t max_batch, int64_t max_tokens, const gpu::GpuTuning& tuning, const FaultInjection& faults,
                   const gpu::GpuRank& rank = {})
        : engine_(std::move(weights), mode, max_batch, max_tokens, tuning), n_vocab_(c.n_vocab), max_batch_(max_batch),
          max_tokens_(max_tokens), full_mode_(mode.mode == KvMode::kFull), isolate_chunks_(rank.peers == nullptr),
          live_(static_cast<size_t>(max_batch), false), prompt_(static_cast<size_t>(max_batch), 0), faults_(faults, max_batch) {
        if (rank.peers != nullptr) engine_.set_tensor_parallel(rank);
    }
    int64_t max_batch() const override { return max_batch_; }
    int64_t max_tokens() const override { return max_tokens_; }
    bool whole_prompt_prefill() const override { return !engine_.chunked_prefill(); }
    bool on_gpu() const override { return true; }
    int64_t n_free() const override { return static_cast<int64_t>(std::count(live_.begin(), live_.end(), false)); }
    int32_t add_sequence() override {
        faults_.admit("GPU KV slot");
        const int32_t seq = engine_.add_sequence();
        live_[static_cast<size_t>(seq)] = true;
        prompt_[static_cast<size_t>(seq)] = 0;
        faults_.admitted(seq);
        return seq;
    }
    void remove_sequence(int32_t seq) override {
        engine_.remove_sequence(seq);
        live_[static_cast<size_t>(seq)] = false;
        prompt_[static_cast<size_t>(seq)] = 0;
        faults_.removed(seq);
    }
    void begin_prompt(int32_t seq, int64_t n_prompt) override { prompt_.at(static_cast<size_t>(seq)) = n_prompt; }
    void forward(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans, std::span<const int64_t> out_rows,
                 std::vector<float>& logits) override {
        logits.resize(out_rows.size() * static_cast<size_t>(n_vocab_));
        const auto failed = run_parts(tokens, spans, out_rows, [&](auto t, auto s, auto r, const std::vector<size_t>* into) {
            if (into == nullptr) return engine_.forward(t, s, r, logits);
            engine_.forward(t, s, r, logits_);
            scatter_rows(logits_, static_cast<size_t>(n_vocab_), *into, logits);
        });
        if (!failed.empty()) FREEKV_FAIL("{}", failed.front().error);
    }
    std::vector<FailedSpan> forward_top(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans,
                                        std::span<const int64_t> out_rows, int32_t k, std::vector<int32_t>& ids,
                                        std::vector<float>& values) override {
        if (k > gpu::kMaxDeviceTopK) {
            logits_all_.resize(out_rows.size() * static_cast<size_t>(n_vocab_));
            const auto failed = run_parts(tokens, spans, out_rows, [&](auto t, auto s, auto r, const std::vector<size_t>* into) {
                if (into == nullptr) return engine_.forward(t, s, r, logits_all_);
                engine_.forward(t, s, r, logits_);
                scatter_rows(logits_, static_cast<size_t>(n_vocab_), *into, logits_all_);
            });
            top_of_rows(logits_all_, static_cast<int64_t>(out_rows.size()), n_vocab_, k, ids, values);
            return failed;
        }
        ids.resize(out_rows.size() * static_cast<size_t>(k));
        values.resize(ids.size());
        return run_parts(tokens, spans, out_rows, [&](auto t, auto s, auto r, const std::vector<size_t>* into) {
            if (into == nullptr) return engine_.forward_top(t, s, r, k, ids, values);
            engine_.forward_top(t, s, r, k, part_ids_, part_values_);
            scatter_rows(part_ids_, static_cast<size_t>(k), *into, ids);
            scatter_rows(part_values_, static_cast<size_t>(k), *into, values);
        });
    }
    KvStats stats() override { return full_mode_ ? KvStats{} : engine_.stats(); }
    std::vector<RowPlan> last_decode_plan() const override { return engine_.last_decode_plan(); }
    void fill_synthetic(int32_t seq, int64_t n_tokens, uint64_t seed) override { engine_.fill_synthetic(seq, n_tokens, seed); }
    void set_timing(bool on) override { engine_.set_timing(on); }
    int64_t device_bytes() const override { return engine_.device_bytes(); }
    int64_t host_bytes() const override { return engine_.host_bytes(); }

private:

    // The GpuEngine runs a forward of decode tokens or of one prefill span: a step that mixes them
    // becomes one forward of its decode spans and one per prompt chunk (sequences are independent,
    // so the order does not matter), each output row copied to its place. A first chunk that is not
    // the whole prompt stages the prompt (GpuEngine::begin_prompt). run(tokens, spans, rows, into):
    // into == nullptr for a forward of the whole step, else the out_rows index of each row. A chunk
    // whose forward throws in a split step is returned as failed (nothing of it outlives its
    // sequence's removal); a failure of the decode part, or of a step that is one part, throws.
    template <class Run>
    std::vector<FailedSpan> run_parts(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans,
                                      std::span<const int64_t> out_rows, Run&& run) {
        std::vector<size_t> part_of(spans.size());
        size_t n_parts = 1;  // part 0: the decode spans
        bool any_decode = false;
        for (size_t i = 0; i < spans.size(); ++i) {
            const SequenceSpan& sp = spans[i];
            const int64_t n_prompt = prompt_.at(static_cast<size_t>(sp.seq));
            const bool prefill = sp.pos0 == 0 || sp.pos0 < n_prompt;
            if (prefill && sp.pos0 == 0 && sp.n_tok < n_prompt) engine_.begin_prompt(sp.seq, n_prompt);
            part_of[i] = prefill ? n_parts++ : 0;
            any_decode = any_decode || !prefill;
        }
        const auto plant = [&](const SequenceSpan& sp) {
            if (faults_.first_chunk_fails(sp)) engine_.fail_next_prefill_allocation();
        };
        if (n_parts - 1 + (any_decode ? 1 : 0) <= 1) {
            if (n_parts == 2) plant(spans[0]);
            run(tokens, spans, out_rows, nullptr);
            return {};
        }
        std::vector<FailedSpan> failed;
        const std::vector<SpanPart> parts = split_spans(tokens, spans, out_rows, part_of, n_parts);
        for (size_t ip = 0; ip < parts.size(); ++ip) {
            const SpanPart& p = parts[ip];
            if (p.spans.empty()) continue;
            const auto run_part = [&] {
                run(std::span<const int32_t>(p.tokens), std::span<const SequenceSpan>(p.spans), std::span<const int64_t>(p.rows),
                    &p.into);
            };
            if (ip == 0 || !isolate_chunks_) {
                run_part();
                continue;
            }
            try {
                plant(p.spans[0]);
                run_part();
            } catch (const std::exception& e) {
                failed.push_back({p.spans[0].seq, e.what()});
            }
        }
        return failed;
    }

    gpu::GpuEngine engine_;
    int64_t n_vocab_, max_batch_, max_tokens_;
    bool full_mode_, isolate_chunks_;
    std::vector<bool> live_;
    std::vector<int64_t> prompt_;  // begin_prompt's length per slot (0: not announced)
    PlantedFaults faults_;
    std::vector<float> logits_, logits_all_, part_values_;
    std::vector<int32_t> part_ids_;
};

}  // namespace

void ModelRunner::fill_synthetic(int32_t, int64_t, uint64_t) { FREEKV_FAIL("a synthetic K/V fill needs a GPU runner (--device cuda)"); }
void ModelRunner::set_timing(bool) { FREEKV_FAIL("per-phase event timing needs a GPU runner (--device cuda)"); }
int64_t ModelRunner::device_bytes() const { return 0; }
int64_t ModelRunner::host_bytes() const { return 0; }

std::unique_ptr<ModelRunner> make_gpu_rank_runner(const ModelConfig& shard, std::shared_ptr<const gpu::GpuWeights> weights,
                                                  const KvModeConfig& mode, int64_t max_batch, int64_t max_tokens,
                                                  const gpu::GpuTuning& tuning, const gpu::GpuRank& rank) {
    return std::make_unique<GpuModelRunner>(shard, std::move(weights), mode, max_batch, max_tokens, tuning, FaultInjection{}, rank);
}

std::unique_ptr<ModelRunner> make_model_runner(const LoadedModel& model, const KvModeConfig& mode, int64_t max_batch,
                                               int64_t max_tokens, std::shared_ptr<const gpu::GpuWeights> gpu,
                                               const gpu::GpuTuning& tuning, const FaultInjection& faults, int tensor_parallel,
                                               const GpuRanks& gpu_ranks) {
    check_tensor_parallel(tensor_parallel, gpu != nullptr, gpu_ranks.devices.size());
    if (!gpu_ranks.devices.empty())
        return make_gpu_tensor_parallel_runner(model, mode, max_batch, max_tokens, gpu_ranks.dtype, tuning, gpu_ranks.devices);
    if (tensor_parallel > 1) return make_tensor_parallel_runner(model, mode, max_batch, max_tokens, tensor_parallel, faults);
    if (gpu) return std::make_unique<GpuModelRunner>(model.config, std::move(gpu), mode, max_batch, max_tokens, tuning, faults);
    return std::make_unique<CpuModelRunner>(model, mode, max_batch, max_tokens, faults);
}

}  // namespace freekv
