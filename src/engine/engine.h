// engine.h: the long-lived inference engine: it owns a ModelRunner (the sequence slots of one
// backend) and a Scheduler, takes requests from any thread and steps every running sequence
// together on its own thread (continuous batching): sequences join as slots free up, prefill in
// chunks beside the decoders (on the GPU one prompt at a time; whole, in a step of its own, where
// the GPU engine cannot chunk: bf16 with a head_dim other than 64 or 128), and leave when done.
// Invariants:
//   - submit() checks a request before it is queued (Error: bad prompt; EngineBusy: queue full)
//     and returns its id; every accepted request gets exactly one on_done, after its last on_token;
//   - callbacks run on the engine thread, in order per request; they must not block for long
//     (they may call cancel());
//   - a sequence's tokens do not depend on what it was batched with on the CPU backend; on the GPU
//     in f32 they match its solo run up to cuBLAS batch-size rounding;
//   - stopping the engine (destructor) ends every request with FinishReason::kCancelled;
//   - a failure that belongs to one sequence (its memory at admission, its own prompt chunk) ends
//     that request with kError and no other; a failed batched forward ends the requests of its step.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/fault_injection.h"
#include "engine/kv_mode.h"
#include "engine/kv_stats.h"
#include "engine/sampler.h"
#include "gpu/gpu_engine.h"
#include "model/model_loader.h"

namespace freekv {

struct EngineConfig {
    KvModeConfig kv_mode = full_kv_mode();
    int64_t n_ctx = 0;           // tokens per sequence, prompt + generated; 0 = the model's trained context
    int64_t max_batch = 8;       // sequences stepped together (runner slots)
    int64_t max_waiting = 256;   // requests queued beyond the running ones; more are refused
    int64_t step_tokens = 2048;  // tokens per step, decode tokens and prefill chunks together
    int64_t prefill_chunk = 0;   // prompt chunk boundaries (multiples of it); 0: 512 on the CPU, 2048 on the GPU
    std::shared_ptr<const gpu::GpuWeights> gpu;  // run on the GPU when set
    gpu::GpuTuning gpu_tuning;                   // the GPU engine's launch shapes (gpu/gpu_tuning.h)
    // GPU memory plan (gpu/gpu_memory_plan.h): max_batch is lowered to the sequences that fit.
    double gpu_memory_gib = 0;  // cap on the GPU memory the engine uses, weights included; 0: what is free
    double cpu_kv_gib = 0;      // cap on the pinned CPU store; 0: half of the system's RAM
    FaultInjection faults;      // planted failures, for tests (engine/fault_injection.h)
    int tensor_parallel = 1;    // ranks the model is split over (engine/tensor_parallel_runner.h)
    // With tensor_parallel > 1 on GPUs (engine/gpu_tensor_parallel_runner.h; gpu stays null): rank r on
    // gpu_devices[r], its shard's weights made there in gpu_dtype; the caps above apply per GPU.
    std::vector<int> gpu_devices;
    gpu::GpuDtype gpu_dtype = gpu::GpuDtype::kBF16;
};

/// submit() when max_waiting requests wait already: try again later (the server answers 429).
class EngineBusy : public std::runtime_error {
public:
    explicit EngineBusy(const std::string& message) : std::runtime_error(message) {}
};

enum class FinishReason { kStop, kLength, kCancelled, kError, kTimeout };
constexpr int kFinishReasons = 5;
const char* finish_reason_name(FinishReason reason);

struct RequestOutcome {
    FinishReason reason = FinishReason::kLength;
    std::string error;  // what went wrong, for kError
    int64_t n_prompt = 0, n_generated = 0;  // n_generated counts a final stop token
    double queue_ms = 0;  // submit() to admission into a slot
    double ttft_ms = 0;   // submit() to the first token (0 if none)
    double total_ms = 0;  // submit() to the end
};

struct EngineRequest {
    std::vector<int32_t> prompt;
    int64_t max_tokens = 16;        // -1: until a stop token or the context is full
    SamplingParams sampling;
    std::vector<int32_t> stop_ids;  // tokens that end the generation (not passed to on_token)
    double timeout_s = 0;           // > 0: ends with kTimeout this long after submit(), waiting or running
    /// Each generated token, in order; returning false stops the request (kCancelled).
    std::function<bool(int32_t)> on_token;
    /// Once, when the request ends for any reason.
    std::function<void(const RequestOutcome&)> on_done;
    /// Optional: the prompt tokens held after each prefill step.
    std::function<void(int64_t)> on_prefill;
};

/// Counters for /metrics; totals since the engine started.
struct EngineMetrics {
    int64_t max_batch = 0, n_ctx = 0;
    int64_t waiting = 0, running = 0;
    int64_t submitted = 0, rejected = 0;
    int64_t finished[kFinishReasons] = {};  // by FinishReason
    int64_t prompt_tokens = 0, generated_tokens = 0;
    int64_t steps = 0, decode_rows = 0;  // engine steps; decode tokens over all steps
    double step_seconds = 0;             // time spent in steps
    double queue_seconds = 0, ttft_seconds = 0;  // sums over finished requests (admitted / with a token)
};

class Engine {
public:
    /// Builds the runner (memory for max_batch sequences of n_ctx tokens; on the GPU as many as the
    /// memory plan fits, at most max_batch, and an Error naming the flags when not one fits) and
    /// starts the engine thread.
    Engine(const LoadedModel& model, EngineConfig config);
    ~Engine();
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    /// Queues a request; returns its id. Throws Error when the prompt is empty, has a token outside
    /// the vocabulary or does not leave room in the context, EngineBusy when the queue is full.
    int64_t submit(EngineRequest request);
    /// Ends a waiting or running request with kCancelled (no effect once it has finished).
    void cancel(int64_t id);

    EngineMetrics metrics() const;
    /// Retrieval counters over every request so far (empty for full); waits for the current step.
    KvStats kv_stats();
    const EngineConfig& config() const;
    bool on_gpu() const;
    /// The start-up memory plan in words: what one sequence takes, how many fit, what capped them
    /// (empty on the CPU backend).
    const std::string& memory_plan() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace freekv
