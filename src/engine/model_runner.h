// model_runner.h: one backend's forward over the engine's sequence slots: the model plus the KV
// storage of every KV mode for up to max_batch sequences of up to max_tokens each. The CPU runner
// keeps them in a PagedKvCache (full) or a RetrievalKv (the offloading modes), the GPU runner in a
// GpuEngine. It owns storage and runs steps; it never decides who runs (that is the Scheduler's).
// Invariants:
//   - add_sequence() returns a free slot (the lowest) or throws when all max_batch are taken;
//     remove_sequence() frees it for reuse, with nothing of the old sequence left visible;
//   - a forward lists its spans' tokens in order (SequenceSpan::offset); each span continues its
//     sequence at n_tokens(seq); with whole_prompt_prefill() a prompt is one span that runs alone;
//     otherwise prompt chunks (in order, after begin_prompt) and decode tokens may share a forward
//     (the GPU runner runs the decode spans together and each chunk on its own, one prompt
//     part-way at a time);
//   - on the CPU a sequence's logits do not depend on what it is batched with (grouped matmuls);
//   - forward_top() either throws (no output is valid; the KV of every listed sequence is
//     incomplete) or returns the spans that failed on their own (their sequences must be removed;
//     every other row's output is valid and its sequence went on as if they were not there).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/fault_injection.h"
#include "engine/gpu_ranks.h"
#include "engine/kv_mode.h"
#include "engine/kv_stats.h"
#include "engine/step_plan.h"
#include "gpu/gpu_engine.h"
#include "model/attention_kv.h"
#include "model/model_loader.h"

namespace freekv {

/// A span that could not run while the rest of its forward did (forward_top()).
struct FailedSpan {
    int32_t seq = -1;
    std::string error;
};

class ModelRunner {
public:
    virtual ~ModelRunner() = default;
    virtual int64_t max_batch() const = 0;
    virtual int64_t max_tokens() const = 0;
    /// Whether a prompt must be prefilled whole, in a forward of its own.
    virtual bool whole_prompt_prefill() const = 0;
    virtual bool on_gpu() const = 0;
    virtual int64_t n_free() const = 0;

    virtual int32_t add_sequence() = 0;
    virtual void remove_sequence(int32_t seq) = 0;
    /// The prompt length of a newly added sequence, before its first chunk (the GPU runner stages
    /// the K/V of a prompt that comes in several chunks).
    virtual void begin_prompt(int32_t seq, int64_t n_prompt) = 0;

    /// Runs the spans; logits: [out_rows.size()][n_vocab] of the listed token rows.
    virtual void forward(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans,
                         std::span<const int64_t> out_rows, std::vector<float>& logits) = 0;
    /// Runs the spans; ids, values: [out_rows.size()][k], each row's k largest logits in
    /// Sampler::top_candidates' order (on the GPU chosen on the device when k allows). Returns the
    /// spans that failed alone (a prompt chunk whose allocation failed); their rows are undefined.
    [[nodiscard]] virtual std::vector<FailedSpan> forward_top(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans,
                             std::span<const int64_t> out_rows, int32_t k, std::vector<int32_t>& ids,
                             std::vector<float>& values) = 0;
    /// Counters of the retrieval modes (empty for full); waits for background work.
    virtual KvStats stats() = 0;
    /// The host plan of the last decode step's rows (engine/step_plan.h); empty for full on the CPU.
    virtual std::vector<RowPlan> last_decode_plan() const = 0;

    // The GPU bench's hooks (engine/bench.cpp); runners off the GPU refuse them.
    /// Gives sequence `seq` n_tokens of pseudo-random K/V instead of a prefill (GpuEngine::fill_synthetic).
    virtual void fill_synthetic(int32_t seq, int64_t n_tokens, uint64_t seed);
    /// Whether decode steps record events for the per-phase breakdown (GpuEngine::set_timing).
    virtual void set_timing(bool on);
    /// KV, maps and scratch on the GPUs (weights excluded), and the pinned CPU stores, over every rank.
    virtual int64_t device_bytes() const;
    virtual int64_t host_bytes() const;
};

/// A runner for `mode` with max_batch slots of max_tokens tokens: on the GPU when `gpu` weights
/// are given, else on the CPU with the model's own weights. Throws Error naming the flag to change
/// when the memory does not fit. `faults`: planted failures (tests only). tensor_parallel > 1: the
/// model split over that many ranks, on the GPUs of gpu_ranks when it names them (one per rank;
/// `gpu` is then null), else as CPU threads (tensor_parallel_runner.h).
std::unique_ptr<ModelRunner> make_model_runner(const LoadedModel& model, const KvModeConfig& mode, int64_t max_batch,
                                               int64_t max_tokens, std::shared_ptr<const gpu::GpuWeights> gpu = nullptr,
                                               const gpu::GpuTuning& tuning = {}, const FaultInjection& faults = {},
                                               int tensor_parallel = 1, const GpuRanks& gpu_ranks = {});

/// One rank of a tensor-parallel group on the GPU (engine/gpu_tensor_parallel_runner.h): a GPU
/// runner over the shard's weights (`shard`: its tp_rank_config), made and called on the rank's
/// thread with its device current. Its logits are its vocabulary slice's; forward_top's ids index
/// the slice; a prompt chunk that fails throws instead of failing alone.
std::unique_ptr<ModelRunner> make_gpu_rank_runner(const ModelConfig& shard, std::shared_ptr<const gpu::GpuWeights> weights,
                                                  const KvModeConfig& mode, int64_t max_batch, int64_t max_tokens,
                                                  const gpu::GpuTuning& tuning, const gpu::GpuRank& rank);

}  // namespace freekv
