// gpu_engine.cu: see gpu_engine.h. One main stream runs the model and the critical path of each
// layer (correction test, corrective selection + gather, attention); FreeKV's speculative work of
// layer l (selection of the unflagged heads with this step's query, then their gather) runs on a
// side stream after event attn_done[l] and signals bg_done[l], which layer l of the next step
// waits for. The host synchronizes once per step, when the logits come back. With `--recall-impl
// dma` the background blocks go through the copy engines instead of the gather kernel: the side
// stream brings the job list to pinned host memory and records sel_done[l], a worker thread
// (recall_worker.h) waits for it, issues the batched copies and the scatter on the copy stream and
// records bg_done[l] there; the main thread waits for the worker's ticket before it waits on
// bg_done[l].
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <random>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_handles.cuh"
#include "backend/cuda/device_array.cuh"
#include "backend/cuda/gather_pages.cuh"
#include "backend/cuda/kv_kernels.cuh"
#include "backend/cuda/ops_cuda.cuh"
#include "backend/cuda/page_boundary.cuh"
#include "backend/cuda/pinned_store.cuh"
#include "backend/cuda/prefill_attention.cuh"
#include "backend/cuda/select_pages.cuh"
#include "backend/cuda/top_k.cuh"
#include "core/dtype.h"
#include "core/log.h"
#include "gpu/gpu_engine.h"
#include "gpu/recall_worker.h"

namespace freekv::gpu {

using cuda::DeviceArray;

namespace {

size_t sz(int64_t n) { return static_cast<size_t>(n); }

// A weight on the device in the engine's dtype: bf16, or fp32 (--gpu-dtype f32).
struct DeviceWeight {
    DeviceArray<uint16_t> bf16;
    DeviceArray<float> f32;
    cuda::WeightRef ref() const {
        return f32.size() > 0 ? cuda::WeightRef{f32.get(), true} : cuda::WeightRef{bf16.get(), false};
    }
};

void upload_weight(const WeightView& w, bool as_f32, DeviceWeight& out, int64_t& bytes) {
    const int64_t n = w.numel();
    if (!as_f32 && w.dtype == DType::kBF16) {
        out.bf16.upload(static_cast<const uint16_t*>(w.data), n);  // pageable source: copied before the call returns
        bytes += n * 2;
        return;
    }
    std::vector<float> f(sz(n));
    for (int64_t r = 0; r < w.rows(); ++r) convert_to_f32(w.dtype, w.row(r), f.data() + r * w.cols(), w.cols());
    if (as_f32) {
        out.f32.upload(f.data(), n);
        bytes += n * 4;
        return;
    }
    std::vector<uint16_t> host(sz(n));
    for (int64_t i = 0; i < n; ++i) host[sz(i)] = f32_to_bf16(f[sz(i)]);
    out.bf16.upload(host.data(), n);
    bytes += n * 2;
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i < n) x[i] += y[i];
}

void add_inplace(float* x, const float* y, int64_t n, cudaStream_t s) {
    add_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, s>>>(x, y, n);
    FREEKV_CUDA_CHECK(cudaGetLastError());
}

// Token ranges per split-K block: about eight blocks of four warps per multiprocessor of the H100
// (132), so that enough K/V loads are in flight to cover HBM latency, at least
// FREEKV_ATTN_MIN_SPLIT_TOKENS tokens each (default 32 = 4 warps x 4 tokens in flight x 2 rounds:
// a budget-sized list of 2048 tokens then makes 64 splits; 32 measured best of 16, 32 and 64 for the
// budget-only floor, 1.19 -> 1.08 ms of attention per step at batch 1, and equal for full KV), at
// most 256 splits (the combine kernel's limit).
int32_t split_for(int64_t n_rows_heads, int64_t max_tokens) {
    static const int64_t min_tokens = [] {
        const char* env = std::getenv("FREEKV_ATTN_MIN_SPLIT_TOKENS");
        return env != nullptr ? std::clamp<int64_t>(std::atoll(env), 16, 4096) : int64_t{32};
    }();
    const int64_t want = std::max<int64_t>(1, 1056 / std::max<int64_t>(1, n_rows_heads));
    return static_cast<int32_t>(std::clamp<int64_t>(std::min(want, (max_tokens + min_tokens - 1) / min_tokens), 1, 256));
}

// Thread blocks of the synchronous gather (corrective and non-speculative recall, on the critical
// path): 32 by default; FREEKV_SYNC_GATHER_CTAS (1..528) overrides it, for measurement.
int32_t sync_gather_ctas() {
    static const int32_t ctas = [] {
        const char* env = std::getenv("FREEKV_SYNC_GATHER_CTAS");
        return env != nullptr ? static_cast<int32_t>(std::clamp(std::atoi(env), 1, 528)) : 32;
    }();
    return ctas;
}

// Thread blocks of the background gather: 12 by default (bench_recall_overlap, session 7: each
// block keeps ~16 KiB of host reads in flight, 10-12 blocks reach ~50 GB/s alone, and more only
// slow the model's GEMMs beside them); FREEKV_BG_GATHER_CTAS (1..132) overrides it.
int32_t background_gather_ctas() {
    static const int32_t ctas = [] {
        const char* env = std::getenv("FREEKV_BG_GATHER_CTAS");
        return env != nullptr ? static_cast<int32_t>(std::clamp(std::atoi(env), 1, 132)) : 12;
    }();
    return ctas;
}

// A measurement switch, never for real use: FREEKV_DIAG_BACKGROUND=select runs FreeKV's background
// selection but not its gather (the maps then name pages that were never copied), =none skips
// the background work altogether. Attention reads wrong pages either way; only the timing of
// what is left means anything. Returns 0 (off), 1 (select only) or 2 (none).
int diag_background() {
    static const int diag = [] {
        const char* env = std::getenv("FREEKV_DIAG_BACKGROUND");
        if (env == nullptr) return 0;
        const std::string v(env);
        FREEKV_CHECK(v == "select" || v == "none", "FREEKV_DIAG_BACKGROUND={}: use select or none, or unset it", v);
        const int d = v == "select" ? 1 : 2;
        FREEKV_LOG_WARN("FREEKV_DIAG_BACKGROUND={}: FreeKV's background recall is cut short; outputs are wrong, timings are diagnostic", env);
        return d;
    }();
    return diag;
}

// Multiprocessors left to cuBLAS while FreeKV's background gather runs: all but one per gather
// block, so that the scheduler can place a one-wave GEMM beside the gather instead of sharing SMs
// with it. FREEKV_GEMM_SM_RESERVE=0 gives cuBLAS every SM (for measuring the difference).
int gemm_sms_beside_gather() {
    static const int sms = [] {
        const char* env = std::getenv("FREEKV_GEMM_SM_RESERVE");
        if (env != nullptr && std::atoi(env) == 0) return 0;
        int dev = 0, count = 0;
        FREEKV_CUDA_CHECK(cudaGetDevice(&dev));
        FREEKV_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev));
        return std::max(1, count - background_gather_ctas());
    }();
    return sms;
}

}  // namespace

// ---------------------------------------------------------------- weights

struct GpuWeights::Impl {
    struct Layer {
        DeviceWeight attn_norm, wq, wk, wv, wo, bq, bk, bv, ffn_norm, w_gate, w_up, w_down;
    };
    std::vector<std::unique_ptr<Layer>> layers;
    DeviceWeight token_embd, output_norm, output;
    DeviceArray<float> inv_freq;
};

GpuWeights::GpuWeights(const ModelConfig& config, const LlamaWeights& w, GpuDtype dtype)
    : config_(config), dtype_(dtype), impl_(std::make_unique<Impl>()) {
    std::string why;
    FREEKV_CHECK(gpu_available(&why), "no CUDA device: {}; use --device cpu", why);
    Impl& m = *impl_;
    const bool f32 = dtype == GpuDtype::kF32;
    upload_weight(w.token_embd, f32, m.token_embd, bytes_);
    upload_weight(w.output_norm, f32, m.output_norm, bytes_);
    upload_weight(w.output, f32, m.output, bytes_);
    for (const LlamaLayerWeights& lw : w.layers) {
        auto l = std::make_unique<Impl::Layer>();
        upload_weight(lw.attn_norm, f32, l->attn_norm, bytes_);
        upload_weight(lw.wq, f32, l->wq, bytes_);
        upload_weight(lw.wk, f32, l->wk, bytes_);
        upload_weight(lw.wv, f32, l->wv, bytes_);
        upload_weight(lw.wo, f32, l->wo, bytes_);
        if (config.qkv_bias) {
            upload_weight(lw.bq, f32, l->bq, bytes_);
            upload_weight(lw.bk, f32, l->bk, bytes_);
            upload_weight(lw.bv, f32, l->bv, bytes_);
        }
        upload_weight(lw.ffn_norm, f32, l->ffn_norm, bytes_);
        upload_weight(lw.w_gate, f32, l->w_gate, bytes_);
        upload_weight(lw.w_up, f32, l->w_up, bytes_);
        upload_weight(lw.w_down, f32, l->w_down, bytes_);
        m.layers.push_back(std::move(l));
    }
    const auto inv = config.rope_inv_freq();
    m.inv_freq.upload(inv.data(), static_cast<int64_t>(inv.size()));
    FREEKV_CUDA_CHECK(cudaDeviceSynchronize());
}

