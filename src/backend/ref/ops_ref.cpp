// ops_ref.cpp: the reference twin of every op in backend/ops.h. Plain loops, one element at a
// time, fp32 math with double accumulation where it is free; never optimized. It is the oracle
// the CPU (and later CUDA) backend is tested against.
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "backend/ops.h"
#include "core/dtype.h"
#include "core/error.h"

namespace freekv::ref {

void matmul(const float* x, int64_t m, const WeightView& w, float* y, const WeightView* bias) {
    const int64_t n = w.rows(), k = w.cols();
    std::vector<float> row(static_cast<size_t>(k));
    std::vector<float> b(static_cast<size_t>(n), 0.0f);
    if (bias != nullptr && bias->data != nullptr) convert_to_f32(bias->dtype, bias->data, b.data(), n);
    for (int64_t j = 0; j < n; ++j) {
        convert_to_f32(w.dtype, w.row(j), row.data(), k);
        for (int64_t i = 0; i < m; ++i) {
            double acc = 0.0;
            for (int64_t t = 0; t < k; ++t) acc += static_cast<double>(x[i * k + t]) * row[static_cast<size_t>(t)];
            y[i * n + j] = static_cast<float>(acc) + b[static_cast<size_t>(j)];
        }
    }
}

void rms_norm(const float* x, int64_t m, int64_t n, const WeightView& w, float eps, float* y) {
    std::vector<float> weight(static_cast<size_t>(n));
    convert_to_f32(w.dtype, w.data, weight.data(), n);
    for (int64_t i = 0; i < m; ++i) {
        double ss = 0.0;
        for (int64_t j = 0; j < n; ++j) ss += static_cast<double>(x[i * n + j]) * x[i * n + j];
        const float inv = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(n)) + eps);
        for (int64_t j = 0; j < n; ++j) y[i * n + j] = weight[static_cast<size_t>(j)] * (x[i * n + j] * inv);
    }
}

void rope(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          std::span<const float> inv_freq, RopeStyle style) {
    const int64_t half = head_dim / 2;
    for (int64_t t = 0; t < n_tok; ++t) {
        for (int64_t h = 0; h < n_heads; ++h) {
            float* v = x + (t * n_heads + h) * head_dim;
            for (int64_t i = 0; i < half; ++i) {
                // The angle is formed in fp32 as transformers does, then cos/sin taken exactly.
                const float angle = static_cast<float>(positions[t]) * inv_freq[static_cast<size_t>(i)];
                const float c = static_cast<float>(std::cos(static_cast<double>(angle)));
                const float s = static_cast<float>(std::sin(static_cast<double>(angle)));
                const int64_t a = style == RopeStyle::kNeox ? i : 2 * i;
                const int64_t b = style == RopeStyle::kNeox ? i + half : 2 * i + 1;
                const float x0 = v[a], x1 = v[b];
                v[a] = x0 * c - x1 * s;
                v[b] = x1 * c + x0 * s;
            }
        }
    }
}

void silu_mul(float* gate, const float* up, int64_t n) {
    for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void embedding(const WeightView& table, const int32_t* ids, int64_t n_tok, float* out) {
    const int64_t n_embd = table.cols();
    for (int64_t t = 0; t < n_tok; ++t) {
        FREEKV_CHECK(ids[t] >= 0 && ids[t] < table.rows(), "token id {} outside the vocabulary of {}", ids[t],
                     table.rows());
        convert_to_f32(table.dtype, table.row(ids[t]), out + t * n_embd, n_embd);
    }
}

namespace {

// Softmax-weighted sum over n keys of one KV head for one query head, in double.
void attend_one(const float* qh, int64_t head_dim, int64_t n, const std::function<const float*(int64_t)>& key,
                const std::function<const float*(int64_t)>& value, float* o) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
    std::vector<double> p(static_cast<size_t>(n));
    double mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
        const float* k = key(j);
        double s = 0.0;
        for (int64_t d = 0; d < head_dim; ++d) s += static_cast<double>(qh[d]) * k[d];
        p[static_cast<size_t>(j)] = s * scale;
        mx = std::max(mx, p[static_cast<size_t>(j)]);
    }
    double sum = 0.0;
    for (auto& e : p) sum += (e = std::exp(e - mx));
    for (int64_t d = 0; d < head_dim; ++d) {
        double acc = 0.0;
        for (int64_t j = 0; j < n; ++j) acc += p[static_cast<size_t>(j)] * value(j)[d];
        o[d] = static_cast<float>(acc / sum);
    }
}

}  // namespace

