// cuda_llama.cu: see cuda_llama.cuh. Device buffers are owned by a small RAII vector type; every
// step runs on one stream and synchronizes once, when the logits are copied back.
#include <cuda_runtime.h>

#include <numeric>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_llama.cuh"
#include "backend/cuda/ops_cuda.cuh"
#include "core/dtype.h"

namespace freekv::cuda {

namespace {

template <typename T>
class DeviceArray {
public:
    DeviceArray() = default;
    explicit DeviceArray(int64_t n) { resize(n); }
    ~DeviceArray() { cudaFree(data_); }
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;
    void resize(int64_t n) {
        if (n <= size_) return;
        cudaFree(data_);
        data_ = nullptr;
        const cudaError_t e = cudaMalloc(&data_, static_cast<size_t>(n) * sizeof(T));
        FREEKV_CHECK(e == cudaSuccess, "GPU out of memory allocating {:.1f} MiB ({}); use a smaller context or model",
                     static_cast<double>(n * static_cast<int64_t>(sizeof(T))) / 1048576.0, cudaGetErrorString(e));
        size_ = n;
    }
    void upload(const T* host, int64_t n) {
        resize(n);
        FREEKV_CUDA_CHECK(cudaMemcpy(data_, host, static_cast<size_t>(n) * sizeof(T), cudaMemcpyHostToDevice));
    }
    T* get() const { return data_; }

private:
    T* data_ = nullptr;
    int64_t size_ = 0;
};

// A weight as bf16 on the device (converted from f16/f32/q8_0 on the host when needed).
void upload_bf16(const WeightView& w, DeviceArray<uint16_t>& out) {
    const int64_t n = w.numel();
    std::vector<uint16_t> host(static_cast<size_t>(n));
    if (w.dtype == DType::kBF16) {
        std::copy_n(static_cast<const uint16_t*>(w.data), n, host.data());
    } else {
        std::vector<float> f(static_cast<size_t>(n));
        for (int64_t r = 0; r < w.rows(); ++r) convert_to_f32(w.dtype, w.row(r), f.data() + r * w.cols(), w.cols());
        for (int64_t i = 0; i < n; ++i) host[static_cast<size_t>(i)] = f32_to_bf16(f[static_cast<size_t>(i)]);
    }
    out.upload(host.data(), n);
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i < n) x[i] += y[i];
}

__device__ uint16_t to_bf16_bits(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}

// Writes row t of k/v ([n][row]) to position pos0 + t of the cache ([pages][page_size][row]).
__global__ void append_kernel(const float* k, const float* v, int64_t n, int64_t row, int64_t pos0, uint16_t* k_cache,
                              uint16_t* v_cache) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= n * row) return;
    const int64_t t = i / row, e = i % row;
    k_cache[(pos0 + t) * row + e] = to_bf16_bits(k[i]);
    v_cache[(pos0 + t) * row + e] = to_bf16_bits(v[i]);
}

unsigned blocks(int64_t n) { return static_cast<unsigned>((n + 255) / 256); }

}  // namespace

struct CudaLlama::Impl {
    ModelConfig c;
    int64_t max_tokens = 0, page_size = 32;
    struct Layer {
        DeviceArray<uint16_t> attn_norm, wq, wk, wv, wo, bq, bk, bv, ffn_norm, w_gate, w_up, w_down;
    };
    std::vector<std::unique_ptr<Layer>> layers;
    DeviceArray<uint16_t> token_embd, output_norm, output;
    DeviceArray<uint16_t> k_cache, v_cache;  // [L][max_tokens][n_head_kv][head_dim] (pages are page_size rows)
    DeviceArray<float> inv_freq;
    DeviceArray<float> x, h, q, k, v, attn, proj, gate, up, logits;
    DeviceArray<uint16_t> scratch_bf16;
    DeviceArray<int32_t> ids, positions, page_ids, n_pages, last_len;
    cudaStream_t stream = nullptr;
};