GpuWeights::~GpuWeights() = default;

DeviceMemory device_memory() {
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) {
        (void)cudaGetLastError();
        return {};
    }
    return {static_cast<int64_t>(free), static_cast<int64_t>(total)};
}

bool gpu_available(std::string* why) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        if (why) *why = e != cudaSuccess ? std::string(cudaGetErrorString(e)) : "no CUDA device";
        (void)cudaGetLastError();
        return false;
    }
    return true;
}

// ---------------------------------------------------------------- engine state

struct GpuEngine::Impl {
    std::shared_ptr<const GpuWeights> weights;
    ModelConfig c;
    KvModeConfig mode;
    KvBudget budget;
    bool dense_only = false;   // full: every page in its own slot, no store
    bool selects = false, speculative = false, offloads = false;
    int64_t max_batch = 0, max_tokens = 0, max_pages = 0, n_slots = 0;
    cuda::KvGeometry g;

    cuda::Stream main, side;
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

    // activations
    DeviceArray<float> x, h, q, k, v, attn, proj, gate, up, logits, partial, last_q;
    DeviceArray<uint16_t> scratch_bf16;  // GEMM inputs rounded to bf16 (bf16 weights only)
    DeviceArray<uint8_t> hist_k, hist_v;  // a prefill's K/V as stored
    DeviceArray<float> prefill_k, prefill_v, prefill_scores;  // prefill attention's fp32 K/V and scores
    DeviceArray<int32_t> slot_map;  // install: slot of each prefill page
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
    int64_t decode_steps = 0, sequence_steps = 0;
    std::vector<int64_t> forced_pairs;
    std::vector<float> mass_recall;
    std::mt19937_64 force_rng{1234};

    bool timing = false, timing_step = false;
    std::vector<cuda::Event> marks;  // [L][4]
    double select_ms = 0, recall_wait_ms = 0, attention_ms = 0;
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

    void mlp_and_attention_out(int64_t il, int64_t n);
    void qkv(int64_t il, int64_t n);
    void install_layer(int64_t il, int32_t seq, int64_t n_tokens, const float* q_last);
    void prefill(std::span<const int32_t> tokens, const SequenceSpan& span, std::span<const int64_t> out_rows,
                 std::vector<float>& logits);
    void decode(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans, std::span<const int64_t> out_rows,
                std::vector<float>& logits);
    void output_logits(std::span<const int64_t> out_rows, std::vector<float>& logits);
    void select_and_gather(int64_t il, int32_t n_rows, const float* q_rows, const int32_t* n_pages_rows, const uint8_t* flag_rows,
                           uint8_t want, int kind, cudaStream_t s);
    const uint8_t* host_block(const cuda::GatherJob& job, int64_t il) const;  // a block in the pinned store
    void ensure_activations(int64_t n);
    std::vector<int32_t> prefill_slots(int64_t n_tokens) const;
};

GpuEngine::GpuEngine(std::shared_ptr<const GpuWeights> weights, const KvModeConfig& mode, int64_t max_batch, int64_t max_tokens)
    : impl_(std::make_unique<Impl>()) {
    Impl& m = *impl_;
    m.weights = std::move(weights);
    m.c = m.weights->config();
    m.mode = mode;
    const ModelConfig& c = m.c;
    FREEKV_CHECK(max_batch >= 1 && max_tokens >= 1, "GPU engine: batch {} and context {} must be positive", max_batch, max_tokens);
    m.max_batch = max_batch;
    m.max_tokens = max_tokens;
    m.dense_only = mode.mode == KvMode::kFull;
    m.budget = m.dense_only ? KvBudget{} : mode.make_budget();
    const int64_t p = m.dense_only ? mode.page_size : m.budget.page_size;
    m.max_pages = (max_tokens + p - 1) / p;
    m.n_slots = m.dense_only ? m.max_pages : m.budget.n_budget_page;
    m.selects = mode.mode == KvMode::kFreekv || mode.mode == KvMode::kArkvale || mode.mode == KvMode::kQuest;
    m.speculative = mode.mode == KvMode::kFreekv && mode.spec_retrieval;
    m.offloads = !m.dense_only;
    m.g = {static_cast<int32_t>(c.n_layer), static_cast<int32_t>(max_batch), static_cast<int32_t>(m.n_slots),
           static_cast<int32_t>(m.max_pages), static_cast<int32_t>(p), static_cast<int32_t>(c.n_head),
           static_cast<int32_t>(c.n_head_kv), static_cast<int32_t>(c.head_dim),
           m.weights->dtype() == GpuDtype::kF32 ? 4 : 2};
    FREEKV_CHECK(c.head_dim % 32 == 0 && c.head_dim <= 128, "GPU engine: head_dim {} must be 32, 64, 96 or 128", c.head_dim);

    // The side stream's speculative work yields to the critical path: the scheduler dispatches the
    // main stream's pending blocks first.
    int least = 0, greatest = 0;
    FREEKV_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    m.main = cuda::Stream(greatest);
    m.side = cuda::Stream(least);
    for (int64_t il = 0; il < c.n_layer; ++il) {
        m.attn_done.emplace_back(false);
        m.bg_done.emplace_back(false);
    }
    m.bg_pending.assign(sz(c.n_layer), false);
    m.bg_step.assign(sz(c.n_layer), -1);
    for (int64_t i = 0; i < c.n_layer * 4; ++i) m.marks.emplace_back(true);
    for (int64_t i = 0; i < 2 * c.n_layer * 2 * 2; ++i) m.gather_marks.emplace_back(true);
    m.gather_marked.assign(sz(2 * c.n_layer * 2), 0);

    m.cache.resize(m.kv_bytes(c.n_layer * m.g.layer_cache_elems()));
    m.qring.resize(c.n_layer * max_batch * 2 * c.n_head * c.head_dim);
    if (m.offloads) {
        m.summaries.resize(m.kv_bytes(c.n_layer * m.g.layer_summary_elems()));
        const int64_t map_slots = c.n_layer * max_batch * c.n_head_kv * m.n_slots;
        const int64_t map_pages = c.n_layer * max_batch * c.n_head_kv * m.max_pages;
        m.page_of_slot.resize(map_slots);
        m.slot_of_page.resize(map_pages);
        FREEKV_CUDA_CHECK(cudaMemsetAsync(m.page_of_slot.get(), 0xff, sz(map_slots) * 4, m.main));
        FREEKV_CUDA_CHECK(cudaMemsetAsync(m.slot_of_page.get(), 0xff, sz(map_pages) * 4, m.main));
        // CPU store: batch entry b owns CPU pages [b * max_pages, (b + 1) * max_pages).
        const int64_t page_bytes = m.kv_bytes(m.g.cpu_page_elems()), n_cpu_pages = max_batch * m.max_pages;
        std::vector<void*> chunks;
        if (mode.mode == KvMode::kQuest) {
            m.device_store.resize(n_cpu_pages * page_bytes);
            m.pages_per_chunk = static_cast<int32_t>(n_cpu_pages);
            chunks.push_back(m.device_store.get());
        } else {
            m.pinned = std::make_unique<cuda::PinnedStore>(n_cpu_pages * page_bytes, page_bytes);
            m.pages_per_chunk = static_cast<int32_t>(m.pinned->chunk_bytes() / page_bytes);
            for (void* d : m.pinned->device_chunks()) chunks.push_back(d);
            for (int64_t i = 0; i < m.pinned->n_chunks(); ++i) m.host_chunks.push_back(static_cast<const uint8_t*>(m.pinned->host_chunk(i)));
        }
        m.chunk_table.upload(chunks.data(), static_cast<int64_t>(chunks.size()), m.main);
        std::vector<int32_t> cpu_pages(sz(n_cpu_pages));
        std::iota(cpu_pages.begin(), cpu_pages.end(), 0);
        m.cpu_page_of.upload(cpu_pages.data(), n_cpu_pages, m.main);
        m.job_capacity = max_batch * c.n_head_kv * std::max<int64_t>(m.budget.n_select, 1);
        m.jobs.resize(2 * c.n_layer * m.job_capacity);
        m.per_copy = mode.recall() == RecallImpl::kPerCopy && m.pinned != nullptr && m.selects;
        m.dma = mode.recall() == RecallImpl::kDma && m.pinned != nullptr && m.selects;
        if (m.per_copy || (m.dma && !m.speculative)) {
            m.staging.resize(m.kv_bytes(m.job_capacity * m.g.block_elems()));
            m.host_count = cuda::PinnedArray<int32_t>(1);
            m.host_jobs = cuda::PinnedArray<cuda::GatherJob>(m.job_capacity);
        }
        if (m.speculative && mode.corr_sync_host) {
            m.host_flags = cuda::PinnedArray<uint8_t>(max_batch * c.n_head_kv);
            m.flags_ready.emplace_back(false);
        }
        if (m.dma && m.speculative) {
            m.bg_staging.resize(m.kv_bytes(m.job_capacity * m.g.block_elems()));
            m.host_bg_count = cuda::PinnedArray<int32_t>(c.n_layer);
            m.host_bg_jobs = cuda::PinnedArray<cuda::GatherJob>(c.n_layer * m.job_capacity);
            m.copy = cuda::Stream(least);
            for (int64_t il = 0; il < c.n_layer; ++il) m.sel_done.emplace_back(false);
            for (int64_t i = 0; i < 2 * c.n_layer * 2; ++i) m.dma_marks.emplace_back(true);
            m.dma_marked.assign(sz(2 * c.n_layer), 0);
            m.worker = std::make_unique<RecallWorker>(c.n_layer);
        }
        m.n_jobs.resize(2 * c.n_layer);
        m.scores_main.resize(max_batch * c.n_head * m.max_pages);
        m.scores_side.resize(max_batch * c.n_head * m.max_pages);
        m.q_side.resize(c.n_layer * max_batch * c.n_head * c.head_dim);
        m.flags.resize(c.n_layer * max_batch * c.n_head_kv);
        m.forced.resize(c.n_layer * max_batch * c.n_head_kv);
    }
    const int64_t n_counters = c.n_layer * 4 + 2 * c.n_layer * c.n_head_kv;
    m.counters.resize(n_counters);
    FREEKV_CUDA_CHECK(cudaMemsetAsync(m.counters.get(), 0, sz(n_counters) * 8, m.main));
    m.seqs.resize(sz(max_batch));
    m.forced_pairs.assign(sz(c.n_layer), 0);
    FREEKV_CUDA_CHECK(cudaStreamSynchronize(m.main));
}

