// synthetic_model.cpp: named shapes and their random weights (splitmix64 per element, so the fill
// is parallel and still deterministic).
#include "model/synthetic_model.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/system_memory.h"

namespace freekv {

namespace {

uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

}  // namespace

ModelConfig named_shape(const std::string& name) {
    ModelConfig c;
    c.arch = "llama";
    c.rms_norm_eps = 1e-5f;
    c.rope_theta = 500000.0;
    if (name == "tiny") {
        c.n_layer = 4, c.n_embd = 256, c.n_ff = 512, c.n_head = 8, c.n_head_kv = 2, c.head_dim = 32, c.n_vocab = 1024;
        c.n_ctx_train = 32768;
    } else if (name == "llama-3.1-8b") {
        c.n_layer = 32, c.n_embd = 4096, c.n_ff = 14336, c.n_head = 32, c.n_head_kv = 8, c.head_dim = 128, c.n_vocab = 128256;
        c.n_ctx_train = 131072;
    } else if (name == "llama-3.1-70b") {
        c.n_layer = 80, c.n_embd = 8192, c.n_ff = 28672, c.n_head = 64, c.n_head_kv = 8, c.head_dim = 128, c.n_vocab = 128256;
        c.n_ctx_train = 131072;
    } else if (name == "qwen2.5-7b") {
        c.arch = "qwen2", c.qkv_bias = true, c.rope_theta = 1000000.0, c.rms_norm_eps = 1e-6f;
        c.n_layer = 28, c.n_embd = 3584, c.n_ff = 18944, c.n_head = 28, c.n_head_kv = 4, c.head_dim = 128, c.n_vocab = 152064;
        c.n_ctx_train = 131072;
    } else {
        FREEKV_FAIL("--shape '{}' is not a named shape ({})", name, kNamedShapes);
    }
    c.validate("--shape " + name);
    return c;
}

LoadedModel make_synthetic_model(const std::string& name, uint64_t seed) {
    return make_synthetic_model(named_shape(name), name, seed);
}

std::vector<uint8_t> synthetic_block(const SyntheticTensor& t, int64_t r0, int64_t rc, int64_t c0, int64_t cc) {
    const int64_t cols = t.shape.back();
    std::vector<uint8_t> bytes(static_cast<size_t>(rc * cc) * 2);
    auto* out = reinterpret_cast<uint16_t*>(bytes.data());
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rc; ++r)
        for (int64_t j = 0; j < cc; ++j) {
            const auto i = static_cast<uint64_t>((r0 + r) * cols + c0 + j);
            const uint64_t bits = splitmix64(t.stream * 0x100000001b3ull + i);
            const float u = static_cast<float>(bits >> 40) / static_cast<float>(1ull << 24) * 2.0f - 1.0f;
            out[r * cc + j] = f32_to_bf16(t.centre + t.scale * u);
        }
    return bytes;
}

std::vector<SyntheticTensor> synthetic_tensors(const ModelConfig& c, uint64_t seed) {
    std::vector<SyntheticTensor> out;
    uint64_t stream = seed * 1000003ull;
    const float w = 1.0f / std::sqrt(static_cast<float>(c.n_embd));  // keeps activations O(1)
    auto add = [&](const std::string& tensor, std::vector<int64_t> shape, float centre, float scale) {
        out.push_back({tensor, std::move(shape), ++stream, centre, scale});
    };
    const int64_t q_dim = c.n_head * c.head_dim, kv_dim = c.n_head_kv * c.head_dim;
    add("model.embed_tokens.weight", {c.n_vocab, c.n_embd}, 0.0f, 1.0f);
    add("model.norm.weight", {c.n_embd}, 1.0f, 0.1f);
    add("lm_head.weight", {c.n_vocab, c.n_embd}, 0.0f, w);
    for (int64_t il = 0; il < c.n_layer; ++il) {
        const std::string p = "model.layers." + std::to_string(il) + ".";
        add(p + "input_layernorm.weight", {c.n_embd}, 1.0f, 0.1f);
        add(p + "post_attention_layernorm.weight", {c.n_embd}, 1.0f, 0.1f);
        add(p + "self_attn.q_proj.weight", {q_dim, c.n_embd}, 0.0f, w);
        add(p + "self_attn.k_proj.weight", {kv_dim, c.n_embd}, 0.0f, w);
        add(p + "self_attn.v_proj.weight", {kv_dim, c.n_embd}, 0.0f, w);
        add(p + "self_attn.o_proj.weight", {c.n_embd, q_dim}, 0.0f, 1.0f / std::sqrt(static_cast<float>(q_dim)));
        if (c.qkv_bias) {
            add(p + "self_attn.q_proj.bias", {q_dim}, 0.0f, 0.1f);
            add(p + "self_attn.k_proj.bias", {kv_dim}, 0.0f, 0.1f);
            add(p + "self_attn.v_proj.bias", {kv_dim}, 0.0f, 0.1f);
        }
        add(p + "mlp.gate_proj.weight", {c.n_ff, c.n_embd}, 0.0f, w);
        add(p + "mlp.up_proj.weight", {c.n_ff, c.n_embd}, 0.0f, w);
        add(p + "mlp.down_proj.weight", {c.n_embd, c.n_ff}, 0.0f, 1.0f / std::sqrt(static_cast<float>(c.n_ff)));
    }
    return out;
}

LoadedModel make_synthetic_model(const ModelConfig& config, const std::string& name, uint64_t seed) {
    config.validate("synthetic model " + name);
    const auto tensors = synthetic_tensors(config, seed);
    int64_t bytes = 0;
    for (const SyntheticTensor& t : tensors) bytes += 2 * t.rows() * t.shape.back();
    const int64_t available = system_memory().available;
    if (available > 0 && bytes > available)
        FREEKV_FAIL("the synthetic model {} needs {:.1f} GiB of host memory for its weights and {:.1f} GiB are available; "
                    "pick a smaller --shape", name, static_cast<double>(bytes) / (1 << 30), static_cast<double>(available) / (1 << 30));
    LoadedModel m;
    m.path = "synthetic:" + name;
    m.format = "synthetic";
    m.config = config;
    m.tensors = std::make_unique<TensorSource>();
    for (const SyntheticTensor& t : tensors)
        m.tensors->add_owned(t.name, DType::kBF16, t.shape, synthetic_block(t, 0, t.rows(), 0, t.shape.back()));
    m.weights_dtype = "bf16";
    m.model = std::make_unique<LlamaModel>(m.config, LlamaWeights::bind(*m.tensors, m.config));
    return m;
}

}  // namespace freekv
