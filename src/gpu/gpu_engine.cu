// gpu_engine.cu: the GpuEngine's lifetime (see gpu_engine.h, gpu_engine_impl.cuh): reserving
// the budget cache, maps, CPU store and recall machinery for max_batch sequences; sequence slots;
// forward (a prefill or a decode step) and the counters.
#include "gpu/gpu_engine_impl.cuh"

namespace freekv::gpu {

GpuEngine::GpuEngine(std::shared_ptr<const GpuWeights> weights, const KvModeConfig& mode, int64_t max_batch, int64_t max_tokens,
                     const GpuTuning& tuning)
    : impl_(std::make_unique<Impl>()) {
    Impl& m = *impl_;
    tuning.validate();
    m.tuning = tuning;
    if (tuning.diag_background != DiagBackground::kOff && mode.mode == KvMode::kFreekv)
        FREEKV_LOG_WARN("--diag-background {}: FreeKV's background recall is cut short; outputs are wrong, timings are "
                        "diagnostic", diag_background_name(tuning.diag_background));
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
    if (mode.store_code && !m.dense_only) {
        FREEKV_CHECK(c.head_dim + p <= cuda::kMaxBlockScales && p % 4 == 0,
                     "--kv-store-dtype {}: --kv-page-size {} must be a multiple of 4 and, plus head_dim {}, at most {}",
                     store_dtype_name(mode.store_code), p, c.head_dim, cuda::kMaxBlockScales);
        m.g.store_code = *mode.store_code == KvCode::kInt8 ? cuda::kStoreInt8 : cuda::kStoreFp8;
        m.g.stored_block = static_cast<int32_t>(kv_coded_block_bytes(p, c.head_dim));
    }

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
        const int64_t page_bytes = m.g.cpu_page_bytes(), n_cpu_pages = max_batch * m.max_pages;
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
            m.staging.resize(m.job_capacity * m.g.store_block_bytes());
            m.host_count = cuda::PinnedArray<int32_t>(1);
            m.host_jobs = cuda::PinnedArray<cuda::GatherJob>(m.job_capacity);
        }
        if (m.speculative && mode.corr_sync_host) {
            m.host_flags = cuda::PinnedArray<uint8_t>(max_batch * c.n_head_kv);
            m.flags_ready.emplace_back(false);
        }
        if (m.dma && m.speculative) {
            m.bg_staging.resize(m.job_capacity * m.g.store_block_bytes());
            m.host_bg_count = cuda::PinnedArray<int32_t>(c.n_layer);
            m.host_bg_jobs = cuda::PinnedArray<cuda::GatherJob>(c.n_layer * m.job_capacity);
            m.copy = cuda::Stream(least);
            for (int64_t il = 0; il < c.n_layer; ++il) m.sel_done.emplace_back(false);
            for (int64_t i = 0; i < 2 * c.n_layer * 2; ++i) m.dma_marks.emplace_back(true);
            m.dma_marked.assign(sz(2 * c.n_layer), 0);
            FREEKV_CUDA_CHECK(cudaGetDevice(&m.device));  // the worker's CUDA calls go to the engine's device
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
    if (m.stage.seq == seq) m.drop_stage();  // a prompt cancelled part-way: its staged K/V go at once
}

bool GpuEngine::chunked_prefill() const { return impl_->can_chunk(); }

void GpuEngine::begin_prompt(int32_t seq, int64_t n_prompt) {
    Impl& m = *impl_;
    FREEKV_CHECK(m.can_chunk(), "this GPU engine prefills a prompt in one forward (bf16 with head_dim {}: the flash kernel "
                 "takes 64 or 128; --gpu-dtype f32 chunks any)", m.c.head_dim);
    FREEKV_CHECK(seq >= 0 && seq < m.max_batch && m.seqs[sz(seq)].live && m.seqs[sz(seq)].n_tokens == 0,
                 "begin_prompt: sequence {} is not an empty added sequence", seq);
    FREEKV_CHECK(n_prompt >= 1 && n_prompt <= m.max_tokens, "begin_prompt: a prompt of {} tokens does not fit the context of {}",
                 n_prompt, m.max_tokens);
    FREEKV_CHECK(m.stage.seq < 0 || m.stage.seq == seq,
                 "begin_prompt: sequence {} is still being prefilled; the GPU engine stages one prompt at a time", m.stage.seq);
    m.drop_stage();
    m.stage.seq = seq;
    m.stage.n_prompt = n_prompt;
}

void GpuEngine::fail_next_prefill_allocation() { impl_->fail_next_prefill_allocation = true; }
std::vector<RowPlan> GpuEngine::last_decode_plan() const { return impl_->last_plan; }
int64_t GpuEngine::n_tokens(int32_t seq) const { return impl_->seqs.at(sz(seq)).n_tokens; }

void GpuEngine::set_timing(bool on) { impl_->timing = on; }

int64_t GpuEngine::device_bytes() const {
    const Impl& m = *impl_;
    int64_t total = m.cache.bytes() + m.summaries.bytes() + m.page_of_slot.bytes() + m.slot_of_page.bytes() + m.qring.bytes() +
                    m.device_store.bytes() + m.jobs.bytes() + m.scores_main.bytes() + m.scores_side.bytes() + m.q_side.bytes();
    for (auto* a : {&m.x, &m.h, &m.qkv_rows, &m.attn, &m.proj, &m.gate_up_rows, &m.logits, &m.partial}) total += a->bytes();
    return total + m.scratch_bf16.bytes() + m.hist_k.bytes() + m.hist_v.bytes() + m.staging.bytes() + m.bg_staging.bytes() +
           m.stage.k.bytes() + m.stage.v.bytes();
}

int64_t GpuEngine::host_bytes() const {
    const Impl& m = *impl_;
    return m.pinned ? m.pinned->n_chunks() * m.pinned->chunk_bytes() : 0;
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
    const int64_t n_vocab = m.tp.peers != nullptr ? m.tp.n_vocab : m.c.n_vocab;
    for (int32_t id : tokens) FREEKV_CHECK(id >= 0 && id < n_vocab, "token {} is outside the vocabulary of {}", id, n_vocab);
    std::vector<int32_t> local;
    if (m.tp.peers != nullptr) {  // a rank's own rows of the embedding table; -1: another rank's token (a zero row here)
        local.resize(tokens.size());
        for (size_t i = 0; i < tokens.size(); ++i) {
            const int64_t id = tokens[i] - m.tp.vocab_begin;
            local[i] = id >= 0 && id < m.c.n_vocab ? static_cast<int32_t>(id) : -1;
        }
        tokens = local;
    }
    for (int64_t r : out_rows) FREEKV_CHECK(r >= 0 && r < total, "output row {} is outside the batch of {}", r, total);
    if (spans.size() == 1 && (spans[0].pos0 == 0 || m.stage.seq == spans[0].seq)) {
        m.prefill(tokens, spans[0], out_rows, logits);
        return;
    }
    for (const SequenceSpan& s : spans)
        FREEKV_CHECK(s.n_tok == 1 && s.pos0 > 0 && m.stage.seq != s.seq,
                     "the GPU engine runs a prefill (a whole prompt, or a chunk of the prompt begin_prompt staged) alone, "
                     "or decode steps of one token per sequence whose prompt is done (sequence {}: {} tokens at position {})",
                     s.seq, s.n_tok, s.pos0);
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

void GpuEngine::set_tensor_parallel(const GpuRank& rank) {
    Impl& m = *impl_;
    FREEKV_CHECK(rank.peers != nullptr && rank.vocab_begin >= 0 && rank.vocab_begin + m.c.n_vocab <= rank.n_vocab,
                 "a tensor-parallel rank's vocabulary rows [{}, {}) must lie in the vocabulary of {}", rank.vocab_begin,
                 rank.vocab_begin + m.c.n_vocab, rank.n_vocab);
    m.tp = rank;
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
    const int64_t block_bytes = m.g.store_block_bytes();  // bytes as stored (8-bit blocks with their scales)
    for (int64_t i = 0; i < L * n_kv; ++i) {
        s.recalled_sync[sz(i)] = static_cast<int64_t>(host[sz(L * 4 + i)]);
        s.recalled_background[sz(i)] = static_cast<int64_t>(host[sz(L * 4 + L * n_kv + i)]);
        s.transfer.sync_jobs += s.recalled_sync[sz(i)];
        s.transfer.background_jobs += s.recalled_background[sz(i)];
    }
    s.transfer.sync_bytes = s.transfer.sync_jobs * block_bytes;
    s.transfer.background_bytes = s.transfer.background_jobs * block_bytes;
    if (m.offloads)
        s.store_bytes_per_token = static_cast<double>(m.g.cpu_page_bytes()) / static_cast<double>(m.g.page_size);
    s.mass_recall = m.mass_recall;
    s.select_ms = m.select_ms;
    s.recall_wait_ms = m.recall_wait_ms;
    s.attention_ms = m.attention_ms;
    s.host_issue_ms = m.host_issue_ms;
    m.collect_gather_times(true);
    s.gather_sync_ms = m.gather_ms[0];
    s.gather_background_ms = m.gather_ms[1] + m.dma_ms;
    return s;
}

}  // namespace freekv::gpu