CudaLlama::CudaLlama(const ModelConfig& config, const LlamaWeights& w, int64_t max_tokens) : impl_(std::make_unique<Impl>()) {
    Impl& m = *impl_;
    m.c = config;
    m.max_tokens = (max_tokens + m.page_size - 1) / m.page_size * m.page_size;
    FREEKV_CUDA_CHECK(cudaStreamCreate(&m.stream));
    upload_bf16(w.token_embd, m.token_embd);
    upload_bf16(w.output_norm, m.output_norm);
    upload_bf16(w.output, m.output);
    for (const LlamaLayerWeights& lw : w.layers) {
        auto l = std::make_unique<Impl::Layer>();
        upload_bf16(lw.attn_norm, l->attn_norm);
        upload_bf16(lw.wq, l->wq);
        upload_bf16(lw.wk, l->wk);
        upload_bf16(lw.wv, l->wv);
        upload_bf16(lw.wo, l->wo);
        if (config.qkv_bias) {
            upload_bf16(lw.bq, l->bq);
            upload_bf16(lw.bk, l->bk);
            upload_bf16(lw.bv, l->bv);
        }
        upload_bf16(lw.ffn_norm, l->ffn_norm);
        upload_bf16(lw.w_gate, l->w_gate);
        upload_bf16(lw.w_up, l->w_up);
        upload_bf16(lw.w_down, l->w_down);
        m.layers.push_back(std::move(l));
    }
    const int64_t row = config.n_head_kv * config.head_dim;
    m.k_cache.resize(config.n_layer * m.max_tokens * row);
    m.v_cache.resize(config.n_layer * m.max_tokens * row);
    const auto inv = config.rope_inv_freq();
    m.inv_freq.upload(inv.data(), static_cast<int64_t>(inv.size()));
}

CudaLlama::~CudaLlama() {
    if (impl_ && impl_->stream) cudaStreamDestroy(impl_->stream);
}

