// gpu_prefill.cu: the GPU engine's prefill: a prompt through the model with the flash prefill
// attention (bf16) or the chunked fp32 cuBLAS one (f32), then its history installed per layer (summaries, offload to the CPU store, budget
// slots) on the side stream while the next layer computes, and the synthetic fill the benchmarks use instead.
#include "gpu/gpu_engine_impl.cuh"

namespace freekv::gpu {

// ---------------------------------------------------------------- prefill

// Installs the history in hist_k/hist_v (n_tokens rows) of layer il for batch entry seq: summaries
// and offload of the complete pages, sink/window/current pages into their slots, and the middle
// slots (budget-only: the last k candidates; selecting modes: top-k for q_last).
void GpuEngine::Impl::install_layer(int64_t il, int32_t seq, int64_t n_tokens, const float* q_last, const void* k_hist,
                                    const void* v_hist, bool beside) {
    const int64_t p = g.page_size, current = (n_tokens - 1) / p, n_pages = current + 1;
    const bool is_sparse = sparse(n_pages);
    if (offloads) {  // maps of (il, seq): nothing resident yet
        FREEKV_CUDA_CHECK(cudaMemsetAsync(layer_page_of_slot(il) + seq * c.n_head_kv * n_slots, 0xff,
                                          sz(c.n_head_kv * n_slots) * 4, main));
        FREEKV_CUDA_CHECK(cudaMemsetAsync(layer_slot_of_page(il) + seq * c.n_head_kv * max_pages, 0xff,
                                          sz(c.n_head_kv * max_pages) * 4, main));
    }
    cuda::InstallArgs a;
    a.hist_k = k_hist;
    a.hist_v = v_hist;
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
    if (beside) {
        FREEKV_CUDA_CHECK(cudaEventRecord(prefill_kv_ready, main));
        FREEKV_CUDA_CHECK(cudaStreamWaitEvent(side, prefill_kv_ready, 0));
        cuda::install_pages(a, g, side, tuning.prefill_install_ctas);
        FREEKV_CUDA_CHECK(cudaEventRecord(prefill_installed, side));
    } else {
        cuda::install_pages(a, g, main);
    }
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
            if (beside) FREEKV_CUDA_CHECK(cudaStreamWaitEvent(main, prefill_installed, 0));  // reads the summaries
            const int32_t n_pages32 = static_cast<int32_t>(n_pages);
            sel_n_pages->upload(&n_pages32, 1, main);
            rows_batch->upload(&seq, 1, main);
            select_and_gather(il, 1, q_last, sel_n_pages->get(), nullptr, 1, 0, main);
        }
    }
    FREEKV_CUDA_CHECK(cudaMemcpyAsync(ring(il, seq, seqs[sz(seq)].n_queries % 2), q_last, sz(c.n_head * c.head_dim) * 4,
                                      cudaMemcpyDeviceToDevice, main));
}

bool GpuEngine::Impl::can_chunk() const { return prefill_can_chunk(g.elem_bytes, c.head_dim); }

void GpuEngine::Impl::drop_stage() {
    stage.seq = -1;
    stage.n_prompt = 0;
    stage.k.release();
    stage.v.release();
}

