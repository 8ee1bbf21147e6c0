// gpu_memory_plan.h: what a GpuEngine of a given mode will allocate, computed on the host before
// anything is allocated, so that the engine can size its batch to a memory cap (--gpu-memory-gib,
// --cpu-kv-gib) and say what fits instead of failing half-way. Pure arithmetic: compiled in every
// build, CPU-only ones included (the server prints the plan either way).
// Invariants:
//   - device_bytes(b) >= GpuEngine::device_bytes() of an engine with b sequences after any forward
//     whose tokens fit in max_tokens (the GPU test checks it), and it is at most the transient
//     prefill bytes above it;
//   - host_bytes(b) is what the pinned CPU store of b sequences takes (0 for full and quest).
#pragma once

#include <cstdint>
#include <string>

#include "engine/kv_mode.h"
#include "model/model_config.h"

namespace freekv::gpu {

struct GpuMemoryPlan {
    int64_t weight_bytes = 0;         // on the device, shared by every sequence
    int64_t device_per_sequence = 0;  // budget cache (or full KV), summaries, maps, scores, query ring
    int64_t device_fixed = 0;         // counters and decode buffers of max_batch rows (upper bound)
    int64_t prefill_bytes = 0;        // activations and attention scratch of one max_tokens prefill
    int64_t host_per_sequence = 0;    // pinned CPU store of one sequence
    int64_t store_bytes_per_token = 0;  // of the CPU store (or quest's device store), every layer and KV head
    const char* store_dtype = "native";  // --kv-store-dtype
    int64_t max_tokens = 0;

    /// Device bytes of the KV, scratch and activations of `batch` sequences (weights excluded).
    int64_t device_bytes(int64_t batch) const { return device_fixed + prefill_bytes + batch * device_per_sequence; }
    int64_t host_bytes(int64_t batch) const { return batch * host_per_sequence; }
    /// The most sequences that fit in device_cap bytes of GPU memory (weights included) and
    /// host_cap bytes of pinned memory (<= 0: no host cap); 0 when not even one does.
    int64_t max_sequences(int64_t device_cap, int64_t host_cap) const;
    /// One line: weights, per-sequence device and host bytes (the store's bytes per token and dtype), the prefill peak.
    std::string describe() const;
};

/// Whether a GpuEngine prefills with the flash kernel (bf16 KV, head_dim 64 or 128: no fp32 copy
/// of the prompt's K/V and no score matrix) or with the fp32 cuBLAS path (f32 engines, other dims).
inline bool prefill_uses_flash(int elem_bytes, int64_t head_dim) { return elem_bytes == 2 && (head_dim == 64 || head_dim == 128); }

/// Whether a GpuEngine can prefill a prompt in chunks across forwards (GpuEngine::begin_prompt):
/// the flash path, or the f32 engine (whose cuBLAS path reads its fp32 staged K/V directly).
inline bool prefill_can_chunk(int elem_bytes, int64_t head_dim) { return elem_bytes == 4 || prefill_uses_flash(elem_bytes, head_dim); }

/// The plan of a GpuEngine for `mode` with sequences of up to max_tokens tokens, KV and weights
/// of elem_bytes (2: bf16, 4: f32) and weights of weight_bytes on the device. prefill_chunk 0: a
/// prompt is prefilled whole (activations of max_tokens rows); > 0: in chunks of at most that many
/// tokens (activations of that many rows, plus one prompt's K/V of every layer staged).
GpuMemoryPlan plan_gpu_memory(const ModelConfig& c, const KvModeConfig& mode, int elem_bytes, int64_t weight_bytes,
                              int64_t max_tokens, int64_t prefill_chunk = 0);

}  // namespace freekv::gpu