void CudaLlama::forward(std::span<const int32_t> tokens, std::vector<float>& logits) {
    Impl& m = *impl_;
    const ModelConfig& c = m.c;
    const auto n = static_cast<int64_t>(tokens.size());
    FREEKV_CHECK(n > 0 && n_tokens_ + n <= m.max_tokens, "GPU KV cache holds {} tokens; {} + {} do not fit",
                 m.max_tokens, n_tokens_, n);
    const int64_t q_dim = c.n_head * c.head_dim, row = c.n_head_kv * c.head_dim;
    void* s = m.stream;
    // ---- inputs: ids, positions, one causal page list per token (identity pages, shared by all heads) ----
    std::vector<int32_t> positions(static_cast<size_t>(n)), n_pages(static_cast<size_t>(n)), last_len(static_cast<size_t>(n));
    const int64_t max_list = (n_tokens_ + n + m.page_size - 1) / m.page_size;
    std::vector<int32_t> lists(static_cast<size_t>(n * c.n_head_kv * max_list));
    for (int64_t t = 0; t < n; ++t) {
        const int64_t pos = n_tokens_ + t;
        positions[static_cast<size_t>(t)] = static_cast<int32_t>(pos);
        n_pages[static_cast<size_t>(t)] = static_cast<int32_t>(pos / m.page_size + 1);
        last_len[static_cast<size_t>(t)] = static_cast<int32_t>(pos % m.page_size + 1);
        for (int64_t h = 0; h < c.n_head_kv; ++h)
            std::iota(lists.begin() + (t * c.n_head_kv + h) * max_list, lists.begin() + (t * c.n_head_kv + h + 1) * max_list, 0);
    }
    m.ids.upload(tokens.data(), n);
    m.positions.upload(positions.data(), n);
    m.page_ids.upload(lists.data(), static_cast<int64_t>(lists.size()));
    m.n_pages.upload(n_pages.data(), n);
    m.last_len.upload(last_len.data(), n);
    for (auto* a : {&m.x, &m.h, &m.proj}) a->resize(n * c.n_embd);
    for (auto* a : {&m.q, &m.attn}) a->resize(n * q_dim);
    for (auto* a : {&m.k, &m.v}) a->resize(n * row);
    for (auto* a : {&m.gate, &m.up}) a->resize(n * c.n_ff);
    m.scratch_bf16.resize(n * std::max({c.n_embd, q_dim, c.n_ff}));

    embedding(m.token_embd.get(), m.ids.get(), n, c.n_embd, m.x.get(), s);
    for (int64_t il = 0; il < c.n_layer; ++il) {
        const Impl::Layer& w = *m.layers[static_cast<size_t>(il)];
        rms_norm(m.x.get(), n, c.n_embd, w.attn_norm.get(), c.rms_norm_eps, m.h.get(), s);
        matmul_bf16(m.h.get(), n, w.wq.get(), q_dim, c.n_embd, m.q.get(), c.qkv_bias ? w.bq.get() : nullptr, m.scratch_bf16.get(), s);
        matmul_bf16(m.h.get(), n, w.wk.get(), row, c.n_embd, m.k.get(), c.qkv_bias ? w.bk.get() : nullptr, m.scratch_bf16.get(), s);
        matmul_bf16(m.h.get(), n, w.wv.get(), row, c.n_embd, m.v.get(), c.qkv_bias ? w.bv.get() : nullptr, m.scratch_bf16.get(), s);
        const bool neox = c.rope_style == RopeStyle::kNeox;
        rope(m.q.get(), n, c.n_head, c.head_dim, m.positions.get(), m.inv_freq.get(), neox, s);
        rope(m.k.get(), n, c.n_head_kv, c.head_dim, m.positions.get(), m.inv_freq.get(), neox, s);
        uint16_t* kc = m.k_cache.get() + il * m.max_tokens * row;
        uint16_t* vc = m.v_cache.get() + il * m.max_tokens * row;
        append_kernel<<<blocks(n * row), 256, 0, m.stream>>>(m.k.get(), m.v.get(), n, row, n_tokens_, kc, vc);
        FREEKV_CUDA_CHECK(cudaGetLastError());
        PagesAttentionArgs a;  // every token is its own "sequence" over the shared cache, causally cut
        a.q = m.q.get();
        a.k = kc;
        a.v = vc;
        a.page_ids = m.page_ids.get();
        a.n_pages = m.n_pages.get();
        a.last_len = m.last_len.get();
        a.out = m.attn.get();
        a.n_seq = static_cast<int32_t>(n), a.n_head = static_cast<int32_t>(c.n_head);
        a.n_head_kv = static_cast<int32_t>(c.n_head_kv), a.head_dim = static_cast<int32_t>(c.head_dim);
        a.page_size = static_cast<int32_t>(m.page_size), a.max_list = static_cast<int32_t>(max_list);
        a.stride_seq = 0, a.stride_page = m.page_size * row, a.stride_tok = row;
        attention_pages(a, s);
        matmul_bf16(m.attn.get(), n, w.wo.get(), c.n_embd, q_dim, m.proj.get(), nullptr, m.scratch_bf16.get(), s);
        add_kernel<<<blocks(n * c.n_embd), 256, 0, m.stream>>>(m.x.get(), m.proj.get(), n * c.n_embd);
        rms_norm(m.x.get(), n, c.n_embd, w.ffn_norm.get(), c.rms_norm_eps, m.h.get(), s);
        matmul_bf16(m.h.get(), n, w.w_gate.get(), c.n_ff, c.n_embd, m.gate.get(), nullptr, m.scratch_bf16.get(), s);
        matmul_bf16(m.h.get(), n, w.w_up.get(), c.n_ff, c.n_embd, m.up.get(), nullptr, m.scratch_bf16.get(), s);
        silu_mul(m.gate.get(), m.up.get(), n * c.n_ff, s);
        matmul_bf16(m.gate.get(), n, w.w_down.get(), c.n_embd, c.n_ff, m.proj.get(), nullptr, m.scratch_bf16.get(), s);
        add_kernel<<<blocks(n * c.n_embd), 256, 0, m.stream>>>(m.x.get(), m.proj.get(), n * c.n_embd);
        FREEKV_CUDA_CHECK(cudaGetLastError());
    }
    const float* last = m.x.get() + (n - 1) * c.n_embd;
    rms_norm(last, 1, c.n_embd, m.output_norm.get(), c.rms_norm_eps, m.h.get(), s);
    m.logits.resize(c.n_vocab);
    matmul_bf16(m.h.get(), 1, m.output.get(), c.n_vocab, c.n_embd, m.logits.get(), nullptr, m.scratch_bf16.get(), s);
    logits.resize(static_cast<size_t>(c.n_vocab));
    FREEKV_CUDA_CHECK(cudaMemcpyAsync(logits.data(), m.logits.get(), logits.size() * sizeof(float), cudaMemcpyDeviceToHost,
                                      m.stream));
    FREEKV_CUDA_CHECK(cudaStreamSynchronize(m.stream));
    n_tokens_ += n;
}

}  // namespace freekv::cuda