GpuEngine::~GpuEngine() {
    if (!impl_) return;
    Impl& m = *impl_;
    m.worker.reset();  // finishes the issued tasks, then joins
    // Let queued work finish before the members (streams, events, pinned and device memory) go.
    cudaStreamSynchronize(m.side);
    cudaStreamSynchronize(m.main);
    if (m.copy.valid()) cudaStreamSynchronize(m.copy);
}

int32_t GpuEngine::add_sequence() {
    for (size_t b = 0; b < impl_->seqs.size(); ++b)
        if (!impl_->seqs[b].live) {
            impl_->seqs[b] = Impl::Seq{true, 0, 0, false};
            return static_cast<int32_t>(b);
        }
    FREEKV_FAIL("the GPU engine holds {} sequences already (its batch size)", impl_->max_batch);
}

void GpuEngine::remove_sequence(int32_t seq) {
    Impl& m = *impl_;
    FREEKV_CHECK(seq >= 0 && seq < m.max_batch && m.seqs[sz(seq)].live, "remove_sequence: sequence {} was not added", seq);
    // Background work of the last step may still write this slot's maps on the side stream; the
    // next user of the slot starts with a prefill, which waits for all of it before installing.
    m.seqs[sz(seq)] = Impl::Seq{};
}

int64_t GpuEngine::n_tokens(int32_t seq) const { return impl_->seqs.at(sz(seq)).n_tokens; }

void GpuEngine::set_timing(bool on) { impl_->timing = on; }

int64_t GpuEngine::device_bytes() const {
    const Impl& m = *impl_;
    int64_t total = m.cache.bytes() + m.summaries.bytes() + m.page_of_slot.bytes() + m.slot_of_page.bytes() + m.qring.bytes() +
                    m.device_store.bytes() + m.jobs.bytes() + m.scores_main.bytes() + m.scores_side.bytes() + m.q_side.bytes();
    for (auto* a : {&m.x, &m.h, &m.q, &m.k, &m.v, &m.attn, &m.proj, &m.gate, &m.up, &m.logits, &m.partial}) total += a->bytes();
    return total + m.scratch_bf16.bytes() + m.hist_k.bytes() + m.hist_v.bytes() + m.staging.bytes() + m.bg_staging.bytes();
}

int64_t GpuEngine::host_bytes() const {
    const Impl& m = *impl_;
    return m.pinned ? m.pinned->n_chunks() * m.pinned->chunk_bytes() : 0;
}

// ---------------------------------------------------------------- model pieces

void GpuEngine::Impl::ensure_activations(int64_t n) {
    const int64_t q_dim = c.n_head * c.head_dim;
    for (auto* a : {&x, &h, &proj}) a->resize(n * c.n_embd);
    for (auto* a : {&q, &attn}) a->resize(n * q_dim);
    for (auto* a : {&k, &v}) a->resize(n * row());
    for (auto* a : {&gate, &up}) a->resize(n * c.n_ff);
    scratch_bf16.resize(n * std::max({c.n_embd, q_dim, c.n_ff}));
}

void GpuEngine::Impl::qkv(int64_t il, int64_t n) {
    const auto& lw = *w().layers[sz(il)];
    const int64_t q_dim = c.n_head * c.head_dim;
    cuda::rms_norm(x.get(), n, c.n_embd, lw.attn_norm.ref(), c.rms_norm_eps, h.get(), main);
    cuda::matmul(h.get(), n, lw.wq.ref(), q_dim, c.n_embd, q.get(), lw.bq.ref(), scratch_bf16.get(), main);
    cuda::matmul(h.get(), n, lw.wk.ref(), row(), c.n_embd, k.get(), lw.bk.ref(), scratch_bf16.get(), main);
    cuda::matmul(h.get(), n, lw.wv.ref(), row(), c.n_embd, v.get(), lw.bv.ref(), scratch_bf16.get(), main);
    const bool neox = c.rope_style == RopeStyle::kNeox;
    cuda::rope(q.get(), n, c.n_head, c.head_dim, positions.get(), w().inv_freq.get(), neox, main);
    cuda::rope(k.get(), n, c.n_head_kv, c.head_dim, positions.get(), w().inv_freq.get(), neox, main);
}

void GpuEngine::Impl::mlp_and_attention_out(int64_t il, int64_t n) {
    const auto& lw = *w().layers[sz(il)];
    const int64_t q_dim = c.n_head * c.head_dim;
    cuda::matmul(attn.get(), n, lw.wo.ref(), c.n_embd, q_dim, proj.get(), {}, scratch_bf16.get(), main);
    add_inplace(x.get(), proj.get(), n * c.n_embd, main);
    cuda::rms_norm(x.get(), n, c.n_embd, lw.ffn_norm.ref(), c.rms_norm_eps, h.get(), main);
    cuda::matmul(h.get(), n, lw.w_gate.ref(), c.n_ff, c.n_embd, gate.get(), {}, scratch_bf16.get(), main);
    cuda::matmul(h.get(), n, lw.w_up.ref(), c.n_ff, c.n_embd, up.get(), {}, scratch_bf16.get(), main);
    cuda::silu_mul(gate.get(), up.get(), n * c.n_ff, main);
    cuda::matmul(gate.get(), n, lw.w_down.ref(), c.n_embd, c.n_ff, proj.get(), {}, scratch_bf16.get(), main);
    add_inplace(x.get(), proj.get(), n * c.n_embd, main);
}

void GpuEngine::Impl::output_logits(std::span<const int64_t> out_rows, std::vector<float>& out) {
    const auto n_out = static_cast<int64_t>(out_rows.size());
    out.resize(sz(n_out * c.n_vocab));
    if (n_out == 0) {
        FREEKV_CUDA_CHECK(cudaStreamSynchronize(main));
        return;
    }
    // Gather the wanted rows of x into proj, then norm and output head over them only.
    for (int64_t i = 0; i < n_out; ++i)
        FREEKV_CUDA_CHECK(cudaMemcpyAsync(proj.get() + i * c.n_embd, x.get() + out_rows[sz(i)] * c.n_embd,
                                          sz(c.n_embd) * 4, cudaMemcpyDeviceToDevice, main));
    h.resize(n_out * c.n_embd);
    cuda::rms_norm(proj.get(), n_out, c.n_embd, w().output_norm.ref(), c.rms_norm_eps, h.get(), main);
    logits.resize(n_out * c.n_vocab);
    scratch_bf16.resize(n_out * c.n_embd);
    cuda::matmul(h.get(), n_out, w().output.ref(), c.n_vocab, c.n_embd, logits.get(), {}, scratch_bf16.get(), main);
    if (top_k > 0) {
        const int64_t scratch = cuda::top_k_scratch_elems(static_cast<int32_t>(n_out), c.n_vocab, top_k);
        top_scratch_values.resize(scratch);
        top_scratch_ids.resize(scratch);
        top_values.resize(n_out * top_k);
        top_ids_device.resize(n_out * top_k);
        cuda::top_k(logits.get(), static_cast<int32_t>(n_out), c.n_vocab, top_k, top_scratch_values.get(), top_scratch_ids.get(),
                    top_ids_device.get(), top_values.get(), main);
        out.resize(sz(n_out * top_k));
        top_ids->resize(sz(n_out * top_k));
        FREEKV_CUDA_CHECK(cudaMemcpyAsync(out.data(), top_values.get(), out.size() * 4, cudaMemcpyDeviceToHost, main));
        FREEKV_CUDA_CHECK(cudaMemcpyAsync(top_ids->data(), top_ids_device.get(), out.size() * 4, cudaMemcpyDeviceToHost, main));
    } else {
        FREEKV_CUDA_CHECK(cudaMemcpyAsync(out.data(), logits.get(), out.size() * 4, cudaMemcpyDeviceToHost, main));
    }
    FREEKV_CUDA_CHECK(cudaStreamSynchronize(main));
}

