// gpu_engine_impl.cuh: the GpuEngine's state (GpuEngine::Impl) and the device weights
// (GpuWeights::Impl), shared by the files that implement the engine, one part each:
//   gpu_engine.cu   lifetime: reserving the KV storage, sequence slots, forward, counters;
//   gpu_weights.cu  the weights on the device, device probes;
//   gpu_layers.cu   the model's dense pieces: projections, MLP, norms, logits and top-k;
//   gpu_recall.cu   selection and recall: gather, per-copy and dma paths, the worker, events;
//   gpu_prefill.cu  prefill and installing a history into the budget cache and CPU store;
//   gpu_decode.cu   the decode step (regimes, boundary jobs, speculative and corrective recall);
//   gpu_tuning.cu   launch shapes from the tuning options (gpu_tuning.h).
// Streams: one main stream runs the model and the critical path of each layer (correction test,
// corrective selection + gather, attention); FreeKV's speculative work of layer l (selection of
// the unflagged heads with this step's query, then their gather) runs on a side stream after event
// attn_done[l] and signals bg_done[l], which layer l of the next step waits for. The host
// synchronizes once per step, when the logits come back. With `--recall-impl dma` the background
// blocks go through the copy engines instead of the gather kernel: the side stream brings the job
// list to pinned host memory and records sel_done[l], a worker thread (recall_worker.h) waits for
// it, issues the batched copies and the scatter on the copy stream and records bg_done[l] there;
// the main thread waits for the worker's ticket before it waits on bg_done[l].
// Internal to src/gpu: nothing outside includes it.
#pragma once

#include <chrono>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <deque>
#include <functional>
#include <numeric>
#include <random>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_handles.cuh"
#include "backend/cuda/device_array.cuh"
#include "backend/cuda/gather_pages.cuh"
#include "backend/cuda/kv_block_code.cuh"
#include "backend/cuda/kv_kernels.cuh"
#include "backend/cuda/ops_cuda.cuh"
#include "backend/cuda/flash_prefill.cuh"
#include "backend/cuda/page_boundary.cuh"
#include "backend/cuda/pinned_store.cuh"
#include "backend/cuda/prefill_attention.cuh"
#include "backend/cuda/select_pages.cuh"
#include "backend/cuda/top_k.cuh"
#include "backend/ops.h"
#include "core/dtype.h"
#include "core/log.h"
#include "engine/step_plan.h"
#include "gpu/gpu_engine.h"
#include "gpu/gpu_memory_plan.h"
#include "gpu/recall_worker.h"

namespace freekv::gpu {

using cuda::DeviceArray;

inline size_t sz(int64_t n) { return static_cast<size_t>(n); }

// Launch shapes from the tuning options (gpu_tuning.cu).
int32_t split_for(int64_t n_rows_heads, int64_t max_tokens, int64_t min_tokens, int64_t target_blocks);
int gemm_sms_beside_gather(const GpuTuning& t);
int gemm_sms_beside_install(const GpuTuning& t, int64_t n_head_kv);

// A weight on the device in the engine's dtype: bf16, or fp32 (--gpu-dtype f32).
struct DeviceWeight {
    DeviceArray<uint16_t> bf16;
    DeviceArray<float> f32;
    const uint16_t* part_of = nullptr;        // bf16 rows inside another weight's buffer (fused q/k/v, gate/up), not owned
    const cuda::GemvChoices* gemv = nullptr;  // bf16 matrices: the measured decode GEMV of their shape
    bool empty() const { return part_of == nullptr && bf16.size() == 0 && f32.size() == 0; }
    cuda::WeightRef ref() const {
        if (part_of != nullptr) return cuda::WeightRef{part_of, false, gemv};
        return f32.size() > 0 ? cuda::WeightRef{f32.get(), true, nullptr} : cuda::WeightRef{bf16.get(), false, gemv};
    }
};

void upload_weight(const WeightView& w, bool as_f32, DeviceWeight& out, int64_t& bytes);

struct GpuWeights::Impl {
    // bf16 engines keep q, k and v (and their biases) as consecutive rows of one matrix, wqkv
    // (bqkv): one decode GEMV computes a row's [q | k | v]; wq, wk and wv are parts of it. Likewise
    // gate and up in w_gate_up: one GEMV computes a row's [gate | up]. f32 engines upload them
    // separately (wqkv, w_gate_up empty).
    struct Layer {
        DeviceWeight attn_norm, wq, wk, wv, wo, bq, bk, bv, ffn_norm, w_gate, w_up, w_down, wqkv, bqkv, w_gate_up;
    };
    std::vector<std::unique_ptr<Layer>> layers;
    DeviceWeight token_embd, output_norm, output;
    DeviceArray<float> inv_freq;
    std::vector<std::unique_ptr<cuda::GemvChoices>> gemv_choices;  // one per matrix shape (bf16 weights)
};

struct GpuEngine::Impl {
    std::shared_ptr<const GpuWeights> weights;
    ModelConfig c;
    KvModeConfig mode;
    GpuTuning tuning;
    GpuRank tp;  // tp.peers == nullptr: the whole model (gpu_rank.h)
    KvBudget budget;
    bool dense_only = false;   // full: every page in its own slot, no store
    bool selects = false, speculative = false, offloads = false;
    int64_t max_batch = 0, max_tokens = 0, max_pages = 0, n_slots = 0;
    cuda::KvGeometry g;

