// gpu_decode.cu: the GPU engine's decode step: one token of each row, per layer the regime
// per row, page boundaries, FreeKV's correction test and corrective recall on the main stream,
// the speculative recall of the next step on the side stream, and attention over the budget.
#include "gpu/gpu_engine_impl.cuh"

namespace freekv::gpu {

// ---------------------------------------------------------------- decode

void GpuEngine::Impl::decode(std::span<const int32_t> tokens, std::span<const SequenceSpan> spans,
                             std::span<const int64_t> out_rows, std::vector<float>& out) {
    const auto step_start = std::chrono::steady_clock::now();
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
    std::vector<RowPlan> plan(sz(n));
    for (int64_t r = 0; r < n; ++r) {
        const SequenceSpan& span = spans[sz(r)];
        Seq& s = seqs[sz(span.seq)];
        const RowPlan& rp = plan[sz(r)] = plan_decode_row(budget, mode, dense_only, span.seq, span.pos0, s.forced);
        s.forced = rp.forced;
        pos[sz(r)] = static_cast<int32_t>(rp.pos);
        batch[sz(r)] = span.seq;
        if (rp.has_boundary) {
            const PlannedBoundary& bd = rp.boundary;
            const auto done = static_cast<int32_t>(bd.done);
            boundary.push_back({span.seq, done, static_cast<int32_t>(bd.src_slot), static_cast<int32_t>(bd.ring_slot),
                                static_cast<int32_t>(span.seq * max_pages + bd.done)});
            if (bd.place) places.insert(places.end(), {span.seq, done, done});
        }
        append[sz(r)] = (span.seq * n_slots + rp.append_slot) * g.slot_elems() + (rp.fill - 1) * row();
        att_n[sz(r)] = static_cast<int32_t>(rp.n_attend);
        att_last[sz(r)] = static_cast<int32_t>(rp.fill);
        sel_n[sz(r)] = static_cast<int32_t>(rp.n_select_pages);
        max_list = std::max<int64_t>(max_list, att_n[sz(r)]);
        max_att_tokens = std::max(max_att_tokens, (att_n[sz(r)] - 1) * p + rp.fill);
        modes[sz(r)] = static_cast<uint8_t>(rp.select);
        if (rp.select != SelectKind::kNone) {
            any_select = true;
            any_test = any_test || rp.select != SelectKind::kSync;
            if (rp.forced)
                for (int64_t il = 0; il < L; ++il) ++forced_pairs[sz(il)];
        }
        any_mass = any_mass || (rp.sparse && mode.attention_mass_recall);
    }
    last_plan = std::move(plan);
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
        b.store_code = g.store_code;
        b.store_block_bytes = g.store_block_bytes();
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
    if (attention_wave == 0) attention_wave = cuda::attention_pages_wave(static_cast<int>(c.n_head), static_cast<int>(n_kv),
                                                                         static_cast<int>(c.head_dim), static_cast<int>(g.elem_bytes),
                                                                         tuning.attn_v_registers);
    const int64_t split_target = tuning.attn_split_blocks > 0 ? tuning.attn_split_blocks : attention_wave;
    const int32_t n_split = split_for(n * n_kv, max_att_tokens, tuning.attn_min_split_tokens, split_target);
    cuda::PagesAttentionArgs att;
    att.n_split = n_split;
    att.pdl = tuning.attn_pdl;
    att.v_registers = tuning.attn_v_registers;
    if (n_split > 1) {
        partial.resize(n * c.n_head * (c.head_dim + 2) * n_split);
        att.partial = partial.get();
        if (tuning.attn_fused_combine) {
            if (split_counters.size() == 0) {  // once, outside any capture (a shape's first step runs directly)
                split_counters.resize(max_batch * n_kv);
                FREEKV_CUDA_CHECK(cudaMemsetAsync(split_counters.get(), 0, static_cast<size_t>(split_counters.bytes()), main));
            }
            att.split_counters = split_counters.get();
        }
    }
    const int64_t q_dim = c.n_head * c.head_dim;

    // Only while a background gather runs (sparse FreeKV rows): in the dense regime every mode
    // runs full's kernels, bit for bit. Never in f32 engines: cuBLAS's f32 products change their
    // summation with the SM target, and an f32 engine is the exact reference whose logits must not
    // depend on the recall path (gather, dma, per-copy).
    const bool f32_engine = w().layers[0]->wq.ref().f32;
    const int gemm_sms = any_test && speculative && !dma && !f32_engine ? gemm_sms_beside_gather(tuning) : 0;
    prepare_output(static_cast<int64_t>(out_rows.size()));
    // Every launch of the step from here to the logits (a graph's body under --cuda-graphs).
    auto launch_step = [&] {
        cuda::set_gemm_sm_target(gemm_sms);
        cuda::set_gemv_pdl(tuning.pdl);
        cuda::embedding(w().token_embd.ref(), ids.get(), n, c.n_embd, x.get(), main);
        sum_over_ranks(x.get(), n * c.n_embd);  // a rank looks up its vocabulary rows only
        for (int64_t il = 0; il < L; ++il) {
            const cuda::Event* mk = marks.data() + il * 4;
            cuda::RopeAppendArgs ra;  // RoPE, the K/V append and the query ring store in one launch
            ra.qkv = qkv_for_append(il, n);
            ra.q = q.get();
            ra.k = k.get();
            ra.v = v.get();
            ra.n_seq = static_cast<int32_t>(n);
            ra.positions = positions.get();
            ra.inv_freq = w().inv_freq.get();
            ra.neox = c.rope_style == RopeStyle::kNeox;
            ra.dst_offset = append_offset.get();
            ra.layer_cache = layer_cache(il);
            ra.q_dst = q_now.get() + il * n;
            cuda::rope_append(ra, g, main);
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
            att.out_bf16 = gemv_input_bf16();
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
            if (any_test && speculative && tuning.diag_background != DiagBackground::kNone) {
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
            // The attention wrote its output in bf16 too: the GEMM path (more than 8 rows) takes it as its
            // bf16 input, the GEMV path beside the fp32 one.
            mlp_and_attention_out(il, n, bf16_gemm_rows(n), -1, true);
        }
        launch_output(out_rows);
        cuda::set_gemv_pdl(false);  // decode only
    };
    const bool graphable = tuning.cuda_graphs && !timing && boundary.empty() && places.empty() && !any_select && !any_mass &&
                           (tp.peers == nullptr || tp.peers->capturable());
    if (graphable) {
        std::vector<int64_t> key{n, n_split, max_list, decode_steps % 2, top_k};
        key.insert(key.end(), out_rows.begin(), out_rows.end());
        for (const void* ptr : {static_cast<const void*>(x.get()), static_cast<const void*>(h.get()),
                                static_cast<const void*>(qkv_rows.get()), static_cast<const void*>(attn.get()),
                                static_cast<const void*>(proj.get()), static_cast<const void*>(gate_up_rows.get()),
                                static_cast<const void*>(logits.get()), static_cast<const void*>(partial.get()),
                                static_cast<const void*>(scratch_bf16.get()), static_cast<const void*>(ids.get()),
                                static_cast<const void*>(positions.get()), static_cast<const void*>(att_lists.get()),
                                static_cast<const void*>(att_n_pages.get()), static_cast<const void*>(att_last_len.get()),
                                static_cast<const void*>(append_offset.get()), static_cast<const void*>(q_now.get()),
                                static_cast<const void*>(top_scratch_values.get()), static_cast<const void*>(top_scratch_ids.get()),
                                static_cast<const void*>(top_values.get()), static_cast<const void*>(top_ids_device.get()),
                                static_cast<const void*>(qkv_fused.get()), static_cast<const void*>(ffn_act.get())})
            key.push_back(static_cast<int64_t>(reinterpret_cast<uintptr_t>(ptr)));
        run_step_launches(key, launch_step);
    } else {
        launch_step();
    }
    finish_output(static_cast<int64_t>(out_rows.size()), out);
    host_issue_ms += std::chrono::duration<double, std::milli>(issued_at - step_start).count();
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

// A step's launches from its graph, or captured into one (see StepGraph), or run directly the first
// time a shape is seen (one-time set-ups such as kernel attributes and cuBLAS state then happen
// outside a capture).
void GpuEngine::Impl::run_step_launches(const std::vector<int64_t>& key, const std::function<void()>& launch) {
    for (const auto& g : step_graphs)
        if (g->key == key) {
            FREEKV_CUDA_CHECK(cudaGraphLaunch(g->exec, main));
            ++graph_steps;
            return;
        }
    if (std::find(step_shapes_seen.begin(), step_shapes_seen.end(), key) == step_shapes_seen.end()) {
        step_shapes_seen.push_back(key);
        if (step_shapes_seen.size() > 4 * kMaxStepGraphs) step_shapes_seen.pop_front();
        launch();
        return;
    }
    cudaGraph_t graph = nullptr;
    FREEKV_CUDA_CHECK(cudaStreamBeginCapture(main, cudaStreamCaptureModeThreadLocal));
    try {
        launch();
    } catch (...) {
        if (cudaStreamEndCapture(main, &graph) == cudaSuccess && graph != nullptr) cudaGraphDestroy(graph);
        (void)cudaGetLastError();
        throw;
    }
    FREEKV_CUDA_CHECK(cudaStreamEndCapture(main, &graph));
    auto g = std::make_unique<StepGraph>();
    g->key = key;
    const cudaError_t made = cudaGraphInstantiate(&g->exec, graph, 0);
    cudaGraphDestroy(graph);
    FREEKV_CUDA_CHECK(made);
    FREEKV_CUDA_CHECK(cudaGraphLaunch(g->exec, main));
    ++graph_steps;
    step_graphs.push_back(std::move(g));
    if (step_graphs.size() > kMaxStepGraphs) step_graphs.pop_front();
}

}  // namespace freekv::gpu