// ---------------------------------------------------------------- selection + recall

// kind 0: synchronous (main stream, jobs list 0), 1: background (side stream, jobs list 1).
void GpuEngine::Impl::select_and_gather(int64_t il, int32_t n_rows, const float* q_rows, const int32_t* n_pages_rows,
                                        const uint8_t* flag_rows, uint8_t want, int kind, cudaStream_t s) {
    cuda::GatherJob* job_list = jobs.get() + (kind * c.n_layer + il) * job_capacity;
    int32_t* count = n_jobs.get() + kind * c.n_layer + il;
    cuda::SelectArgs a;
    a.batch_of = rows_batch->get();
    a.q = q_rows;
    a.summaries = layer_summaries(il);
    a.n_pages = n_pages_rows;
    a.flags = flag_rows;
    a.want_flag = want;
    a.page_of_slot = layer_page_of_slot(il);
    a.slot_of_page = layer_slot_of_page(il);
    a.jobs = job_list;
    a.n_jobs = count;
    a.scores = kind == 0 ? scores_main.get() : scores_side.get();
    a.n_seq = n_rows;
    a.n_head = static_cast<int32_t>(c.n_head);
    a.n_head_kv = static_cast<int32_t>(c.n_head_kv);
    a.head_dim = static_cast<int32_t>(c.head_dim);
    a.max_pages = static_cast<int32_t>(max_pages);
    a.n_sink_page = static_cast<int32_t>(budget.n_sink_page);
    a.n_recent_page = static_cast<int32_t>(budget.n_recent_page);
    a.n_select = static_cast<int32_t>(budget.n_select);
    a.n_slots = static_cast<int32_t>(n_slots);
    a.agg = static_cast<int32_t>(mode.aggregation());
    a.elem_bytes = g.elem_bytes;
    cuda::select_pages(a, s);
    if (kind == 1 && diag_background() == 1) return;
    cuda::GatherArgs ga;
    ga.cpu_chunks = chunk_table.get();
    ga.pages_per_chunk = pages_per_chunk;
    ga.cpu_page_of = cpu_page_of.get();
    ga.budget_cache = cache.get();
    ga.jobs = job_list;
    ga.n_jobs = count;
    ga.il = static_cast<int32_t>(il);
    ga.n_layer = static_cast<int32_t>(c.n_layer);
    ga.max_batch = static_cast<int32_t>(max_batch);
    ga.max_pages = static_cast<int32_t>(max_pages);
    ga.n_slots = static_cast<int32_t>(n_slots);
    ga.page_size = g.page_size;
    ga.n_head_kv = g.n_head_kv;
    ga.head_dim = g.head_dim;
    ga.elem_bytes = g.elem_bytes;
    // 12 blocks already reach the PCIe rate when alone (bench_recall_overlap); the background
    // gather keeps to that, since every byte it moves beside the model slows the model's GEMMs; the
    // synchronous one (on the critical path) takes 32 (64 and 128 measured no faster).
    ga.ctas = kind == 0 ? sync_gather_ctas() : background_gather_ctas();
    ga.per_head = counters.get() + c.n_layer * 4 + (kind * c.n_layer + il) * c.n_head_kv;
    if (kind == 1 && dma) {
        // The plan goes to pinned host memory; the worker copies once it is there (sel_done).
        FREEKV_CUDA_CHECK(cudaMemcpyAsync(host_bg_count.get() + il, count, sizeof(int32_t), cudaMemcpyDeviceToHost, s));
        FREEKV_CUDA_CHECK(cudaMemcpyAsync(host_bg_jobs.get() + il * job_capacity, job_list, sz(job_capacity) * sizeof(cuda::GatherJob),
                                          cudaMemcpyDeviceToHost, s));
        FREEKV_CUDA_CHECK(cudaEventRecord(sel_done[sz(il)], s));
        ga.ctas = 32;  // the scatter reads device memory
        const int64_t step = decode_steps;
        const bool timed = timing_step;
        worker->submit(il, step, [this, il, step, timed, ga] { dma_background(il, step, timed, ga); });
        return;
    }
    const size_t mark = sz(((decode_steps % 2) * c.n_layer + il) * 2 + kind);
    const bool timed = timing_step;
    if (timed) {
        if (gather_marked[mark]) {  // still unread from two steps ago
            FREEKV_CUDA_CHECK(cudaEventSynchronize(gather_marks[2 * mark + 1]));
            collect_gather_times(false);
        }
        FREEKV_CUDA_CHECK(cudaEventRecord(gather_marks[2 * mark], s));
    }
    if (kind == 0 && (per_copy || (dma && !speculative))) {
        // ArkVale: the host reads the plan, then copies block by block (pinned source, so each is
        // a DMA of one 2 * page_size * head_dim block), then one scatter into the slots. dma: the
        // same copies, batched. (FreeKV's corrective recall with dma stays the gather kernel: a
        // host round trip per layer would put the host on the critical path.)
        FREEKV_CUDA_CHECK(cudaMemcpyAsync(host_count.get(), count, sizeof(int32_t), cudaMemcpyDeviceToHost, s));
        FREEKV_CUDA_CHECK(cudaMemcpyAsync(host_jobs.get(), job_list, sz(job_capacity) * sizeof(cuda::GatherJob), cudaMemcpyDeviceToHost, s));
        FREEKV_CUDA_CHECK(cudaStreamSynchronize(s));
        if (dma) {
            batch_copy(host_jobs.get(), *host_count.get(), il, staging.get(), 0, s);
        } else {
            const int64_t block = kv_bytes(g.block_elems());
            for (int32_t j = 0; j < *host_count.get(); ++j)
                FREEKV_CUDA_CHECK(cudaMemcpyAsync(staging.get() + j * block, host_block(host_jobs.get()[j], il), sz(block),
                                                  cudaMemcpyHostToDevice, s));
        }
        ga.staging = staging.get();
    }
    const std::string err = cuda::gather_pages(ga, s);
    FREEKV_CHECK(err.empty(), "gather kernel: {}", err);
    if (timed) {
        FREEKV_CUDA_CHECK(cudaEventRecord(gather_marks[2 * mark + 1], s));
        gather_marked[mark] = 1;
    }
}

const uint8_t* GpuEngine::Impl::host_block(const cuda::GatherJob& job, int64_t il) const {
    const int64_t cpu_page = job.seq * max_pages + job.page;  // cpu_page_of is the identity
    return host_chunks[sz(cpu_page / pages_per_chunk)] +
           kv_bytes((cpu_page % pages_per_chunk) * g.cpu_page_elems() + (il * c.n_head_kv + job.ikv) * g.block_elems());
}

// The blocks of a job list into consecutive staging blocks, by the copy engines: one
// cudaMemcpyBatchAsync per MiB (bench_recall: 27 GB/s for 16 KiB blocks, against 5 GB/s for one
// cudaMemcpyAsync per block). `who` picks the argument arrays of the calling thread.
void GpuEngine::Impl::batch_copy(const cuda::GatherJob* job_list, int32_t count, int64_t il, uint8_t* to, int who,
                                 cudaStream_t s) {
    if (count <= 0) return;
    const int64_t block = kv_bytes(g.block_elems());
    auto& dst = batch_dst[who];
    auto& src = batch_src[who];
    auto& size = batch_size[who];
    dst.resize(sz(count));
    src.resize(sz(count));
    size.assign(sz(count), sz(block));
    for (int32_t j = 0; j < count; ++j) {
        dst[sz(j)] = to + j * block;
        src[sz(j)] = host_block(job_list[j], il);
    }
    cudaMemcpyAttributes attr{};
    attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    size_t attr_index = 0;
    const int32_t per_call = static_cast<int32_t>(std::max<int64_t>(1, (int64_t{1} << 20) / block));
    for (int32_t j = 0; j < count; j += per_call)
        FREEKV_CUDA_CHECK(cudaMemcpyBatchAsync(dst.data() + j, src.data() + j, size.data() + j,
                                               sz(std::min(per_call, count - j)), &attr, &attr_index, 1, s));
}