    cuda::Stream main, side;
    // A prefill's install of each layer runs on `side` beside the next layer's products: main records
    // prefill_kv_ready once a layer's K/V are written; side records prefill_installed when its
    // install is done, and main waits for it before anything reads what the install wrote or
    // overwrites what it reads.
    cuda::Event prefill_kv_ready{false}, prefill_installed{false};
    std::vector<cuda::Event> attn_done, bg_done;
    std::vector<bool> bg_pending;
    std::vector<int64_t> bg_step;  // decode step of the last background record per layer

    // KV state
    // KV storage in bytes: elements of g.elem_bytes (2 bf16, 4 fp32); offsets in elements times that.
    DeviceArray<uint8_t> cache, summaries;
    DeviceArray<int32_t> page_of_slot, slot_of_page, cpu_page_of;
    DeviceArray<float> qring;  // [L][max_batch][2][n_head][head_dim]
    std::unique_ptr<cuda::PinnedStore> pinned;
    DeviceArray<uint8_t> device_store;  // quest: the full KV in device memory
    DeviceArray<void*> chunk_table;
    int32_t pages_per_chunk = 0;

    // per step
    DeviceArray<int32_t> ids, positions, att_lists, att_n_pages, att_last_len, place_items;
    // Read by the side stream's selection: one buffer per step parity, and a step's uploads wait
    // until the background work that read the same buffer two steps ago has finished.
    DeviceArray<int32_t> rows_batch_buf[2], sel_n_pages_buf[2];
    DeviceArray<int32_t>* rows_batch = &rows_batch_buf[0];
    DeviceArray<int32_t>* sel_n_pages = &sel_n_pages_buf[0];
    DeviceArray<int64_t> append_offset;
    DeviceArray<uint8_t> seq_mode, forced, flags;  // flags, forced: [L][rows][n_kv]
    DeviceArray<float*> q_prev, q_now;             // [L][rows]
    DeviceArray<cuda::BoundaryJob> boundary_jobs;
    DeviceArray<cuda::GatherJob> jobs;             // [2][L][capacity]: sync, background
    DeviceArray<int32_t> n_jobs;                   // [2][L]
    int64_t job_capacity = 0;
    DeviceArray<float> scores_main, scores_side, q_side;  // q_side: [L][rows][n_head][head_dim]
    DeviceArray<unsigned long long> counters;      // [L][4] flags, then [2][L][n_kv] recalled
    DeviceArray<float> mass, mass_scratch;
    DeviceArray<int32_t> mass_seq, mass_tokens;

    // activations; q, k and v are consecutive parts of qkv_rows ([n][q_dim], then [n][row] twice), so that
    // for one row they are the [q | k | v] row of the fused projection (ensure_activations sets them);
    // gate and up likewise of gate_up_rows.
    struct ActivationPart {
        float* p = nullptr;
        float* get() const { return p; }
    };
    DeviceArray<float> qkv_rows;
    ActivationPart q, k, v;
    DeviceArray<float> gate_up_rows;  // gate ([n][n_ff]) then up: one row's [gate | up] is the fused product's row
    ActivationPart gate, up;
    // The GEMV rows of the fused products, interleaved as they come out: [n][q | k | v] (decode's
    // qkv_for_append) and silu(gate) * up of the [n][gate | up] rows in gate_up_rows.
    DeviceArray<float> qkv_fused, ffn_act;
    DeviceArray<float> x, h, attn, proj, logits, partial, last_q;
    DeviceArray<int32_t> split_counters;  // --attn-fused-combine: [max_batch][n_kv], zero between launches
    DeviceArray<uint16_t> scratch_bf16;  // GEMM inputs rounded to bf16 (bf16 weights only)
    DeviceArray<uint8_t> hist_k, hist_v;  // a prefill's K/V as stored
    DeviceArray<float> prefill_k, prefill_v, prefill_scores;  // prefill attention's fp32 K/V and scores
    DeviceArray<int32_t> slot_map;  // install: slot of each prefill page
    // The prompt being prefilled in chunks (begin_prompt): its K/V of every layer, [L][n_prompt][row]
    // as stored, until its last chunk installs it; seq -1 when none.
    struct PromptStage {
        int32_t seq = -1;
        int64_t n_prompt = 0;
        DeviceArray<uint8_t> k, v;
    } stage;
    bool fail_next_prefill_allocation = false;  // a planted fault (fail_next_prefill_allocation())
    // forward_top: while top_k > 0, output_logits returns the rows' k best (values in its `out`,
    // ids in *top_ids) instead of the logits.
    int32_t top_k = 0;
    std::vector<int32_t>* top_ids = nullptr;
    DeviceArray<float> top_scratch_values, top_values;
    DeviceArray<int32_t> top_scratch_ids, top_ids_device;