void attention(const float* q, const AttentionArgs& a, const PagedKvView& kv, float* out) {
    const int64_t group = a.n_head / a.n_head_kv;
    for (int64_t t = 0; t < a.n_tok; ++t) {
        for (int64_t h = 0; h < a.n_head; ++h) {
            const int64_t ikv = h / group;
            auto at = [&](const float* base, int64_t j) {
                const int64_t page = kv.page_ids[j / kv.page_size];
                return base + page * kv.stride_page + (j % kv.page_size) * kv.stride_tok + ikv * a.head_dim;
            };
            attend_one(q + (t * a.n_head + h) * a.head_dim, a.head_dim, a.positions[t] + 1,
                       [&](int64_t j) { return at(kv.k, j); }, [&](int64_t j) { return at(kv.v, j); },
                       out + (t * a.n_head + h) * a.head_dim);
        }
    }
}

void attention_pages(const float* q, const AttentionArgs& a, const PagedKvView& kv, float* out) {
    FREEKV_CHECK(a.n_tok == 1, "attention_pages takes one query token, got {}", a.n_tok);
    const int64_t group = a.n_head / a.n_head_kv;
    const int64_t n = (kv.n_pages - 1) * kv.page_size + kv.last_page_len;
    for (int64_t h = 0; h < a.n_head; ++h) {
        const int64_t ikv = h / group;
        const int32_t* pages = kv.pages_of(ikv);
        auto at = [&](const float* base, int64_t j) {
            return base + pages[j / kv.page_size] * kv.stride_page + (j % kv.page_size) * kv.stride_tok + ikv * a.head_dim;
        };
        attend_one(q + h * a.head_dim, a.head_dim, n, [&](int64_t j) { return at(kv.k, j); },
                   [&](int64_t j) { return at(kv.v, j); }, out + h * a.head_dim);
    }
}

// ---- 8-bit KV blocks: each group (a key channel, a value token) divided by its own scale ----

namespace {

uint8_t encode(float x, float scale, KvCode code) {
    if (scale == 0.0f) return 0;
    if (code == KvCode::kInt8) {
        const float q = std::clamp(std::nearbyint(x / scale), -127.0f, 127.0f);
        return static_cast<uint8_t>(static_cast<int8_t>(q));
    }
    return f32_to_fp8_e4m3(x / scale);
}

float decode(uint8_t c, float scale, KvCode code) {
    if (code == KvCode::kInt8) return static_cast<float>(static_cast<int8_t>(c)) * scale;
    return fp8_e4m3_to_f32(c) * scale;
}

float code_max(KvCode code) { return code == KvCode::kInt8 ? 127.0f : kFp8E4m3Max; }

}  // namespace

void quantize_kv_block(const float* block, int64_t page_size, int64_t head_dim, KvCode code, uint8_t* codes, float* scales) {
    const float* k = block;
    const float* v = block + page_size * head_dim;
    for (int64_t i = 0; i < head_dim; ++i) {  // keys: one scale per channel
        float amax = 0.0f;
        for (int64_t r = 0; r < page_size; ++r) amax = std::max(amax, std::fabs(k[r * head_dim + i]));
        scales[i] = amax / code_max(code);
        for (int64_t r = 0; r < page_size; ++r) codes[r * head_dim + i] = encode(k[r * head_dim + i], scales[i], code);
    }
    for (int64_t r = 0; r < page_size; ++r) {  // values: one scale per token
        float amax = 0.0f;
        for (int64_t i = 0; i < head_dim; ++i) amax = std::max(amax, std::fabs(v[r * head_dim + i]));
        const float s = amax / code_max(code);
        scales[head_dim + r] = s;
        for (int64_t i = 0; i < head_dim; ++i) codes[(page_size + r) * head_dim + i] = encode(v[r * head_dim + i], s, code);
    }
}

void dequantize_kv_block(const uint8_t* codes, const float* scales, int64_t page_size, int64_t head_dim, KvCode code,
                         float* block) {
    for (int64_t r = 0; r < page_size; ++r)
        for (int64_t i = 0; i < head_dim; ++i) {
            block[r * head_dim + i] = decode(codes[r * head_dim + i], scales[i], code);
            block[(page_size + r) * head_dim + i] = decode(codes[(page_size + r) * head_dim + i], scales[head_dim + r], code);
        }
}

}  // namespace freekv::ref
