// tensor_parallel_runner.cpp: see tensor_parallel_runner.h.
#include "engine/tensor_parallel_runner.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <type_traits>

#include "core/error.h"
#include "engine/rank_threads.h"
#include "parallel/host_collective.h"
#include "parallel/tp_plan.h"
#include "parallel/tp_shard.h"

namespace freekv {

namespace {

class TensorParallelRunner final : public ModelRunner {
public:
    TensorParallelRunner(const LoadedModel& m, const KvModeConfig& mode, int64_t max_batch, int64_t max_tokens, int n_ranks,
                         const FaultInjection& faults)
        : plan_(make_tp_plan(m.config, n_ranks)), collective_(n_ranks), n_layer_(m.config.n_layer) {
        FREEKV_CHECK(m.model != nullptr, "tensor parallelism needs the model's weights on the host");
        for (const TpRank& r : plan_.ranks) {
            shards_.push_back(std::make_unique<TpShard>(shard_llama_weights(m.model->weights(), m.config, r)));
            auto rank_model = std::make_unique<LoadedModel>();
            rank_model->path = m.path;
            rank_model->format = m.format;
            rank_model->config = shards_.back()->config;
            rank_model->model = std::make_unique<LlamaModel>(shards_.back()->config, shards_.back()->weights, m.model->impl());
            rank_model->model->set_tensor_parallel({&collective_.rank(r.rank), r.vocab.begin, m.config.n_vocab});
            runners_.push_back(make_model_runner(*rank_model, mode, max_batch, max_tokens, nullptr, {}, faults));
            rank_models_.push_back(std::move(rank_model));
            kv_heads_.push_back(r.kv_heads.count);
            q_heads_.push_back(r.q_heads.count);
        }
        threads_ = std::make_unique<RankThreads>(n_ranks);
    }

    int64_t max_batch() const override { return runners_[0]->max_batch(); }
    int64_t max_tokens() const override { return runners_[0]->max_tokens(); }
    bool whole_prompt_prefill() const override { return runners_[0]->whole_prompt_prefill(); }
    bool on_gpu() const override { return false; }
    int64_t n_free() const override { return runners_[0]->n_free(); }

    int32_t add_sequence() override {
        std::vector<int32_t> added;
        try {
            for (auto& r : runners_) added.push_back(r->add_sequence());
        } catch (...) {  // the ranks that took the slot give it back: all ranks hold the same slots
            for (size_t i = 0; i < added.size(); ++i) runners_[i]->remove_sequence(added[i]);
            throw;
        }
        for (int32_t s : added) FREEKV_CHECK(s == added[0], "tensor-parallel ranks handed out different slots ({} and {})", added[0], s);
        return added[0];
    }
    void remove_sequence(int32_t seq) override {
        for (auto& r : runners_) r->remove_sequence(seq);
    }
    void begin_prompt(int32_t seq, int64_t n_prompt) override {
        for (auto& r : runners_) r->begin_prompt(seq, n_prompt);
    }

    void forward(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans, std::span<const int64_t> out_rows,
                 std::vector<float>& logits) override {
        scratch_logits_.resize(runners_.size());
        on_every_rank([&](int r) {
            runners_[static_cast<size_t>(r)]->forward(tokens, spans, out_rows, r == 0 ? logits : scratch_logits_[static_cast<size_t>(r)]);
        });
    }
    std::vector<FailedSpan> forward_top(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans,
                                        std::span<const int64_t> out_rows, int32_t k, std::vector<int32_t>& ids,
                                        std::vector<float>& values) override {
        // Planted faults are the same on every rank, so every rank drops the same spans.
        std::vector<std::vector<FailedSpan>> failed(runners_.size());
        scratch_ids_.resize(runners_.size());
        scratch_values_.resize(runners_.size());
        on_every_rank([&](int r) {
            const auto i = static_cast<size_t>(r);
            failed[i] = runners_[i]->forward_top(tokens, spans, out_rows, k, r == 0 ? ids : scratch_ids_[i],
                                                 r == 0 ? values : scratch_values_[i]);
        });
        return failed[0];
    }

    KvStats stats() override {
        std::vector<KvStats> ranks;
        for (auto& r : runners_) ranks.push_back(r->stats());
        return merge_rank_stats(ranks, kv_heads_, q_heads_, n_layer_);
    }
    std::vector<RowPlan> last_decode_plan() const override { return runners_[0]->last_decode_plan(); }

private:
    // Runs fn(rank) on every rank at once. A rank that fails stops its peers' collectives; the
    // first rank's error is thrown once all have returned.
    void on_every_rank(const std::function<void(int)>& fn) {
        threads_->run_all(fn, [&](const std::string& why) { collective_.fail(why); }, [&] { collective_.reset(); });
    }

