// gpu_engine.h: the model and every KV mode on one CUDA GPU (design doc 4): bf16 weights and KV
// (or fp32 with GpuDtype::kF32, the accuracy reference: GEMMs in fp32, nothing rounded to bf16),
// fp32 activations, the budget cache in device memory, the full KV of the offloading modes in
// pinned, mapped host memory (quest keeps it in device memory), recall by the zero-copy gather
// kernel, and FreeKV's speculative recall on a second stream ordered by events.
// Host API only: no CUDA types, so CPU-only builds compile against gpu_engine_stub.cpp, whose
// constructors throw a clear Error.
// Invariants:
//   - a forward is either one prefill span (the whole prompt of a sequence that holds no tokens
//     yet, or the next chunk of the one prompt begin_prompt staged), or decode spans (one token
//     each) of distinct sequences whose prompt is done;
//   - the decode step follows RetrievalKv (engine/retrieval_kv.h) step for step: same attention
//     sets, same correction test, same maps; K/V are bf16 here (fp32 there) unless kF32;
//   - at step t, layer l, the background selection + recall of (t - 1, l) has finished on the
//     side stream before the correction test, the corrective selection or attention of (t, l).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/kv_mode.h"
#include "engine/kv_stats.h"
#include "engine/step_plan.h"
#include "gpu/gpu_rank.h"
#include "gpu/gpu_tuning.h"
#include "model/attention_kv.h"
#include "model/llama_weights.h"
#include "model/model_config.h"

namespace freekv::gpu {

/// Element type of the GPU engine's weights, KV and page summaries. kBF16: bf16 storage, GEMM
/// inputs rounded to bf16 (the fast default). kF32: fp32 storage and fp32 GEMMs (twice the memory,
/// slower): the GPU then computes what the CPU backend computes, up to summation order.
enum class GpuDtype { kBF16, kF32 };
/// Parses "bf16" or "f32"; Error otherwise.
inline GpuDtype parse_gpu_dtype(const std::string& s) {
    if (s == "bf16") return GpuDtype::kBF16;
    if (s == "f32") return GpuDtype::kF32;
    FREEKV_FAIL("--gpu-dtype '{}' must be bf16 or f32", s);
}
inline const char* gpu_dtype_name(GpuDtype d) { return d == GpuDtype::kF32 ? "f32" : "bf16"; }

/// The weights on the device, shared by every engine of one model; its dtype is the engines'.
class GpuWeights {
public:
    GpuWeights(const ModelConfig& config, const LlamaWeights& weights, GpuDtype dtype = GpuDtype::kBF16);
    ~GpuWeights();
    GpuWeights(const GpuWeights&) = delete;
    GpuWeights& operator=(const GpuWeights&) = delete;
    const ModelConfig& config() const { return config_; }
    GpuDtype dtype() const { return dtype_; }
    int64_t bytes() const { return bytes_; }
    /// Bytes a decode step reads of them: every matrix, bias and norm and the LM head, not the
    /// embedding table (one row per token).
    int64_t decode_read_bytes() const { return bytes_ - embedding_bytes_; }
    /// The decode GEMV measured for each bf16 matrix shape, per row count 1..8 (s simt, b2/b4/b8
    /// block-k, m1/m2 tensor-core mma, c cuBLAS) and its one- and four-row times against the
    /// default's; empty for f32 weights.
    std::string gemv_summary() const;
    struct Impl;
    const Impl& impl() const { return *impl_; }

private:
    void measure_gemvs(const LlamaWeights& weights);
    ModelConfig config_;
    GpuDtype dtype_ = GpuDtype::kBF16;
    int64_t bytes_ = 0, embedding_bytes_ = 0;
    std::unique_ptr<Impl> impl_;
};

/// The largest k of GpuEngine::forward_top (sampling with a larger top-k, or none, copies the logits).
constexpr int32_t kMaxDeviceTopK = 256;

/// Whether this build has the GPU engine and a device answers; `why` says why not.
bool gpu_available(std::string* why = nullptr);

/// Free and total memory of the current device in bytes ({0, 0} without one).
struct DeviceMemory {
    int64_t free = 0, total = 0;
};
DeviceMemory device_memory();

/// Marks the start (on) or end (off) of the launches a profiler started with its capture off
/// should record (cudaProfilerStart/Stop; `ncu --profile-from-start off`): freekv bench brackets
/// its measured decode steps so. Nothing without a profiler attached, or without CUDA.
void profiler_range(bool on);

class GpuEngine {
public:
    /// Reserves device and pinned host memory for max_batch sequences of max_tokens each; throws
    /// Error naming the flag to change when either does not fit.
    GpuEngine(std::shared_ptr<const GpuWeights> weights, const KvModeConfig& mode, int64_t max_batch, int64_t max_tokens,
              const GpuTuning& tuning = {});
    ~GpuEngine();
    GpuEngine(const GpuEngine&) = delete;
    GpuEngine& operator=(const GpuEngine&) = delete;

