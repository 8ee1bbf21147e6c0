// gpu_tensor_parallel_runner.cpp: see gpu_tensor_parallel_runner.h.
#include "engine/gpu_tensor_parallel_runner.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"
#include "core/numa_node.h"
#include "engine/rank_threads.h"
#include "engine/tensor_parallel_runner.h"
#include "gpu/gpu_collectives.h"
#include "parallel/tp_plan.h"
#include "parallel/tp_shard.h"

namespace freekv {

namespace {

class GpuTensorParallelRunner final : public ModelRunner {
public:
    GpuTensorParallelRunner(const LoadedModel& m, const KvModeConfig& mode, int64_t max_batch, int64_t max_tokens,
                            gpu::GpuDtype dtype, const gpu::GpuTuning& tuning, std::vector<int> devices)
        : plan_(make_tp_plan(m.config, static_cast<int>(devices.size()))), devices_(std::move(devices)),
          n_vocab_(m.config.n_vocab), n_layer_(m.config.n_layer), max_batch_(max_batch), max_tokens_(max_tokens),
          full_mode_(mode.mode == KvMode::kFull) {
        FREEKV_CHECK(m.model != nullptr, "tensor parallelism needs the model's weights on the host");
        const auto n = devices_.size();
        group_ = gpu::make_device_collectives(devices_);
        for (const TpRank& r : plan_.ranks) {
            shards_.push_back(std::make_unique<TpShard>(shard_llama_weights(m.model->weights(), m.config, r)));
            kv_heads_.push_back(r.kv_heads.count);
            q_heads_.push_back(r.q_heads.count);
            vocab_begin_.push_back(r.vocab.begin);
        }
        weights_.resize(n);
        runners_.resize(n);
        threads_ = std::make_unique<RankThreads>(static_cast<int>(n));
        try {
            const bool several_nodes = numa_node_count() > 1;
            on_every_rank([&](int r) {
                const auto i = static_cast<size_t>(r);
                // The rank's pinned store and host buffers on its GPU's NUMA node: this thread allocates them.
                if (several_nodes) (void)prefer_numa_node(numa_node_of_pci(gpu::pci_bus_id(devices_[i])));
                const TpShard& s = *shards_[i];
                weights_[i] = std::make_shared<const gpu::GpuWeights>(s.config, s.weights, dtype);
                const gpu::GpuRank rank{&group_->rank(r), r, plan_.ranks[i].vocab.begin, n_vocab_};
                runners_[i] = make_gpu_rank_runner(s.config, weights_[i], mode, max_batch, max_tokens, tuning, rank);
            });
        } catch (...) {
            release();
            throw;
        }
    }
    ~GpuTensorParallelRunner() override { release(); }

    int64_t max_batch() const override { return max_batch_; }
    int64_t max_tokens() const override { return max_tokens_; }
    bool whole_prompt_prefill() const override { return runners_[0]->whole_prompt_prefill(); }
    bool on_gpu() const override { return true; }
    int64_t n_free() const override { return runners_[0]->n_free(); }

    int32_t add_sequence() override {
        std::vector<int32_t> seq(runners_.size(), -1);
        try {
            on_every_rank([&](int r) { seq[static_cast<size_t>(r)] = runners_[static_cast<size_t>(r)]->add_sequence(); });
        } catch (...) {  // the ranks that took a slot give it back: all ranks hold the same slots
            on_every_rank([&](int r) {
                if (seq[static_cast<size_t>(r)] >= 0) runners_[static_cast<size_t>(r)]->remove_sequence(seq[static_cast<size_t>(r)]);
            });
            throw;
        }
        for (int32_t s : seq) FREEKV_CHECK(s == seq[0], "tensor-parallel ranks handed out different slots ({} and {})", seq[0], s);
        return seq[0];
    }
    void remove_sequence(int32_t seq) override {
        on_every_rank([&](int r) { runners_[static_cast<size_t>(r)]->remove_sequence(seq); });
    }
    void begin_prompt(int32_t seq, int64_t n_prompt) override {
        on_every_rank([&](int r) { runners_[static_cast<size_t>(r)]->begin_prompt(seq, n_prompt); });
    }

    void forward(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans, std::span<const int64_t> out_rows,
                 std::vector<float>& logits) override {
        const auto n = runners_.size();
        parts_.resize(n);
        on_every_rank([&](int r) { runners_[static_cast<size_t>(r)]->forward(tokens, spans, out_rows, parts_[static_cast<size_t>(r)]); });
        const auto rows = out_rows.size();
        logits.resize(rows * static_cast<size_t>(n_vocab_));
        for (size_t r = 0; r < n; ++r) {  // each rank's vocabulary slice into its columns
            const auto width = static_cast<size_t>(plan_.ranks[r].vocab.count), at = static_cast<size_t>(vocab_begin_[r]);
            FREEKV_CHECK(parts_[r].size() == rows * width, "rank {} returned {} logits for {} rows of {}", r, parts_[r].size(), rows, width);
            for (size_t row = 0; row < rows; ++row)
                std::copy_n(parts_[r].begin() + static_cast<std::ptrdiff_t>(row * width), width,
                            logits.begin() + static_cast<std::ptrdiff_t>(row * static_cast<size_t>(n_vocab_) + at));
        }
    }
    std::vector<FailedSpan> forward_top(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans,
                                        std::span<const int64_t> out_rows, int32_t k, std::vector<int32_t>& ids,
                                        std::vector<float>& values) override {
        const auto n = runners_.size();
        part_ids_.resize(n);
        parts_.resize(n);
        std::vector<int32_t> k_of(n);
        for (size_t r = 0; r < n; ++r) k_of[r] = static_cast<int32_t>(std::min<int64_t>(k, plan_.ranks[r].vocab.count));
        on_every_rank([&](int r) {
            const auto i = static_cast<size_t>(r);
            const auto failed = runners_[i]->forward_top(tokens, spans, out_rows, k_of[i], part_ids_[i], parts_[i]);
            FREEKV_CHECK(failed.empty(), "a tensor-parallel rank reported a failed span instead of throwing");
        });
        merge_rank_tops(part_ids_, parts_, k_of, vocab_begin_, static_cast<int64_t>(out_rows.size()), k, ids, values);
        return {};
    }