// One prefill forward: the whole prompt of an empty sequence, or the next chunk of the prompt
// begin_prompt staged. Every layer's K/V of a chunked prompt accumulates in the stage and each
// chunk attends to all of it; the last chunk installs the whole history layer by layer, exactly as
// a whole-prompt prefill does (a prompt that arrives in one chunk takes that path).
void GpuEngine::Impl::prefill(std::span<const int32_t> tokens, const SequenceSpan& span, std::span<const int64_t> out_rows,
                              std::vector<float>& out) {
    const int64_t n = span.n_tok, pos0 = span.pos0;
    const int32_t seq = span.seq;
    const bool staged = stage.seq == seq;
    const int64_t n_total = staged ? stage.n_prompt : n;  // tokens held when this prompt is done
    FREEKV_CHECK(pos0 + n <= n_total, "sequence {}: a prompt chunk ends at {}, past its prompt of {} tokens (begin_prompt)",
                 seq, pos0 + n, n_total);
    const bool last = pos0 + n == n_total, use_stage = staged && !(pos0 == 0 && last);
    if (fail_next_prefill_allocation) {
        fail_next_prefill_allocation = false;
        FREEKV_FAIL("the device allocation of {:.1f} MiB for the K/V of sequence {}'s prompt failed: out of memory "
                    "(an injected fault)", static_cast<double>(2 * kv_bytes(c.n_layer * n_total * row())) / (1 << 20), seq);
    }
    for (size_t il = 0; il < bg_pending.size(); ++il)  // no background work may still read shared buffers
        if (bg_pending[il]) wait_background(static_cast<int64_t>(il));
    cuda::set_gemm_sm_target(0);  // nothing runs beside the prefill
    ensure_activations(n);
    ids.upload(tokens.data(), n, main);
    std::vector<int32_t> pos(sz(n));
    std::iota(pos.begin(), pos.end(), static_cast<int32_t>(pos0));
    positions.upload(pos.data(), n, main);
    if (last) {
        const std::vector<int32_t> slots = prefill_slots(n_total);
        slot_map.upload(slots.data(), static_cast<int64_t>(slots.size()), main);
    }
    if (use_stage) {
        stage.k.resize(kv_bytes(c.n_layer * n_total * row()));
        stage.v.resize(kv_bytes(c.n_layer * n_total * row()));
    } else {
        hist_k.resize(kv_bytes(n * row()));
        hist_v.resize(kv_bytes(n * row()));
    }
    const int64_t n_keys = pos0 + n;
    // Prefill attention over the prompt's K/V as the cache stores them: the flash kernel reads the
    // bf16 history itself; the f32 engine keeps the fp32 cuBLAS path (its products are not rounded).
    const bool flash = prefill_uses_flash(g.elem_bytes, c.head_dim);
    const bool attn_bf16 = flash && bf16_gemm_rows(n);  // flash writes the bf16 the output projection reads
    cuda::FlashPrefillArgs fa;
    fa.n_q = static_cast<int32_t>(n);
    fa.q_pos0 = static_cast<int32_t>(pos0);
    fa.n_keys = static_cast<int32_t>(n_keys);
    fa.n_head = static_cast<int32_t>(c.n_head);
    fa.n_head_kv = static_cast<int32_t>(c.n_head_kv);
    fa.head_dim = static_cast<int32_t>(c.head_dim);
    cuda::PrefillAttentionArgs pa;
    pa.n = static_cast<int32_t>(n);
    pa.q_pos0 = static_cast<int32_t>(pos0);
    pa.n_head = static_cast<int32_t>(c.n_head);
    pa.n_head_kv = static_cast<int32_t>(c.n_head_kv);
    pa.head_dim = static_cast<int32_t>(c.head_dim);
    pa.chunk = cuda::prefill_chunk(n_keys, c.n_head_kv, int64_t{512} << 20);
    pa.chunk = std::min<int32_t>(pa.chunk, static_cast<int32_t>(n));
    // A staged prompt on the cuBLAS path is an f32 engine's (can_chunk): its stage is fp32 already.
    const bool copy_f32 = !flash && !use_stage;
    if (!flash) prefill_scores.resize(cuda::prefill_scores_floats(n_keys, c.n_head_kv, pa.chunk));
    if (copy_f32) {
        prefill_k.resize(n * row());
        prefill_v.resize(n * row());
    }
    cuda::embedding(w().token_embd.ref(), ids.get(), n, c.n_embd, x.get(), main);
    sum_over_ranks(x.get(), n * c.n_embd);  // a rank looks up its vocabulary rows only
    for (int64_t il = 0; il < c.n_layer; ++il) {
        qkv(il, n);
        uint8_t* k_layer = use_stage ? stage.k.get() + kv_bytes(il * n_total * row()) : hist_k.get();
        uint8_t* v_layer = use_stage ? stage.v.get() + kv_bytes(il * n_total * row()) : hist_v.get();
        const int64_t at = use_stage ? kv_bytes(pos0 * row()) : 0;
        if (last && il > 0) FREEKV_CUDA_CHECK(cudaStreamWaitEvent(main, prefill_installed, 0));  // it reads hist_k/v
        cuda::store_kv(k.get(), n * row(), k_layer + at, g.elem_bytes, main, copy_f32 ? prefill_k.get() : nullptr);
        cuda::store_kv(v.get(), n * row(), v_layer + at, g.elem_bytes, main, copy_f32 ? prefill_v.get() : nullptr);
        if (flash) {
            fa.q = q.get();
            fa.k = reinterpret_cast<const uint16_t*>(k_layer);
            fa.v = reinterpret_cast<const uint16_t*>(v_layer);
            fa.out = attn.get();
            fa.out_bf16 = attn_bf16 ? scratch_bf16.get() : nullptr;  // what the output projection reads
            cuda::flash_prefill(fa, main);
        } else {
            pa.q = q.get();
            pa.k = copy_f32 ? prefill_k.get() : reinterpret_cast<const float*>(k_layer);
            pa.v = copy_f32 ? prefill_v.get() : reinterpret_cast<const float*>(v_layer);
            pa.out = attn.get();
            pa.scores = prefill_scores.get();
            cuda::prefill_attention(pa, main);
        }
        if (last) {
            install_layer(il, seq, n_total, q.get() + (n - 1) * c.n_head * c.head_dim, k_layer, v_layer,
                          tuning.prefill_install_beside);
            // A small-grid install keeps its SMs from the products it runs beside (the output
            // projection and the gate, longer than the install), and gives them back after.
            const int beside = gemm_sms_beside_install(tuning, c.n_head_kv);
            if (beside > 0) cuda::set_gemm_sm_target(beside);
            mlp_and_attention_out(il, n, attn_bf16, beside > 0 ? 0 : -1);
        } else {
            mlp_and_attention_out(il, n, attn_bf16);
        }
    }
    if (last) FREEKV_CUDA_CHECK(cudaStreamWaitEvent(main, prefill_installed, 0));
    output_logits(out_rows, out);
    for (auto* a : {&prefill_k, &prefill_v, &prefill_scores}) a->release();  // up to ~1.5 GiB at 128K
    Seq& s = seqs[sz(seq)];
    s.n_tokens = pos0 + n;
    if (last) {
        if (staged) drop_stage();
        ++s.n_queries;
        s.forced = sparse((n_total + g.page_size - 1) / g.page_size);
    }
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
        m.install_layer(il, seq, n_tokens, m.last_q.get(), m.hist_k.get(), m.hist_v.get());
    }
    FREEKV_CUDA_CHECK(cudaStreamSynchronize(m.main));
    Impl::Seq& st = m.seqs[sz(seq)];
    st.n_tokens = n_tokens;
    ++st.n_queries;
    st.forced = m.sparse((n_tokens + m.g.page_size - 1) / m.g.page_size);
}

}  // namespace freekv::gpu