// Worker thread: the background recall of (step, il) by the copy engines once its plan is on the
// host, then the scatter into the slots, then bg_done[il], all on the copy stream.
void GpuEngine::Impl::dma_background(int64_t il, int64_t step, bool timed, cuda::GatherArgs ga) {
    FREEKV_CUDA_CHECK(cudaEventSynchronize(sel_done[sz(il)]));
    const int32_t count = host_bg_count.get()[il];
    const size_t mark = sz((step % 2) * c.n_layer + il);
    if (timed) {
        if (dma_marked[mark]) {  // from two steps ago: long finished
            FREEKV_CUDA_CHECK(cudaEventSynchronize(dma_marks[2 * mark + 1]));
            float ms = 0;
            FREEKV_CUDA_CHECK(cudaEventElapsedTime(&ms, dma_marks[2 * mark], dma_marks[2 * mark + 1]));
            dma_ms += ms;
        }
        FREEKV_CUDA_CHECK(cudaEventRecord(dma_marks[2 * mark], copy));
    }
    batch_copy(host_bg_jobs.get() + il * job_capacity, count, il, bg_staging.get(), 1, copy);
    ga.staging = bg_staging.get();
    const std::string err = cuda::gather_pages(ga, copy);
    FREEKV_CHECK(err.empty(), "scatter kernel: {}", err);
    if (timed) {
        FREEKV_CUDA_CHECK(cudaEventRecord(dma_marks[2 * mark + 1], copy));
        dma_marked[mark] = 1;
    }
    FREEKV_CUDA_CHECK(cudaEventRecord(bg_done[sz(il)], copy));
}

void GpuEngine::Impl::wait_background(int64_t il) {
    if (worker) worker->wait_issued(il, bg_step[sz(il)]);
    FREEKV_CUDA_CHECK(cudaStreamWaitEvent(main, bg_done[sz(il)]));
    bg_pending[sz(il)] = false;
}

// Adds the elapsed time of every recorded gather whose end event has completed (wait: all of
// them; the caller has synchronized both streams).
void GpuEngine::Impl::collect_gather_times(bool wait) {
    for (size_t i = 0; i < gather_marked.size(); ++i) {
        if (!gather_marked[i]) continue;
        if (!wait) {
            const cudaError_t e = cudaEventQuery(gather_marks[2 * i + 1]);
            if (e == cudaErrorNotReady) continue;
            FREEKV_CUDA_CHECK(e);
        }
        float ms = 0;
        FREEKV_CUDA_CHECK(cudaEventElapsedTime(&ms, gather_marks[2 * i], gather_marks[2 * i + 1]));
        gather_ms[i % 2] += ms;
        gather_marked[i] = 0;
    }
}

// ---------------------------------------------------------------- prefill

// Installs the history in hist_k/hist_v (n_tokens rows) of layer il for batch entry seq: summaries
// and offload of the complete pages, sink/window/current pages into their slots, and the middle
// slots (budget-only: the last k candidates; selecting modes: top-k for q_last).
void GpuEngine::Impl::install_layer(int64_t il, int32_t seq, int64_t n_tokens, const float* q_last) {
    const int64_t p = g.page_size, current = (n_tokens - 1) / p, n_pages = current + 1;
    const bool is_sparse = sparse(n_pages);
    if (offloads) {  // maps of (il, seq): nothing resident yet
        FREEKV_CUDA_CHECK(cudaMemsetAsync(layer_page_of_slot(il) + seq * c.n_head_kv * n_slots, 0xff,
                                          sz(c.n_head_kv * n_slots) * 4, main));
        FREEKV_CUDA_CHECK(cudaMemsetAsync(layer_slot_of_page(il) + seq * c.n_head_kv * max_pages, 0xff,
                                          sz(c.n_head_kv * max_pages) * 4, main));
    }
    cuda::InstallArgs a;
    a.hist_k = hist_k.get();
    a.hist_v = hist_v.get();
    a.n_tokens = static_cast<int32_t>(n_tokens);
    a.n_complete = static_cast<int32_t>(current);
    a.seq = seq;
    a.il = static_cast<int32_t>(il);
    a.slot_of_page = slot_map.get();
    a.layer_cache = layer_cache(il);
    a.layer_summaries = offloads ? layer_summaries(il) : nullptr;
    a.cuboid = mode.summary_kind() == SummaryKind::kCuboid;
    a.cpu_chunks = offloads ? chunk_table.get() : nullptr;
    a.pages_per_chunk = pages_per_chunk;
    a.cpu_page_of = cpu_page_of.get();
    cuda::install_pages(a, g, main);
    if (offloads && !is_sparse) {  // dense regime: complete middle-range pages are resident where they are
        std::vector<int32_t> items;
        for (int64_t page = budget.n_sink_page; page < std::min(current, budget.first_ring_slot()); ++page)
            items.insert(items.end(), {seq, static_cast<int32_t>(page), static_cast<int32_t>(page)});
        if (!items.empty()) {
            place_items.upload(items.data(), static_cast<int64_t>(items.size()), main);
            cuda::KvGeometry one = g;  // this layer only
            one.n_layer = 1;
            cuda::place_pages(place_items.get(), static_cast<int32_t>(items.size() / 3), one, layer_page_of_slot(il),
                              layer_slot_of_page(il), main);
        }
    }
    if (offloads && is_sparse && budget.n_select > 0) {
        if (mode.mode == KvMode::kBudgetOnly) {  // install_pages put the last k candidates in the middle slots
            std::vector<int32_t> items;
            const int64_t end = budget.end_candidate(n_pages);
            for (int64_t i = 0; i < budget.n_select; ++i)
                items.insert(items.end(), {seq, static_cast<int32_t>(end - budget.n_select + i),
                                           static_cast<int32_t>(budget.n_sink_page + i)});
            place_items.upload(items.data(), static_cast<int64_t>(items.size()), main);
            cuda::KvGeometry one = g;
            one.n_layer = 1;
            cuda::place_pages(place_items.get(), static_cast<int32_t>(budget.n_select), one, layer_page_of_slot(il),
                              layer_slot_of_page(il), main);
        } else if (selects) {  // first selection with the last prompt query, every head, middle slots empty
            const int32_t n_pages32 = static_cast<int32_t>(n_pages);
            sel_n_pages->upload(&n_pages32, 1, main);
            rows_batch->upload(&seq, 1, main);
            select_and_gather(il, 1, q_last, sel_n_pages->get(), nullptr, 1, 0, main);
        }
    }
    FREEKV_CUDA_CHECK(cudaMemcpyAsync(ring(il, seq, seqs[sz(seq)].n_queries % 2), q_last, sz(c.n_head * c.head_dim) * 4,
                                      cudaMemcpyDeviceToDevice, main));
}

void GpuEngine::Impl::prefill(std::span<const int32_t> tokens, const SequenceSpan& span, std::span<const int64_t> out_rows,
                              std::vector<float>& out) {
    const int64_t n = span.n_tok;
    const int32_t seq = span.seq;
    for (size_t il = 0; il < bg_pending.size(); ++il)  // no background work may still read shared buffers
        if (bg_pending[il]) wait_background(static_cast<int64_t>(il));
    cuda::set_gemm_sm_target(0);  // nothing runs beside the prefill
    ensure_activations(n);
    ids.upload(tokens.data(), n, main);
    std::vector<int32_t> pos(sz(n));
    std::iota(pos.begin(), pos.end(), 0);
    positions.upload(pos.data(), n, main);
    const std::vector<int32_t> slots = prefill_slots(n);
    slot_map.upload(slots.data(), static_cast<int64_t>(slots.size()), main);
    hist_k.resize(kv_bytes(n * row()));
    hist_v.resize(kv_bytes(n * row()));
    // Prefill attention: chunked GEMMs over the prompt's K/V as the cache stores them.
    cuda::PrefillAttentionArgs pa;
    pa.n = static_cast<int32_t>(n);
    pa.n_head = static_cast<int32_t>(c.n_head);
    pa.n_head_kv = static_cast<int32_t>(c.n_head_kv);
    pa.head_dim = static_cast<int32_t>(c.head_dim);
    pa.chunk = cuda::prefill_chunk(n, c.n_head_kv, int64_t{512} << 20);
    prefill_k.resize(n * row());
    prefill_v.resize(n * row());
    prefill_scores.resize(cuda::prefill_scores_floats(n, c.n_head_kv, pa.chunk));
    cuda::embedding(w().token_embd.ref(), ids.get(), n, c.n_embd, x.get(), main);
    for (int64_t il = 0; il < c.n_layer; ++il) {
        qkv(il, n);
        cuda::store_kv(k.get(), n * row(), hist_k.get(), g.elem_bytes, main, prefill_k.get());
        cuda::store_kv(v.get(), n * row(), hist_v.get(), g.elem_bytes, main, prefill_v.get());
        pa.q = q.get();
        pa.k = prefill_k.get();
        pa.v = prefill_v.get();
        pa.out = attn.get();
        pa.scores = prefill_scores.get();
        cuda::prefill_attention(pa, main);
        install_layer(il, seq, n, q.get() + (n - 1) * c.n_head * c.head_dim);
        mlp_and_attention_out(il, n);
    }
    output_logits(out_rows, out);
    for (auto* a : {&prefill_k, &prefill_v, &prefill_scores}) a->release();  // up to ~1.5 GiB at 128K
    Seq& s = seqs[sz(seq)];
    s.n_tokens = n;
    ++s.n_queries;
    s.forced = sparse((n + g.page_size - 1) / g.page_size);
}