    KvStats stats() override {
        if (full_mode_) return {};
        std::vector<KvStats> ranks(runners_.size());
        on_every_rank([&](int r) { ranks[static_cast<size_t>(r)] = runners_[static_cast<size_t>(r)]->stats(); });
        return merge_rank_stats(ranks, kv_heads_, q_heads_, n_layer_);
    }
    std::vector<RowPlan> last_decode_plan() const override { return runners_[0]->last_decode_plan(); }
    void fill_synthetic(int32_t seq, int64_t n_tokens, uint64_t seed) override {
        on_every_rank([&](int r) { runners_[static_cast<size_t>(r)]->fill_synthetic(seq, n_tokens, seed); });
    }
    void set_timing(bool on) override {
        on_every_rank([&](int r) { runners_[static_cast<size_t>(r)]->set_timing(on); });
    }
    int64_t device_bytes() const override { return sum_over_ranks(&ModelRunner::device_bytes); }
    int64_t host_bytes() const override { return sum_over_ranks(&ModelRunner::host_bytes); }

private:
    // Runs fn(rank) on every rank's thread with its GPU current. A rank that fails stops its peers'
    // sums; the group is made anew and the first rank's error thrown once all have returned.
    void on_every_rank(const std::function<void(int)>& fn) {
        threads_->run_all(
            [&](int r) {
                gpu::set_device(devices_[static_cast<size_t>(r)]);
                fn(r);
            },
            [&](const std::string& why) {
                if (group_) group_->fail(why);
            },
            [&] {
                if (group_) group_->reset();
            });
    }

    int64_t sum_over_ranks(int64_t (ModelRunner::*bytes)() const) const {
        int64_t total = 0;
        for (const auto& r : runners_) total += (*r.*bytes)();
        return total;
    }

    // Each rank's engine and weights are freed on its thread, with its GPU current.
    void release() {
        if (!threads_) return;
        threads_->run([&](int r) {
            gpu::set_device(devices_[static_cast<size_t>(r)]);
            runners_[static_cast<size_t>(r)].reset();
            weights_[static_cast<size_t>(r)].reset();
        });
        threads_.reset();
    }

    TpPlan plan_;
    std::vector<int> devices_;
    int64_t n_vocab_, n_layer_, max_batch_, max_tokens_;
    bool full_mode_;
    std::unique_ptr<gpu::DeviceCollectiveGroup> group_;
    std::vector<std::unique_ptr<TpShard>> shards_;
    std::vector<std::shared_ptr<const gpu::GpuWeights>> weights_;
    std::vector<std::unique_ptr<ModelRunner>> runners_;
    std::vector<int64_t> kv_heads_, q_heads_, vocab_begin_;
    std::unique_ptr<RankThreads> threads_;
    std::vector<std::vector<float>> parts_;
    std::vector<std::vector<int32_t>> part_ids_;
};

}  // namespace

void merge_rank_tops(const std::vector<std::vector<int32_t>>& ids, const std::vector<std::vector<float>>& values,
                     const std::vector<int32_t>& k_of_rank, const std::vector<int64_t>& vocab_begin, int64_t rows, int32_t k,
                     std::vector<int32_t>& out_ids, std::vector<float>& out_values) {
    out_ids.assign(static_cast<size_t>(rows * k), 0);
    out_values.assign(out_ids.size(), 0.0f);
    std::vector<std::pair<float, int32_t>> c;
    for (int64_t row = 0; row < rows; ++row) {
        c.clear();
        for (size_t r = 0; r < ids.size(); ++r) {
            const auto kr = static_cast<size_t>(k_of_rank[r]);
            FREEKV_CHECK(ids[r].size() == static_cast<size_t>(rows) * kr && values[r].size() == ids[r].size(),
                         "rank {} returned {} candidates for {} rows of {}", r, ids[r].size(), rows, kr);
            for (size_t j = 0; j < kr; ++j) {
                const size_t at = static_cast<size_t>(row) * kr + j;
                c.emplace_back(values[r][at], static_cast<int32_t>(ids[r][at] + vocab_begin[r]));
            }
        }
        FREEKV_CHECK(c.size() >= static_cast<size_t>(k), "the ranks have {} candidates for a top-{}", c.size(), k);
        std::partial_sort(c.begin(), c.begin() + k, c.end(), [](const auto& a, const auto& b) {
            return a.first != b.first ? a.first > b.first : a.second < b.second;
        });
        for (int32_t j = 0; j < k; ++j) {
            out_values[static_cast<size_t>(row * k + j)] = c[static_cast<size_t>(j)].first;
            out_ids[static_cast<size_t>(row * k + j)] = c[static_cast<size_t>(j)].second;
        }
    }
}

std::unique_ptr<ModelRunner> make_gpu_tensor_parallel_runner(const LoadedModel& model, const KvModeConfig& mode,
                                                             int64_t max_batch, int64_t max_tokens, gpu::GpuDtype dtype,
                                                             const gpu::GpuTuning& tuning, const std::vector<int>& devices) {
    FREEKV_CHECK(!devices.empty(), "a tensor-parallel runner needs at least one GPU");
    return std::make_unique<GpuTensorParallelRunner>(model, mode, max_batch, max_tokens, dtype, tuning, devices);
}

}  // namespace freekv
