// gpu_weights.cu: the model's weights uploaded to the device in the engine's dtype, and the
// device probes (gpu_available, device_memory).
#include "gpu/gpu_engine_impl.cuh"

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

}  // namespace freekv::gpu