    /// Admits an empty sequence; returns its batch index (the lowest free one).
    int32_t add_sequence();
    /// Frees a sequence's batch index for a later add_sequence (the engine's memory stays reserved).
    void remove_sequence(int32_t seq);
    int64_t n_tokens(int32_t seq) const;

    /// Whether prompts can be prefilled in chunks (begin_prompt): bf16 with head_dim 64 or 128 (the
    /// flash kernel), or any f32 engine.
    bool chunked_prefill() const;
    /// Announces that the empty sequence seq's prompt of n_prompt tokens comes in chunks, one
    /// forward each, in order: every layer's K/V is staged on the device until the last chunk
    /// installs the history as a whole-prompt prefill would; the sequence decodes after that. One
    /// prompt at a time; remove_sequence drops a stage part-way. Error when !chunked_prefill().
    void begin_prompt(int32_t seq, int64_t n_prompt);
    /// Tests: the next prefill forward fails where it allocates the prompt's K/V, as when the
    /// device is out of memory (Error, nothing of it run).
    void fail_next_prefill_allocation();
    /// The host plan of the last decode step, one row per sequence in span order (engine/step_plan.h).
    std::vector<RowPlan> last_decode_plan() const;

    /// Runs the spans (tokens concatenated in span order); logits: [out_rows.size()][n_vocab] of
    /// the listed token rows.
    void forward(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans, std::span<const int64_t> out_rows,
                 std::vector<float>& logits);

    /// Like forward, but only the k largest logits of each listed row come back, chosen on the
    /// device: ids and values [out_rows.size()][k], ordered by logit descending and lower id first
    /// on equal logits (Sampler::top_candidates' order). 1 <= k <= min(n_vocab, kMaxDeviceTopK).
    void forward_top(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans, std::span<const int64_t> out_rows,
                     int32_t k, std::vector<int32_t>& ids, std::vector<float>& values);

    /// Benchmarks: gives an empty sequence n_tokens of pseudo-random K/V and a random last query,
    /// installed exactly as a prefill of that length would be (summaries, offload, budget cache,
    /// first selection), without running the model.
    void fill_synthetic(int32_t seq, int64_t n_tokens, uint64_t seed);

    /// Makes this engine (over a shard's weights) one rank of a tensor-parallel group (gpu_rank.h):
    /// forwards take ids of the whole vocabulary and give the logits of the rank's slice (forward_top:
    /// the slice's own ids); every rank's forward must run at the same time, on its own thread.
    void set_tensor_parallel(const GpuRank& rank);

    /// Times the phases of the decode step with events (select, recall wait, attention).
    void set_timing(bool on);
    /// Waits for the side stream and returns the counters.
    KvStats stats();
    int64_t device_bytes() const;  // KV and scratch, weights excluded
    int64_t host_bytes() const;    // pinned CPU store

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace freekv::gpu