// Host-side slot of each page of an n_tokens history right after prefill (-1: not in the cache).
std::vector<int32_t> GpuEngine::Impl::prefill_slots(int64_t n_tokens) const {
    const int64_t p = g.page_size, current = (n_tokens - 1) / p, n_pages = current + 1;
    std::vector<int32_t> slots(sz(n_pages), -1);
    if (!sparse(n_pages)) {
        std::iota(slots.begin(), slots.end(), 0);
        return slots;
    }
    const KvBudget& b = budget;
    for (int64_t page = 0; page < b.n_sink_page; ++page) slots[sz(page)] = static_cast<int32_t>(page);
    for (int64_t page = n_pages - b.n_recent_page; page < current; ++page) slots[sz(page)] = static_cast<int32_t>(b.ring_slot(page));
    slots[sz(current)] = static_cast<int32_t>(b.current_slot());
    if (mode.mode == KvMode::kBudgetOnly) {
        const int64_t end = b.end_candidate(n_pages);
        for (int64_t i = 0; i < b.n_select; ++i) slots[sz(end - b.n_select + i)] = static_cast<int32_t>(b.n_sink_page + i);
    }
    return slots;
}

void GpuEngine::fill_synthetic(int32_t seq, int64_t n_tokens, uint64_t seed) {
    Impl& m = *impl_;
    FREEKV_CHECK(m.seqs.at(sz(seq)).live && m.seqs[sz(seq)].n_tokens == 0, "fill_synthetic needs an empty sequence");
    FREEKV_CHECK(n_tokens >= 1 && n_tokens <= m.max_tokens, "fill_synthetic: {} tokens exceed the context {}", n_tokens,
                 m.max_tokens);
    m.hist_k.resize(m.kv_bytes(n_tokens * m.row()));
    m.hist_v.resize(m.kv_bytes(n_tokens * m.row()));
    m.last_q.resize(m.c.n_head * m.c.head_dim);
    const std::vector<int32_t> slots = m.prefill_slots(n_tokens);
    m.slot_map.upload(slots.data(), static_cast<int64_t>(slots.size()), m.main);
    for (int64_t il = 0; il < m.c.n_layer; ++il) {
        const uint64_t s = seed * 1000003ULL + static_cast<uint64_t>(il) * 3 + static_cast<uint64_t>(seq) * 7919;
        cuda::fill_random_kv(m.hist_k.get(), n_tokens * m.row(), s, m.g.elem_bytes, m.main);
        cuda::fill_random_kv(m.hist_v.get(), n_tokens * m.row(), s + 1, m.g.elem_bytes, m.main);
        cuda::fill_random_f32(m.last_q.get(), m.c.n_head * m.c.head_dim, s + 2, m.main);
        m.install_layer(il, seq, n_tokens, m.last_q.get());
    }
    FREEKV_CUDA_CHECK(cudaStreamSynchronize(m.main));
    Impl::Seq& st = m.seqs[sz(seq)];
    st.n_tokens = n_tokens;
    ++st.n_queries;
    st.forced = m.sparse((n_tokens + m.g.page_size - 1) / m.g.page_size);
}

// ---------------------------------------------------------------- decode