    struct Seq {
        bool live = false;
        int64_t n_tokens = 0, n_queries = 0;
        bool forced = false;
    };
    std::vector<Seq> seqs;
    std::vector<int32_t> last_decode_rows;  // the sequences of the last decode step, in row order
    std::vector<RowPlan> last_plan;         // the last decode step's host plan, in row order
    int64_t decode_steps = 0, sequence_steps = 0;
    std::vector<int64_t> forced_pairs;
    std::vector<float> mass_recall;
    std::mt19937_64 force_rng{1234};

    bool timing = false, timing_step = false;
    std::vector<cuda::Event> marks;  // [L][4]
    double select_ms = 0, recall_wait_ms = 0, attention_ms = 0;
    // Host time of the decode steps from their start until every launch of the step was issued
    // (finish_output sets issued_at before the copies to pageable memory that wait for the stream).
    double host_issue_ms = 0;
    std::chrono::steady_clock::time_point issued_at;
    // Gather (or per-copy + scatter) kernel times, [2 step parity][L][2 kind][start, end]; an entry
    // is read once its end event has completed, at the latest before it is recorded again.
    std::vector<cuda::Event> gather_marks;
    std::vector<uint8_t> gather_marked;  // [2][L][2]
    double gather_ms[2] = {0, 0};        // synchronous, background
    void collect_gather_times(bool wait);

    // Per-copy recall (ArkVale's way): the job list comes to the host, one cudaMemcpyAsync per
    // block into `staging`, then the gather kernel in scatter mode. dma on the synchronous paths:
    // the same with one cudaMemcpyBatchAsync per MiB of blocks.
    bool per_copy = false, dma = false;
    DeviceArray<uint8_t> staging;
    cuda::PinnedArray<int32_t> host_count;
    cuda::PinnedArray<cuda::GatherJob> host_jobs;  // job_capacity entries
    std::vector<const uint8_t*> host_chunks;
    std::vector<void*> batch_dst[2];       // cudaMemcpyBatchAsync arguments: [0] main thread, [1] worker
    std::vector<const void*> batch_src[2];
    std::vector<size_t> batch_size[2];
    void batch_copy(const cuda::GatherJob* job_list, int32_t count, int64_t il, uint8_t* to, int who, cudaStream_t s);

    // dma background recall (FreeKV): the worker and what it alone touches while tasks run.
    cuda::Stream copy;
    int device = 0;                            // the engine's device, made current on the worker thread
    std::vector<cuda::Event> sel_done;         // [L] side stream: the background plan is on the host
    DeviceArray<uint8_t> bg_staging;
    cuda::PinnedArray<int32_t> host_bg_count;  // [L]
    cuda::PinnedArray<cuda::GatherJob> host_bg_jobs;  // [L][job_capacity]
    std::vector<cuda::Event> dma_marks;        // [2 step parity][L][start, end]
    std::vector<uint8_t> dma_marked;           // [2][L]
    double dma_ms = 0;                         // copies + scatter device time (read after drain)
    std::unique_ptr<RecallWorker> worker;      // declared last of these: destroyed (joined) first
    void dma_background(int64_t il, int64_t step, bool timed, cuda::GatherArgs ga);
    void wait_background(int64_t il);          // main stream waits for bg_done[il] of bg_step[il]

    // --corr-sync host: the layer's flags (1: re-select now) come to the host first.
    cuda::PinnedArray<uint8_t> host_flags;  // [max_batch][n_kv]
    std::vector<cuda::Event> flags_ready;   // one event when used

    // --cuda-graphs: the decode step's launches (embedding to the LM head and top-k) as one CUDA
    // graph, captured per launch shape (the key: rows, split-K, list length, step parity, k, output
    // rows and every buffer the launches name) after one direct run of that shape, and replayed;
    // only for steps with no selection, boundary, placement, mass recall or timing (budget-only,
    // full, streaming between page boundaries). The most recent kMaxStepGraphs are kept.
    struct StepGraph {
        std::vector<int64_t> key;
        cudaGraphExec_t exec = nullptr;
        StepGraph() = default;
        StepGraph(const StepGraph&) = delete;
        StepGraph& operator=(const StepGraph&) = delete;
        ~StepGraph() {
            if (exec != nullptr) cudaGraphExecDestroy(exec);
        }
    };
    static constexpr size_t kMaxStepGraphs = 8;
    std::deque<std::unique_ptr<StepGraph>> step_graphs;
    int64_t attention_wave = 0;  // the decode attention's blocks per full wave on this device (0: not yet asked)
    std::deque<std::vector<int64_t>> step_shapes_seen;  // run once directly, capture on the next
    int64_t graph_steps = 0;                            // steps replayed from a graph
    void run_step_launches(const std::vector<int64_t>& key, const std::function<void()>& launch);

