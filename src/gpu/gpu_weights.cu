// gpu_weights.cu: the model's weights uploaded to the device in the engine's dtype, the decode GEMV
// measured per bf16 matrix shape once they are there, the device probes (gpu_available,
// device_memory) and the profiler range (profiler_range).
#include "gpu/gpu_engine_impl.cuh"

#include <cuda_profiler_api.h>

#include <map>

namespace freekv::gpu {

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

// The weights `parts` as consecutive bf16 rows of one device buffer (each converted as upload_weight
// would); each part's DeviceWeight then refers to its rows (part_of) and `out` owns them.
static void upload_fused_bf16(std::initializer_list<std::pair<const WeightView*, DeviceWeight*>> parts, DeviceWeight& out,
                              int64_t& bytes) {
    int64_t total = 0;
    for (const auto& [view, dw] : parts) total += view->numel();
    std::vector<uint16_t> host(sz(total));
    int64_t at = 0;
    std::vector<float> f;
    for (const auto& [view, dw] : parts) {
        const int64_t n = view->numel();
        if (view->dtype == DType::kBF16) {
            std::copy_n(static_cast<const uint16_t*>(view->data), n, host.data() + at);
        } else {
            f.resize(sz(n));
            for (int64_t r = 0; r < view->rows(); ++r) convert_to_f32(view->dtype, view->row(r), f.data() + r * view->cols(), view->cols());
            for (int64_t i = 0; i < n; ++i) host[sz(at + i)] = f32_to_bf16(f[sz(i)]);
        }
        at += n;
    }
    out.bf16.upload(host.data(), total);
    bytes += total * 2;
    at = 0;
    for (const auto& [view, dw] : parts) {
        dw->part_of = out.bf16.get() + at;
        at += view->numel();
    }
}

GpuWeights::GpuWeights(const ModelConfig& config, const LlamaWeights& w, GpuDtype dtype)
    : config_(config), dtype_(dtype), impl_(std::make_unique<Impl>()) {
    std::string why;
    FREEKV_CHECK(gpu_available(&why), "no CUDA device: {}; use --device cpu", why);
    Impl& m = *impl_;
    const bool f32 = dtype == GpuDtype::kF32;
    upload_weight(w.token_embd, f32, m.token_embd, bytes_);
    embedding_bytes_ = bytes_;
    upload_weight(w.output_norm, f32, m.output_norm, bytes_);
    upload_weight(w.output, f32, m.output, bytes_);
    for (const LlamaLayerWeights& lw : w.layers) {
        auto l = std::make_unique<Impl::Layer>();
        upload_weight(lw.attn_norm, f32, l->attn_norm, bytes_);
        if (f32) {
            upload_weight(lw.wq, f32, l->wq, bytes_);
            upload_weight(lw.wk, f32, l->wk, bytes_);
            upload_weight(lw.wv, f32, l->wv, bytes_);
            if (config.qkv_bias) {
                upload_weight(lw.bq, f32, l->bq, bytes_);
                upload_weight(lw.bk, f32, l->bk, bytes_);
                upload_weight(lw.bv, f32, l->bv, bytes_);
            }
        } else {
            upload_fused_bf16({{&lw.wq, &l->wq}, {&lw.wk, &l->wk}, {&lw.wv, &l->wv}}, l->wqkv, bytes_);
            if (config.qkv_bias) upload_fused_bf16({{&lw.bq, &l->bq}, {&lw.bk, &l->bk}, {&lw.bv, &l->bv}}, l->bqkv, bytes_);
        }
        upload_weight(lw.wo, f32, l->wo, bytes_);
        upload_weight(lw.ffn_norm, f32, l->ffn_norm, bytes_);
        if (f32) {
            upload_weight(lw.w_gate, f32, l->w_gate, bytes_);
            upload_weight(lw.w_up, f32, l->w_up, bytes_);
        } else {
            upload_fused_bf16({{&lw.w_gate, &l->w_gate}, {&lw.w_up, &l->w_up}}, l->w_gate_up, bytes_);
        }
        upload_weight(lw.w_down, f32, l->w_down, bytes_);
        m.layers.push_back(std::move(l));
    }
    const auto inv = config.rope_inv_freq();
    m.inv_freq.upload(inv.data(), static_cast<int64_t>(inv.size()));
    FREEKV_CUDA_CHECK(cudaDeviceSynchronize());
    if (!f32) measure_gemvs(w);
}

// The decode GEMV of each bf16 matrix shape, measured over every matrix of that shape (see
// cuda::measure_gemv_choices); the matrices keep a pointer to their shape's choice.
void GpuWeights::measure_gemvs(const LlamaWeights& w) {
    Impl& m = *impl_;
    std::map<std::pair<int64_t, int64_t>, std::vector<DeviceWeight*>> by_shape;
    auto add = [&](DeviceWeight& d, int64_t rows, int64_t cols) {
        if (!d.empty() && d.f32.size() == 0) by_shape[{rows, cols}].push_back(&d);
    };
    const ModelConfig& c = config_;
    const int64_t q_dim = c.n_head * c.head_dim, kv_dim = c.n_head_kv * c.head_dim;
    add(m.output, w.output.rows(), w.output.cols());
    for (size_t il = 0; il < w.layers.size(); ++il) {
        const LlamaLayerWeights& lw = w.layers[il];
        Impl::Layer& l = *m.layers[il];
        add(l.wqkv, q_dim + 2 * kv_dim, c.n_embd);
        add(l.w_gate_up, 2 * c.n_ff, c.n_embd);
        add(l.wq, lw.wq.rows(), lw.wq.cols()), add(l.wk, lw.wk.rows(), lw.wk.cols()), add(l.wv, lw.wv.rows(), lw.wv.cols());
        add(l.wo, lw.wo.rows(), lw.wo.cols());
        add(l.w_gate, lw.w_gate.rows(), lw.w_gate.cols()), add(l.w_up, lw.w_up.rows(), lw.w_up.cols());
        add(l.w_down, lw.w_down.rows(), lw.w_down.cols());
    }
    for (auto& [shape, weights] : by_shape) {
        std::vector<const uint16_t*> mats;
        for (const DeviceWeight* d : weights) mats.push_back(static_cast<const uint16_t*>(d->ref().p));
        auto choice = std::make_unique<cuda::GemvChoices>(
            cuda::measure_gemv_choices(mats, shape.first, shape.second, cuda::kGemvChoiceRows));
        for (DeviceWeight* d : weights) d->gemv = choice.get();
        m.gemv_choices.push_back(std::move(choice));
    }
}

std::string GpuWeights::gemv_summary() const {
    auto code = [](cuda::GemvKernel k) {
        switch (k) {
            case cuda::GemvKernel::kSimt: return "s";
            case cuda::GemvKernel::kBlockK2x2: return "b2";
            case cuda::GemvKernel::kBlockK4x1: return "b4";
            case cuda::GemvKernel::kBlockK8x1: return "b8";
            case cuda::GemvKernel::kMma16: return "m1";
            case cuda::GemvKernel::kMma32: return "m2";
            case cuda::GemvKernel::kCublas: return "c";
        }
        return "?";
    };
    std::string out;
    for (const auto& c : impl_->gemv_choices) {
        out += fmt::format("{}{} x {}:", out.empty() ? "" : "; ", c->n, c->k);
        for (int64_t i = 0; i < c->measured_rows; ++i) out += fmt::format(" {}", code(c->kernel[i]));
        out += fmt::format(" (1 row {:.1f} us, default {:.1f}", c->us[0], c->default_us[0]);
        if (c->measured_rows >= 4) out += fmt::format("; 4 rows {:.1f} us, default {:.1f}", c->us[3], c->default_us[3]);
        out += ")";
    }
    return out;
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

void profiler_range(bool on) { FREEKV_CUDA_CHECK(on ? cudaProfilerStart() : cudaProfilerStop()); }

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

}  // namespace freekv::gpu