void GpuEngine::Impl::decode(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans,
                             std::span<const int64_t> out_rows, std::vector<float>& out) {
    const auto n = static_cast<int64_t>(spans.size());
    const int64_t p = g.page_size, n_kv = c.n_head_kv, L = c.n_layer;
    ensure_activations(n);
    ++decode_steps;
    sequence_steps += n;
    timing_step = timing;
    rows_batch = &rows_batch_buf[decode_steps % 2];
    sel_n_pages = &sel_n_pages_buf[decode_steps % 2];
    // Background work that read this step's buffers (two steps ago); all of it when the rows
    // changed (a sequence joined or left), since per-row scratch such as the flags is laid out
    // [layer][row] and a new row count would overlap the layers still being read.
    std::vector<int32_t> rows_now(sz(n));
    for (int64_t r = 0; r < n; ++r) rows_now[sz(r)] = spans[sz(r)].seq;
    const bool rows_changed = rows_now != last_decode_rows;
    last_decode_rows = std::move(rows_now);
    for (int64_t il = 0; il < L; ++il)
        if (bg_pending[sz(il)] && (rows_changed || bg_step[sz(il)] <= decode_steps - 2)) wait_background(il);
    // ---- host plan of the step ----
    std::vector<int32_t> pos(sz(n)), batch(sz(n)), att_n(sz(n)), att_last(sz(n)), sel_n(sz(n));
    std::vector<int64_t> append(sz(n));
    std::vector<uint8_t> modes(sz(n), 0);
    std::vector<cuda::BoundaryJob> boundary;
    std::vector<int32_t> places;
    int64_t max_list = 0, max_att_tokens = 0;
    bool any_select = false, any_test = false, any_mass = false;
    for (int64_t r = 0; r < n; ++r) {
        const SequenceSpan& span = spans[sz(r)];
        Seq& s = seqs[sz(span.seq)];
        const int64_t before = span.pos0, n_tok = before + 1, current = (n_tok - 1) / p, n_pages = current + 1;
        pos[sz(r)] = static_cast<int32_t>(before);
        batch[sz(r)] = span.seq;
        if (!dense_only && before % p == 0) {  // page `done` has just completed (design doc 3.10)
            const int64_t done = before / p - 1, last = budget.current_slot(), src = std::min(done, last);
            boundary.push_back({span.seq, static_cast<int32_t>(done), static_cast<int32_t>(src),
                                done >= last ? static_cast<int32_t>(budget.ring_slot(done)) : -1,
                                static_cast<int32_t>(span.seq * max_pages + done)});
            if (done < last && done >= budget.n_sink_page && done < budget.first_ring_slot())
                places.insert(places.end(), {span.seq, static_cast<int32_t>(done), static_cast<int32_t>(done)});
            if (done == last) s.forced = true;  // entering the sparse regime
        }
        const bool is_sparse = sparse(n_pages);
        const int64_t slot = is_sparse ? budget.current_slot() : current, fill = n_tok - current * p;
        append[sz(r)] = (span.seq * n_slots + slot) * g.slot_elems() + (fill - 1) * row();
        att_n[sz(r)] = static_cast<int32_t>(is_sparse ? n_slots : n_pages);
        att_last[sz(r)] = static_cast<int32_t>(fill);
        sel_n[sz(r)] = static_cast<int32_t>(n_pages);
        max_list = std::max<int64_t>(max_list, att_n[sz(r)]);
        max_att_tokens = std::max(max_att_tokens, (att_n[sz(r)] - 1) * p + fill);
        if (is_sparse && selects) {
            any_select = true;
            if (s.forced || !speculative) {
                modes[sz(r)] = 1;
                for (int64_t il = 0; il < L; ++il) ++forced_pairs[sz(il)];
            } else {
                modes[sz(r)] = mode.force_corr_rate ? 3 : (mode.correction_on() ? 2 : 4);
                any_test = true;
            }
        }
        any_mass = any_mass || (is_sparse && mode.attention_mass_recall);
    }
    // mode 4 (speculative, correction off): never flag, every head goes to the background.
    // The flags kernel treats it like 3 with an all-zero forced list.
    std::vector<uint8_t> forced_host;
    if (any_test) {
        forced_host.assign(sz(L * n * n_kv), 0);
        for (int64_t il = 0; il < L; ++il)
            for (int64_t r = 0; r < n; ++r) {
                if (modes[sz(r)] != 3) continue;
                for (int64_t h = 0; h < n_kv; ++h)
                    forced_host[sz((il * n + r) * n_kv + h)] =
                        std::uniform_real_distribution<float>(0.0f, 1.0f)(force_rng) < *mode.force_corr_rate ? 1 : 0;
            }
        for (auto& md : modes)
            if (md == 4) md = 3;
        forced.upload(forced_host.data(), static_cast<int64_t>(forced_host.size()), main);
    }
    // Layers where the host already knows that no head can be flagged (every selecting row is
    // speculative with correction off, or forced at a rate whose draws for this layer are all 0):
    // the corrective selection and gather would find nothing to do, so they are not launched (four
    // near-empty kernels per layer, ~0.45 ms per step on the critical path at 32 layers).
    std::vector<uint8_t> may_flag(sz(L), 0);
    for (int64_t il = 0; il < L; ++il)
        for (int64_t r = 0; r < n && !may_flag[sz(il)]; ++r) {
            if (modes[sz(r)] == 1 || modes[sz(r)] == 2) may_flag[sz(il)] = 1;
            if (modes[sz(r)] == 3)
                for (int64_t h = 0; h < n_kv; ++h)
                    if (forced_host[sz((il * n + r) * n_kv + h)] != 0) may_flag[sz(il)] = 1;
        }
    // Attention lists: page id = batch * n_slots + slot over the layer's cache (stride_seq 0).
    std::vector<int32_t> lists(sz(n * n_kv * max_list), 0);
    for (int64_t r = 0; r < n; ++r)
        for (int64_t hh = 0; hh < n_kv; ++hh)
            for (int64_t j = 0; j < att_n[sz(r)]; ++j)
                lists[sz((r * n_kv + hh) * max_list + j)] = static_cast<int32_t>(batch[sz(r)] * n_slots + j);
    std::vector<float*> prev_ptrs(sz(L * n)), now_ptrs(sz(L * n));
    for (int64_t il = 0; il < L; ++il)
        for (int64_t r = 0; r < n; ++r) {
            const Seq& s = seqs[sz(batch[sz(r)])];
            now_ptrs[sz(il * n + r)] = ring(il, batch[sz(r)], s.n_queries % 2);
            prev_ptrs[sz(il * n + r)] = ring(il, batch[sz(r)], (s.n_queries + 1) % 2);
        }
    ids.upload(tokens.data(), n, main);
    positions.upload(pos.data(), n, main);
    rows_batch->upload(batch.data(), n, main);
    append_offset.upload(append.data(), n, main);
    att_n_pages.upload(att_n.data(), n, main);
    att_last_len.upload(att_last.data(), n, main);
    sel_n_pages->upload(sel_n.data(), n, main);
    att_lists.upload(lists.data(), static_cast<int64_t>(lists.size()), main);
    q_now.upload(now_ptrs.data(), L * n, main);
    if (any_select) {
        seq_mode.upload(modes.data(), n, main);
        q_prev.upload(prev_ptrs.data(), L * n, main);
    }
    if (!boundary.empty()) {
        boundary_jobs.upload(boundary.data(), static_cast<int64_t>(boundary.size()), main);
        cuda::BoundaryArgs b;
        b.jobs = boundary_jobs.get();
        b.n_jobs = static_cast<int32_t>(boundary.size());
        b.budget_cache = cache.get();
        b.summaries = summaries.get();
        b.cpu_chunks = chunk_table.get();
        b.pages_per_chunk = pages_per_chunk;
        b.n_layer = g.n_layer;
        b.max_batch = g.max_batch;
        b.n_slots = g.n_slots;
        b.max_pages = g.max_pages;
        b.page_size = g.page_size;
        b.n_head_kv = g.n_head_kv;
        b.head_dim = g.head_dim;
        b.elem_bytes = g.elem_bytes;
        b.cuboid = mode.summary_kind() == SummaryKind::kCuboid;
        cuda::page_boundary(b, main);
    }
    if (!places.empty()) {
        place_items.upload(places.data(), static_cast<int64_t>(places.size()), main);
        cuda::place_pages(place_items.get(), static_cast<int32_t>(places.size() / 3), g, page_of_slot.get(), slot_of_page.get(),
                          main);
    }
    std::vector<int32_t> mass_rows;
    if (any_mass) {
        std::vector<int32_t> ms, mt;
        for (int64_t r = 0; r < n; ++r)
            if (sparse((pos[sz(r)] + p) / p)) {
                mass_rows.push_back(static_cast<int32_t>(r));
                ms.push_back(batch[sz(r)]);
                mt.push_back(pos[sz(r)] + 1);
            }
        mass_seq.upload(ms.data(), static_cast<int64_t>(ms.size()), main);
        mass_tokens.upload(mt.data(), static_cast<int64_t>(mt.size()), main);
        mass.resize(L * n * c.n_head);
        mass_scratch.resize(n * c.n_head * max_pages * p);
    }
    const int32_t n_split = split_for(n * n_kv, max_att_tokens);
    cuda::PagesAttentionArgs att;
    att.n_split = n_split;
    if (n_split > 1) {
        partial.resize(n * c.n_head * (c.head_dim + 2) * n_split);
        att.partial = partial.get();
    }
    const int64_t q_dim = c.n_head * c.head_dim;

    // Only while a background gather runs (sparse FreeKV rows): in the dense regime every mode
    // runs full's kernels, bit for bit.
    cuda::set_gemm_sm_target(any_test && speculative && !dma ? gemm_sms_beside_gather() : 0);
    cuda::embedding(w().token_embd.ref(), ids.get(), n, c.n_embd, x.get(), main);
    for (int64_t il = 0; il < L; ++il) {
        const cuda::Event* mk = marks.data() + il * 4;
        qkv(il, n);
        cuda::append_kv(k.get(), v.get(), static_cast<int32_t>(n), g, append_offset.get(), layer_cache(il), main);
        if (timing) FREEKV_CUDA_CHECK(cudaEventRecord(mk[0], main));
        if (any_select) {
            if (bg_pending[sz(il)]) wait_background(il);  // Sel_{t-1} has landed
            if (timing) FREEKV_CUDA_CHECK(cudaEventRecord(mk[1], main));
            cuda::FlagArgs fa;
            fa.q = q.get();
            fa.q_prev = q_prev.get() + il * n;
            fa.mode = seq_mode.get();
            fa.forced = forced.get() + il * n * n_kv;
            fa.flags = flags.get() + il * n * n_kv;
            fa.counters = counters.get() + il * 4;
            fa.tau = mode.correction_on() ? mode.correction_threshold : 0.0f;
            fa.n_seq = static_cast<int32_t>(n);
            cuda::correction_flags(fa, g, main);
            bool corrective = may_flag[sz(il)] != 0;
            if (corrective && host_flags.valid() && any_test) {  // --corr-sync host: one small wait per layer
                FREEKV_CUDA_CHECK(cudaMemcpyAsync(host_flags.get(), flags.get() + il * n * n_kv, sz(n * n_kv), cudaMemcpyDeviceToHost, main));
                FREEKV_CUDA_CHECK(cudaEventRecord(flags_ready[0], main));
                FREEKV_CUDA_CHECK(cudaEventSynchronize(flags_ready[0]));
                corrective = std::any_of(host_flags.get(), host_flags.get() + n * n_kv, [](uint8_t f) { return f == 1; });
            }
            if (corrective)
                select_and_gather(il, static_cast<int32_t>(n), q.get(), sel_n_pages->get(), flags.get() + il * n * n_kv, 1, 0, main);
        } else if (timing) {
            FREEKV_CUDA_CHECK(cudaEventRecord(mk[1], main));
        }
        if (timing) FREEKV_CUDA_CHECK(cudaEventRecord(mk[2], main));
        att.q = q.get();
        att.k = layer_cache(il);
        att.v = layer_cache(il) + kv_bytes(g.page_size * row());
        att.elem_bytes = g.elem_bytes;
        att.page_ids = att_lists.get();
        att.n_pages = att_n_pages.get();
        att.last_len = att_last_len.get();
        att.out = attn.get();
        att.n_seq = static_cast<int32_t>(n);
        att.n_head = g.n_head;
        att.n_head_kv = g.n_head_kv;
        att.head_dim = g.head_dim;
        att.page_size = g.page_size;
        att.max_list = static_cast<int32_t>(max_list);
        att.stride_seq = 0;
        att.stride_page = g.slot_elems();
        att.stride_tok = row();
        cuda::attention_pages(att, main);
        if (timing) FREEKV_CUDA_CHECK(cudaEventRecord(mk[3], main));
        if (any_mass) {
            // q rows of the listed sequences: gather them into q_side's scratch area of this layer.
            float* mq = q_side.get() + il * max_batch * q_dim;
            for (size_t i = 0; i < mass_rows.size(); ++i)
                FREEKV_CUDA_CHECK(cudaMemcpyAsync(mq + static_cast<int64_t>(i) * q_dim, q.get() + mass_rows[i] * q_dim, sz(q_dim) * 4,
                                                  cudaMemcpyDeviceToDevice, main));
            cuda::MassArgs ma;
            ma.q = mq;
            ma.seq = mass_seq.get();
            ma.n_tokens = mass_tokens.get();
            ma.slot_of_page = layer_slot_of_page(il);
            ma.layer_cache = layer_cache(il);
            ma.cpu_chunks = chunk_table.get();
            ma.pages_per_chunk = pages_per_chunk;
            ma.cpu_page_of = cpu_page_of.get();
            ma.il = static_cast<int32_t>(il);
            ma.n_list = static_cast<int32_t>(mass_rows.size());
            ma.n_sink_page = static_cast<int32_t>(budget.n_sink_page);
            ma.n_recent_page = static_cast<int32_t>(budget.n_recent_page);
            ma.current_slot = static_cast<int32_t>(budget.current_slot());
            ma.scratch = mass_scratch.get();
            ma.out = mass.get() + il * n * c.n_head;
            cuda::mass_recall(ma, g, main);
        }
        cuda::store_queries(q.get(), q_now.get() + il * n, static_cast<int32_t>(n), g, main);
        if (any_test && speculative && diag_background() != 2) {
            // Sel_t of the unflagged heads, on the side stream, once this attention has read the slots.
            float* qs = q_side.get() + il * max_batch * q_dim;
            FREEKV_CUDA_CHECK(cudaMemcpyAsync(qs, q.get(), sz(n * q_dim) * 4, cudaMemcpyDeviceToDevice, main));
            FREEKV_CUDA_CHECK(cudaEventRecord(attn_done[sz(il)], main));
            FREEKV_CUDA_CHECK(cudaStreamWaitEvent(side, attn_done[sz(il)]));
            bg_step[sz(il)] = decode_steps;  // before select_and_gather: the dma worker's ticket
            select_and_gather(il, static_cast<int32_t>(n), qs, sel_n_pages->get(), flags.get() + il * n * n_kv, 0, 1, side);
            if (!dma) FREEKV_CUDA_CHECK(cudaEventRecord(bg_done[sz(il)], side));  // dma: the worker records it
            bg_pending[sz(il)] = true;
        }
        mlp_and_attention_out(il, n);
    }
    output_logits(out_rows, out);
    timing_step = false;
    if (timing) {
        collect_gather_times(false);
        for (int64_t il = 0; il < L; ++il) {
            const cuda::Event* mk = marks.data() + il * 4;
            float a = 0, b = 0, d = 0;
            FREEKV_CUDA_CHECK(cudaEventElapsedTime(&a, mk[0], mk[1]));
            FREEKV_CUDA_CHECK(cudaEventElapsedTime(&b, mk[1], mk[2]));
            FREEKV_CUDA_CHECK(cudaEventElapsedTime(&d, mk[2], mk[3]));
            recall_wait_ms += a;
            select_ms += b;
            attention_ms += d;
        }
    }
    if (any_mass) {
        std::vector<float> host(sz(L * n * c.n_head));
        FREEKV_CUDA_CHECK(cudaMemcpy(host.data(), mass.get(), host.size() * 4, cudaMemcpyDeviceToHost));
        for (int64_t il = 0; il < L; ++il)
            for (size_t i = 0; i < mass_rows.size(); ++i)
                for (int64_t hh = 0; hh < c.n_head; ++hh)
                    mass_recall.push_back(host[sz((il * n + static_cast<int64_t>(i)) * c.n_head + hh)]);
    }
    for (int64_t r = 0; r < n; ++r) {
        Seq& s = seqs[sz(batch[sz(r)])];
        s.n_tokens = pos[sz(r)] + 1;
        ++s.n_queries;
        s.forced = false;
    }
}

