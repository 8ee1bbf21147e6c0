// gpu_layers.cu: the model's dense pieces on the GPU engine's main stream: activations, the
// q/k/v projections with RoPE, attention output and MLP, and the logits (or their device top-k).
#include "gpu/gpu_engine_impl.cuh"

namespace freekv::gpu {

// ---------------------------------------------------------------- model pieces

void GpuEngine::Impl::ensure_activations(int64_t n) {
    const int64_t q_dim = c.n_head * c.head_dim;
    for (auto* a : {&x, &h, &proj}) a->resize(n * c.n_embd);
    attn.resize(n * q_dim);
    qkv_rows.resize(n * (q_dim + 2 * row()));
    q.p = qkv_rows.get();
    k.p = q.p + n * q_dim;
    v.p = k.p + n * row();
    gate_up_rows.resize(n * 2 * c.n_ff);
    gate.p = gate_up_rows.get();
    up.p = gate.p + n * c.n_ff;
    scratch_bf16.resize(n * std::max({c.n_embd, q_dim, c.n_ff}));
    if (!w().layers[0]->wqkv.empty() && !bf16_gemm_rows(n)) {  // the fused products' GEMV rows
        qkv_fused.resize(n * (q_dim + 2 * row()));
        ffn_act.resize(n * c.n_ff);
    }
}

// Prefill-sized forwards with bf16 weights round each activation to bf16 once, in the kernel that
// makes it, and add the o and down products into the residual inside the GEMM; the products are
// the ones matmul_bf16 computes. Decode rows (the GEMV) and f32 engines take matmul.
bool GpuEngine::Impl::bf16_gemm_rows(int64_t n) const { return !w().layers[0]->wq.ref().f32 && cuda::matmul_rows_use_gemm(n); }

static const uint16_t* bf16_of(const cuda::WeightRef& r) { return static_cast<const uint16_t*>(r.p); }

void GpuEngine::Impl::qkv(int64_t il, int64_t n, bool rope) {
    const auto& lw = *w().layers[sz(il)];
    const int64_t q_dim = c.n_head * c.head_dim;
    if (bf16_gemm_rows(n)) {
        uint16_t* hb = scratch_bf16.get();
        cuda::rms_norm_bf16(x.get(), n, c.n_embd, lw.attn_norm.ref(), c.rms_norm_eps, hb, main);
        cuda::gemm_bf16(hb, n, bf16_of(lw.wq.ref()), q_dim, c.n_embd, q.get(), bf16_of(lw.bq.ref()), false, main);
        cuda::gemm_bf16(hb, n, bf16_of(lw.wk.ref()), row(), c.n_embd, k.get(), bf16_of(lw.bk.ref()), false, main);
        cuda::gemm_bf16(hb, n, bf16_of(lw.wv.ref()), row(), c.n_embd, v.get(), bf16_of(lw.bv.ref()), false, main);
    } else {
        uint16_t* hb = gemv_input_bf16();
        const bool ready = hb != nullptr;
        cuda::rms_norm(x.get(), n, c.n_embd, lw.attn_norm.ref(), c.rms_norm_eps, h.get(), main, hb);
        if (n == 1 && !lw.wqkv.empty()) {  // one row: q, k and v are the fused product's row
            cuda::matmul(h.get(), n, lw.wqkv.ref(), q_dim + 2 * row(), c.n_embd, q.get(), lw.bqkv.ref(), scratch_bf16.get(), main,
                         false, ready);
        } else {
            cuda::matmul(h.get(), n, lw.wq.ref(), q_dim, c.n_embd, q.get(), lw.bq.ref(), scratch_bf16.get(), main, false, ready);
            cuda::matmul(h.get(), n, lw.wk.ref(), row(), c.n_embd, k.get(), lw.bk.ref(), scratch_bf16.get(), main, false, ready);
            cuda::matmul(h.get(), n, lw.wv.ref(), row(), c.n_embd, v.get(), lw.bv.ref(), scratch_bf16.get(), main, false, ready);
        }
    }
    if (!rope) return;
    const bool neox = c.rope_style == RopeStyle::kNeox;
    cuda::rope(q.get(), n, c.n_head, c.head_dim, positions.get(), w().inv_freq.get(), neox, main);
    cuda::rope(k.get(), n, c.n_head_kv, c.head_dim, positions.get(), w().inv_freq.get(), neox, main);
}

const float* GpuEngine::Impl::qkv_for_append(int64_t il, int64_t n) {
    const auto& lw = *w().layers[sz(il)];
    if (lw.wqkv.empty() || bf16_gemm_rows(n)) {
        qkv(il, n, false);
        return nullptr;
    }
    // One GEMV instead of three: for several rows its output interleaves them ([n][q | k | v]),
    // which rope_append reads as it is.
    const int64_t width = c.n_head * c.head_dim + 2 * row();
    uint16_t* hb = gemv_input_bf16();
    cuda::rms_norm(x.get(), n, c.n_embd, lw.attn_norm.ref(), c.rms_norm_eps, h.get(), main, hb);
    cuda::matmul(h.get(), n, lw.wqkv.ref(), width, c.n_embd, qkv_fused.get(), lw.bqkv.ref(), scratch_bf16.get(), main, false,
                 hb != nullptr);
    return qkv_fused.get();
}

uint16_t* GpuEngine::Impl::gemv_input_bf16() const { return w().layers[0]->wq.ref().f32 ? nullptr : scratch_bf16.get(); }

void GpuEngine::Impl::mlp_and_attention_out(int64_t il, int64_t n, bool attn_in_scratch, int gemm_sms_after_gate,
                                            bool attn_bf16_too) {
    const auto& lw = *w().layers[sz(il)];
    const int64_t q_dim = c.n_head * c.head_dim;
    if (bf16_gemm_rows(n)) {
        uint16_t* b = scratch_bf16.get();
        if (!attn_in_scratch) cuda::to_bf16(attn.get(), n * q_dim, b, main);
        cuda::gemm_bf16(b, n, bf16_of(lw.wo.ref()), c.n_embd, q_dim, x.get(), nullptr, adds_residual(), main);
        sum_over_ranks(x.get(), n * c.n_embd);
        cuda::rms_norm_bf16(x.get(), n, c.n_embd, lw.ffn_norm.ref(), c.rms_norm_eps, b, main);
        cuda::gemm_bf16(b, n, bf16_of(lw.w_gate.ref()), c.n_ff, c.n_embd, gate.get(), nullptr, false, main);
        if (gemm_sms_after_gate >= 0) cuda::set_gemm_sm_target(gemm_sms_after_gate);
        cuda::gemm_bf16(b, n, bf16_of(lw.w_up.ref()), c.n_ff, c.n_embd, up.get(), nullptr, false, main);
        cuda::silu_mul_bf16(gate.get(), up.get(), n * c.n_ff, b, main);
        cuda::gemm_bf16(b, n, bf16_of(lw.w_down.ref()), c.n_embd, c.n_ff, x.get(), nullptr, adds_residual(), main);
        sum_over_ranks(x.get(), n * c.n_embd);
        return;
    }
    FREEKV_CHECK(!attn_in_scratch, "the attention output is in bf16 only on the bf16 GEMM path");
    // The GEMVs read the fp32 activations; their bf16 copies in scratch_bf16 (written beside them
    // by the kernel that made them) spare a conversion kernel where cuBLAS was chosen.
    uint16_t* hb = gemv_input_bf16();
    const bool ready = hb != nullptr;
    cuda::matmul(attn.get(), n, lw.wo.ref(), c.n_embd, q_dim, x.get(), {}, scratch_bf16.get(), main, adds_residual(),
                 attn_bf16_too && ready);  // x += o
    sum_over_ranks(x.get(), n * c.n_embd);
    cuda::rms_norm(x.get(), n, c.n_embd, lw.ffn_norm.ref(), c.rms_norm_eps, h.get(), main, hb);
    const float* act = gate.get();  // silu(gate) * up, the down projection's input
    if (!lw.w_gate_up.empty()) {  // one GEMV for gate and up: its rows are [gate | up], interleaved for several rows
        cuda::matmul(h.get(), n, lw.w_gate_up.ref(), 2 * c.n_ff, c.n_embd, gate_up_rows.get(), {}, scratch_bf16.get(), main, false,
                     ready);
        if (gemm_sms_after_gate >= 0) cuda::set_gemm_sm_target(gemm_sms_after_gate);
        cuda::silu_mul_rows(gate_up_rows.get(), n, c.n_ff, ffn_act.get(), main, hb);
        act = ffn_act.get();
    } else {
        cuda::matmul(h.get(), n, lw.w_gate.ref(), c.n_ff, c.n_embd, gate.get(), {}, scratch_bf16.get(), main, false, ready);
        if (gemm_sms_after_gate >= 0) cuda::set_gemm_sm_target(gemm_sms_after_gate);
        cuda::matmul(h.get(), n, lw.w_up.ref(), c.n_ff, c.n_embd, up.get(), {}, scratch_bf16.get(), main, false, ready);
        cuda::silu_mul(gate.get(), up.get(), n * c.n_ff, main, hb);
    }
    cuda::matmul(act, n, lw.w_down.ref(), c.n_embd, c.n_ff, x.get(), {}, scratch_bf16.get(), main, adds_residual(),
                 ready);  // x += down
    sum_over_ranks(x.get(), n * c.n_embd);
}

void GpuEngine::Impl::sum_over_ranks(float* data, int64_t n) {
    if (tp.peers != nullptr) tp.peers->all_reduce_sum(data, n, main);
}

void GpuEngine::Impl::output_logits(std::span<const int64_t> out_rows, std::vector<float>& out) {
    prepare_output(static_cast<int64_t>(out_rows.size()));
    launch_output(out_rows);
    finish_output(static_cast<int64_t>(out_rows.size()), out);
}

void GpuEngine::Impl::prepare_output(int64_t n_out) {
    if (n_out == 0) return;
    h.resize(n_out * c.n_embd);
    logits.resize(n_out * c.n_vocab);
    scratch_bf16.resize(n_out * c.n_embd);
    if (top_k > 0) {
        const int64_t scratch = cuda::top_k_scratch_elems(static_cast<int32_t>(n_out), c.n_vocab, top_k);
        top_scratch_values.resize(scratch);
        top_scratch_ids.resize(scratch);
        top_values.resize(n_out * top_k);
        top_ids_device.resize(n_out * top_k);
    }
}

void GpuEngine::Impl::launch_output(std::span<const int64_t> out_rows) {
    const auto n_out = static_cast<int64_t>(out_rows.size());
    if (n_out == 0) return;
    // Gather the wanted rows of x into proj, then norm and output head over them only.
    for (int64_t i = 0; i < n_out; ++i)
        FREEKV_CUDA_CHECK(cudaMemcpyAsync(proj.get() + i * c.n_embd, x.get() + out_rows[sz(i)] * c.n_embd,
                                          sz(c.n_embd) * 4, cudaMemcpyDeviceToDevice, main));
    uint16_t* hb = gemv_input_bf16();
    cuda::rms_norm(proj.get(), n_out, c.n_embd, w().output_norm.ref(), c.rms_norm_eps, h.get(), main, hb);
    cuda::matmul(h.get(), n_out, w().output.ref(), c.n_vocab, c.n_embd, logits.get(), {}, scratch_bf16.get(), main, false,
                 hb != nullptr);
    if (top_k > 0)
        cuda::top_k(logits.get(), static_cast<int32_t>(n_out), c.n_vocab, top_k, top_scratch_values.get(), top_scratch_ids.get(),
                    top_ids_device.get(), top_values.get(), main);
}

void GpuEngine::Impl::finish_output(int64_t n_out, std::vector<float>& out) {
    issued_at = std::chrono::steady_clock::now();  // before the copies into pageable memory, which wait for the stream
    if (n_out > 0 && top_k > 0) {
        out.resize(sz(n_out * top_k));
        top_ids->resize(sz(n_out * top_k));
        FREEKV_CUDA_CHECK(cudaMemcpyAsync(out.data(), top_values.get(), out.size() * 4, cudaMemcpyDeviceToHost, main));
        FREEKV_CUDA_CHECK(cudaMemcpyAsync(top_ids->data(), top_ids_device.get(), out.size() * 4, cudaMemcpyDeviceToHost, main));
    } else {
        out.resize(sz(n_out * c.n_vocab));
        if (n_out > 0) FREEKV_CUDA_CHECK(cudaMemcpyAsync(out.data(), logits.get(), out.size() * 4, cudaMemcpyDeviceToHost, main));
    }
    FREEKV_CUDA_CHECK(cudaStreamSynchronize(main));
}

}  // namespace freekv::gpu