    TpPlan plan_;
    HostCollective collective_;
    int64_t n_layer_;
    std::vector<std::unique_ptr<TpShard>> shards_;
    std::vector<std::unique_ptr<LoadedModel>> rank_models_;
    std::vector<std::unique_ptr<ModelRunner>> runners_;
    std::vector<int64_t> kv_heads_, q_heads_;
    std::unique_ptr<RankThreads> threads_;
    std::vector<std::vector<float>> scratch_logits_, scratch_values_;
    std::vector<std::vector<int32_t>> scratch_ids_;
};

// Rows of `width` from each rank in turn: out = [row 0 of rank 0, row 0 of rank 1, ..., row 1 of rank 0, ...].
template <class T>
std::vector<T> interleave_rows(const std::vector<const std::vector<T>*>& parts, const std::vector<int64_t>& widths) {
    std::vector<T> out;
    if (parts.empty() || widths[0] == 0 || parts[0]->empty()) return out;
    const size_t rows = parts[0]->size() / static_cast<size_t>(widths[0]);
    for (size_t i = 0; i < parts.size(); ++i)
        FREEKV_CHECK(parts[i]->size() == rows * static_cast<size_t>(widths[i]),
                     "tensor-parallel rank {} counted {} values where {} rows of {} were expected", i, parts[i]->size(), rows,
                     widths[i]);
    for (size_t row = 0; row < rows; ++row)
        for (size_t i = 0; i < parts.size(); ++i) {
            const auto w = static_cast<size_t>(widths[i]);
            out.insert(out.end(), parts[i]->begin() + static_cast<std::ptrdiff_t>(row * w),
                       parts[i]->begin() + static_cast<std::ptrdiff_t>((row + 1) * w));
        }
    return out;
}

}  // namespace

KvStats merge_rank_stats(const std::vector<KvStats>& ranks, const std::vector<int64_t>& kv_heads_per_rank,
                         const std::vector<int64_t>& q_heads_per_rank, int64_t n_layer) {
    FREEKV_CHECK(!ranks.empty() && ranks.size() == kv_heads_per_rank.size() && ranks.size() == q_heads_per_rank.size(),
                 "merge_rank_stats: {} ranks' counters for {} and {} head counts", ranks.size(), kv_heads_per_rank.size(),
                 q_heads_per_rank.size());
    KvStats out = ranks[0];  // per-(step, sequence) counts: every rank counts the same pairs
    if (ranks.size() == 1) return out;
    auto gather = [&](auto member) {
        using V = std::remove_reference_t<decltype(ranks[0].*member)>;
        std::vector<const V*> parts;
        for (const KvStats& s : ranks) parts.push_back(&(s.*member));
        return parts;
    };
    for (size_t i = 1; i < ranks.size(); ++i) {
        const KvStats& s = ranks[i];
        for (size_t l = 0; l < out.head_tests.size() && l < s.head_tests.size(); ++l) {
            out.head_tests[l] += s.head_tests[l];
            out.head_flags[l] += s.head_flags[l];
            out.corrected_pairs[l] = std::max(out.corrected_pairs[l], s.corrected_pairs[l]);
        }
        out.transfer.sync_jobs += s.transfer.sync_jobs;
        out.transfer.background_jobs += s.transfer.background_jobs;
        out.transfer.sync_bytes += s.transfer.sync_bytes;
        out.transfer.background_bytes += s.transfer.background_bytes;
        for (double KvStats::*t : {&KvStats::select_ms, &KvStats::recall_wait_ms, &KvStats::attention_ms, &KvStats::gather_sync_ms,
                                   &KvStats::gather_background_ms, &KvStats::host_issue_ms})
            out.*t = std::max(out.*t, s.*t);  // the ranks run at the same time: the slowest is the critical path
        out.store_bytes_per_token += s.store_bytes_per_token;
    }
    // [n_layer][n_head_kv] in head order: each layer's heads rank by rank.
    if (!ranks[0].recalled_sync.empty()) {
        out.recalled_sync = interleave_rows(gather(&KvStats::recalled_sync), kv_heads_per_rank);
        out.recalled_background = interleave_rows(gather(&KvStats::recalled_background), kv_heads_per_rank);
        FREEKV_CHECK(static_cast<int64_t>(out.recalled_sync.size()) ==
                         n_layer * std::accumulate(kv_heads_per_rank.begin(), kv_heads_per_rank.end(), int64_t{0}),
                     "merged recall counters do not cover every layer and KV head");
    }
    // Per (sparse step, layer, sequence): every query head, rank by rank.
    out.mass_recall = interleave_rows(gather(&KvStats::mass_recall), q_heads_per_rank);
    out.oracle_mass_recall = interleave_rows(gather(&KvStats::oracle_mass_recall), q_heads_per_rank);
    return out;
}

void check_tensor_parallel(int n_ranks, bool whole_model_on_gpu, size_t gpu_rank_devices) {
    FREEKV_CHECK(n_ranks >= 1, "--tensor-parallel must be at least 1, got {}", n_ranks);
    FREEKV_CHECK(!(n_ranks > 1 && whole_model_on_gpu), "--tensor-parallel {} on the GPU places each rank's shard on its own GPU, "
                 "not the whole model's weights (an internal error: the caller passed both)", n_ranks);
    FREEKV_CHECK(gpu_rank_devices == 0 || static_cast<int>(gpu_rank_devices) == n_ranks,
                 "--tensor-parallel {} needs one GPU per rank, {} given (--tp-gpus)", n_ranks, gpu_rank_devices);
}

std::unique_ptr<ModelRunner> make_tensor_parallel_runner(const LoadedModel& model, const KvModeConfig& mode, int64_t max_batch,
                                                         int64_t max_tokens, int n_ranks, const FaultInjection& faults) {
    check_tensor_parallel(n_ranks, false, 0);
    return std::make_unique<TensorParallelRunner>(model, mode, max_batch, max_tokens, n_ranks, faults);
}

}  // namespace freekv