void GpuEngine::forward(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans, std::span<const int64_t> out_rows,
                        std::vector<float>& logits) {
    Impl& m = *impl_;
    FREEKV_CHECK(!spans.empty(), "forward of no spans");
    int64_t total = 0;
    for (const SequenceSpan& s : spans) {
        FREEKV_CHECK(s.seq >= 0 && s.seq < m.max_batch && m.seqs[sz(s.seq)].live, "sequence {} was not added", s.seq);
        const Impl::Seq& st = m.seqs[sz(s.seq)];
        FREEKV_CHECK(s.pos0 == st.n_tokens, "sequence {} holds {} tokens but the span starts at {}", s.seq, st.n_tokens, s.pos0);
        FREEKV_CHECK(s.pos0 + s.n_tok <= m.max_tokens, "sequence {} would hold {} tokens, more than its context of {} (-c/--ctx-size)",
                     s.seq, s.pos0 + s.n_tok, m.max_tokens);
        FREEKV_CHECK(s.offset == total, "spans must list their tokens in order");
        total += s.n_tok;
    }
    FREEKV_CHECK(total == static_cast<int64_t>(tokens.size()), "spans cover {} tokens, {} given", total, tokens.size());
    for (int32_t id : tokens) FREEKV_CHECK(id >= 0 && id < m.c.n_vocab, "token {} is outside the vocabulary of {}", id, m.c.n_vocab);
    for (int64_t r : out_rows) FREEKV_CHECK(r >= 0 && r < total, "output row {} is outside the batch of {}", r, total);
    if (spans.size() == 1 && spans[0].pos0 == 0) {
        m.prefill(tokens, spans[0], out_rows, logits);
        return;
    }
    for (const SequenceSpan& s : spans)
        FREEKV_CHECK(s.n_tok == 1 && s.pos0 > 0,
                     "the GPU engine runs a prefill of an empty sequence alone, or decode steps of one token per sequence "
                     "(sequence {}: {} tokens at position {}); prefill the whole prompt in one call", s.seq, s.n_tok, s.pos0);
    m.decode(tokens, spans, out_rows, logits);
}

void GpuEngine::forward_top(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans, std::span<const int64_t> out_rows,
                            int32_t k, std::vector<int32_t>& ids, std::vector<float>& values) {
    static_assert(kMaxDeviceTopK == cuda::kMaxTopK);
    Impl& m = *impl_;
    FREEKV_CHECK(k >= 1 && k <= std::min<int64_t>(m.c.n_vocab, kMaxDeviceTopK), "forward_top: k = {} must be in [1, {}]", k,
                 std::min<int64_t>(m.c.n_vocab, kMaxDeviceTopK));
    m.top_k = k;
    m.top_ids = &ids;
    struct Reset {
        Impl& m;
        ~Reset() {
            m.top_k = 0;
            m.top_ids = nullptr;
        }
    } reset{m};
    forward(tokens, spans, out_rows, values);
}

KvStats GpuEngine::stats() {
    Impl& m = *impl_;
    if (m.worker) {
        m.worker->drain();
        FREEKV_CUDA_CHECK(cudaStreamSynchronize(m.copy));
        for (size_t i = 0; i < m.dma_marked.size(); ++i)
            if (m.dma_marked[i]) {
                float ms = 0;
                FREEKV_CUDA_CHECK(cudaEventElapsedTime(&ms, m.dma_marks[2 * i], m.dma_marks[2 * i + 1]));
                m.dma_ms += ms;
                m.dma_marked[i] = 0;
            }
    }
    FREEKV_CUDA_CHECK(cudaStreamSynchronize(m.side));
    FREEKV_CUDA_CHECK(cudaStreamSynchronize(m.main));
    const int64_t L = m.c.n_layer, n_kv = m.c.n_head_kv;
    std::vector<unsigned long long> host(sz(m.counters.size()));
    FREEKV_CUDA_CHECK(cudaMemcpy(host.data(), m.counters.get(), host.size() * 8, cudaMemcpyDeviceToHost));
    KvStats s;
    s.decode_steps = m.decode_steps;
    s.sequence_steps = m.sequence_steps;
    for (auto* v : {&s.sparse_pairs, &s.corrected_pairs, &s.head_tests, &s.head_flags}) v->assign(sz(L), 0);
    s.forced_pairs = m.forced_pairs;
    for (int64_t il = 0; il < L; ++il) {
        s.sparse_pairs[sz(il)] = static_cast<int64_t>(host[sz(il * 4)]);
        s.corrected_pairs[sz(il)] = static_cast<int64_t>(host[sz(il * 4 + 1)]);
        s.head_tests[sz(il)] = static_cast<int64_t>(host[sz(il * 4 + 2)]);
        s.head_flags[sz(il)] = static_cast<int64_t>(host[sz(il * 4 + 3)]);
    }
    s.recalled_sync.assign(sz(L * n_kv), 0);
    s.recalled_background.assign(sz(L * n_kv), 0);
    const int64_t block_bytes = m.kv_bytes(m.g.block_elems());
    for (int64_t i = 0; i < L * n_kv; ++i) {
        s.recalled_sync[sz(i)] = static_cast<int64_t>(host[sz(L * 4 + i)]);
        s.recalled_background[sz(i)] = static_cast<int64_t>(host[sz(L * 4 + L * n_kv + i)]);
        s.transfer.sync_jobs += s.recalled_sync[sz(i)];
        s.transfer.background_jobs += s.recalled_background[sz(i)];
    }
    s.transfer.sync_bytes = s.transfer.sync_jobs * block_bytes;
    s.transfer.background_bytes = s.transfer.background_jobs * block_bytes;
    s.mass_recall = m.mass_recall;
    s.select_ms = m.select_ms;
    s.recall_wait_ms = m.recall_wait_ms;
    s.attention_ms = m.attention_ms;
    m.collect_gather_times(true);
    s.gather_sync_ms = m.gather_ms[0];
    s.gather_background_ms = m.gather_ms[1] + m.dma_ms;
    return s;
}

}  // namespace freekv::gpu