    const GpuWeights::Impl& w() const { return weights->impl(); }
    int64_t row() const { return g.row(); }
    int64_t kv_bytes(int64_t elems) const { return elems * g.elem_bytes; }
    uint8_t* layer_cache(int64_t il) const { return cache.get() + kv_bytes(il * g.layer_cache_elems()); }
    uint8_t* layer_summaries(int64_t il) const { return summaries.get() + kv_bytes(il * g.layer_summary_elems()); }
    int32_t* layer_page_of_slot(int64_t il) const { return page_of_slot.get() + il * max_batch * c.n_head_kv * n_slots; }
    int32_t* layer_slot_of_page(int64_t il) const { return slot_of_page.get() + il * max_batch * c.n_head_kv * max_pages; }
    float* ring(int64_t il, int64_t seq, int64_t parity) const {
        return qring.get() + ((il * max_batch + seq) * 2 + parity) * c.n_head * c.head_dim;
    }
    bool sparse(int64_t n_pages) const { return !dense_only && budget.is_sparse(n_pages); }

    // attn_in_scratch: the attention output is already bf16 in scratch_bf16 (the flash prefill wrote
    // it there; only where bf16_gemm_rows(n)), not fp32 in attn. gemm_sms_after_gate >= 0: cuBLAS's
    // SM target from the up projection on (a prefill lowers it for the products that run beside an
    // install); -1 leaves it as it is.
    // attn_bf16_too: besides the fp32 output in attn, scratch_bf16 holds its bf16 (the decode attention wrote both).
    void mlp_and_attention_out(int64_t il, int64_t n, bool attn_in_scratch = false, int gemm_sms_after_gate = -1,
                               bool attn_bf16_too = false);
    // Where a decode-sized forward's activations also go in bf16 beside their fp32 (scratch_bf16), for
    // a GEMV through cuBLAS; nullptr for f32 engines, whose products take fp32 inputs.
    uint16_t* gemv_input_bf16() const;
    // Tensor parallelism: x[0, n) summed over the ranks (nothing for the whole model); whether this
    // rank adds its row-parallel products (o, down) into the residual (rank 0) or writes them (the
    // others), so that the sum adds the residual once.
    void sum_over_ranks(float* data, int64_t n);
    bool adds_residual() const { return tp.peers == nullptr || tp.rank == 0; }
    // rope false: the caller rotates q and k (decode does it with the append, cuda::rope_append).
    void qkv(int64_t il, int64_t n, bool rope = true);
    // Decode's q, k and v unrotated, for cuda::rope_append: with the fused weight on the GEMV path, one
    // product whose rows land in qkv_fused (returned, RopeAppendArgs::qkv); else qkv(il, n, false) and nullptr.
    const float* qkv_for_append(int64_t il, int64_t n);
    // beside: the page install runs on `side` (see prefill_installed); otherwise all on main.
    void install_layer(int64_t il, int32_t seq, int64_t n_tokens, const float* q_last, const void* k_hist, const void* v_hist,
                       bool beside = false);
    bool can_chunk() const;
    void drop_stage();
    bool bf16_gemm_rows(int64_t n) const;
    void prefill(std::span<const int32_t> tokens, const SequenceSpan& span, std::span<const int64_t> out_rows,
                 std::vector<float>& logits);
    void decode(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans, std::span<const int64_t> out_rows,
                std::vector<float>& logits);
    // The logits (or, while top_k > 0, their device top-k) of the listed rows: prepare_output sizes
    // the buffers (no device work), launch_output only launches (capturable into a graph),
    // finish_output copies to the host and waits; output_logits is the three.
    void output_logits(std::span<const int64_t> out_rows, std::vector<float>& logits);
    void prepare_output(int64_t n_out);
    void launch_output(std::span<const int64_t> out_rows);
    void finish_output(int64_t n_out, std::vector<float>& logits);
    void select_and_gather(int64_t il, int32_t n_rows, const float* q_rows, const int32_t* n_pages_rows, const uint8_t* flag_rows,
                           uint8_t want, int kind, cudaStream_t s);
    const uint8_t* host_block(const cuda::GatherJob& job, int64_t il) const;  // a block in the pinned store
    void ensure_activations(int64_t n);
    std::vector<int32_t> prefill_slots(int64_t n_tokens) const;
};

}  // namespace freekv::gpu
