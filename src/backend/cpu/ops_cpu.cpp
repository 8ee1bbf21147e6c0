// ops_cpu.cpp: the optimized CPU implementation of backend/ops.h.
// matmul: weights stay in their stored dtype; each OpenMP thread converts a tile of weight rows
// to fp32 in a thread-local buffer sized to stay in L2 and multiplies it with OpenBLAS (which runs
// single-threaded inside the parallel region), so no fp32 copy of the model ever exists.
// attention: per KV head, the sequence's keys and values are gathered into contiguous fp32
// buffers, then a chunk of query tokens x G query heads is scored with one SGEMM, masked causally,
// soft-maxed in fp32 and multiplied with V by a second SGEMM.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "backend/ops.h"
#include "core/dtype.h"
#include "core/error.h"

namespace freekv::cpu {

namespace {

// A per-thread buffer that only grows, so that hot ops neither page-fault nor zero memory per
// call (a fresh multi-MiB std::vector is a fresh mmap: every page faults and is cleared).
float* scratch(std::vector<float>& buffer, int64_t n) {
    if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(static_cast<size_t>(n));
    return buffer.data();
}

// Rows of a weight tile: about 256 KiB of fp32 per tile, at least 8 rows.
int64_t tile_rows(int64_t k) { return std::max<int64_t>(8, (int64_t{64} * 1024) / std::max<int64_t>(k, 1)); }

}  // namespace

void matmul(const float* x, int64_t m, const WeightView& w, float* y, const WeightView* bias) {
    const int64_t whole[1] = {m};
    matmul_grouped(x, whole, w, y, bias);
}

// NOTE: OpenBLAS's SGEMM gives a row a different rounding depending on how many rows it is
// multiplied with (measured: from 16 rows up), and SGEMV differs from SGEMM. Multiplying each group
// on its own makes a row's result a function of its group only, so a sequence batched with others
// gets the bits it gets alone; the weight tile is still converted once for all groups.
void matmul_grouped(const float* x, std::span<const int64_t> group_rows, const WeightView& w, float* y,
                    const WeightView* bias) {
    const int64_t n = w.rows(), k = w.cols();
    int64_t m = 0;
    for (int64_t g : group_rows) {
        FREEKV_CHECK(g > 0, "matmul: an empty row group");
        m += g;
    }
    if (w.dtype == DType::kF32) {
        int64_t r = 0;
        for (int64_t g : group_rows) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(g), static_cast<blasint>(n),
                        static_cast<blasint>(k), 1.0f, x + r * k, static_cast<blasint>(k),
                        static_cast<const float*>(w.data), static_cast<blasint>(k), 0.0f, y + r * n,
                        static_cast<blasint>(n));
            r += g;
        }
    } else {
        const int64_t rows = tile_rows(k);
        const int64_t n_tiles = (n + rows - 1) / rows;
#pragma omp parallel
        {
            thread_local std::vector<float> tile_buffer;
            float* tile = scratch(tile_buffer, rows * k);
#pragma omp for schedule(dynamic, 1)
            for (int64_t it = 0; it < n_tiles; ++it) {
                const int64_t r0 = it * rows, nr = std::min(rows, n - r0);
                convert_to_f32(w.dtype, w.row(r0), tile, nr * k);
                int64_t r = 0;
                for (int64_t g : group_rows) {
                    if (g == 1) {
                        cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(nr), static_cast<blasint>(k), 1.0f,
                                    tile, static_cast<blasint>(k), x + r * k, 1, 0.0f, y + r * n + r0, 1);
                    } else {
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(g),
                                    static_cast<blasint>(nr), static_cast<blasint>(k), 1.0f, x + r * k,
                                    static_cast<blasint>(k), tile, static_cast<blasint>(k), 0.0f, y + r * n + r0,
                                    static_cast<blasint>(n));
                    }
                    r += g;
                }
            }
        }
    }
    if (bias != nullptr && bias->data != nullptr) {
        std::vector<float> b(static_cast<size_t>(n));
        convert_to_f32(bias->dtype, bias->data, b.data(), n);
        for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < n; ++j) y[i * n + j] += b[static_cast<size_t>(j)];
    }
}

void rms_norm(const float* x, int64_t m, int64_t n, const WeightView& w, float eps, float* y) {
    std::vector<float> weight(static_cast<size_t>(n));
    convert_to_f32(w.dtype, w.data, weight.data(), n);
#pragma omp parallel for if (m > 4)
    for (int64_t i = 0; i < m; ++i) {
        float ss = 0.0f;
        for (int64_t j = 0; j < n; ++j) ss += x[i * n + j] * x[i * n + j];
        const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
        for (int64_t j = 0; j < n; ++j) y[i * n + j] = weight[static_cast<size_t>(j)] * (x[i * n + j] * inv);
    }
}

void rope(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          std::span<const float> inv_freq, RopeStyle style) {
    const int64_t half = head_dim / 2;
#pragma omp parallel if (n_tok > 4)
    {
        std::vector<float> cos_t(static_cast<size_t>(half)), sin_t(static_cast<size_t>(half));
#pragma omp for
        for (int64_t t = 0; t < n_tok; ++t) {
            for (int64_t i = 0; i < half; ++i) {
                const float angle = static_cast<float>(positions[t]) * inv_freq[static_cast<size_t>(i)];
                cos_t[static_cast<size_t>(i)] = static_cast<float>(std::cos(static_cast<double>(angle)));
                sin_t[static_cast<size_t>(i)] = static_cast<float>(std::sin(static_cast<double>(angle)));
            }
            for (int64_t h = 0; h < n_heads; ++h) {
                float* v = x + (t * n_heads + h) * head_dim;
                for (int64_t i = 0; i < half; ++i) {
                    const int64_t a = style == RopeStyle::kNeox ? i : 2 * i;
                    const int64_t b = style == RopeStyle::kNeox ? i + half : 2 * i + 1;
                    const float c = cos_t[static_cast<size_t>(i)], s = sin_t[static_cast<size_t>(i)];
                    const float x0 = v[a], x1 = v[b];
                    v[a] = x0 * c - x1 * s;
                    v[b] = x1 * c + x0 * s;
                }
            }
        }
    }
}

void silu_mul(float* gate, const float* up, int64_t n) {
#pragma omp parallel for simd if (n > 65536)
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

// Copies K and V of one KV head, tokens [0, n) of its page list, into contiguous [n, head_dim].
void gather_head(const PagedKvView& kv, const int32_t* pages, int64_t ikv, int64_t head_dim, int64_t n, float* keys,
                 float* values) {
    const auto row_bytes = static_cast<size_t>(head_dim) * sizeof(float);
    for (int64_t j = 0; j < n; ++j) {
        const int64_t offset = pages[j / kv.page_size] * kv.stride_page + (j % kv.page_size) * kv.stride_tok + ikv * head_dim;
        std::memcpy(keys + j * head_dim, kv.k + offset, row_bytes);
        std::memcpy(values + j * head_dim, kv.v + offset, row_bytes);
    }
}

// rows x len scores (already scaled) -> probabilities, row r seeing its first visible[r] columns.
void softmax_rows(float* scores, int64_t rows, int64_t len, const std::function<int64_t(int64_t)>& visible) {
    for (int64_t r = 0; r < rows; ++r) {
        float* s = scores + r * len;
        const int64_t n = visible(r);
        float mx = -INFINITY;
        for (int64_t j = 0; j < n; ++j) mx = std::max(mx, s[j]);
        float sum = 0.0f;
        for (int64_t j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j < n; ++j) s[j] *= inv;
        for (int64_t j = n; j < len; ++j) s[j] = 0.0f;
    }
}

// out[rows, hd] = softmax(q_rows[rows, hd] . keys[len, hd]^T * scale) . values[len, hd]
void attend_rows(const float* q_rows, int64_t rows, const float* keys, const float* values, int64_t len, int64_t hd,
                 float* scores, float* o_rows, const std::function<int64_t(int64_t)>& visible) {
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(rows), static_cast<blasint>(len),
                static_cast<blasint>(hd), scale, q_rows, static_cast<blasint>(hd), keys, static_cast<blasint>(hd), 0.0f,
                scores, static_cast<blasint>(len));
    softmax_rows(scores, rows, len, visible);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(rows), static_cast<blasint>(hd),
                static_cast<blasint>(len), 1.0f, scores, static_cast<blasint>(len), values, static_cast<blasint>(hd), 0.0f,
                o_rows, static_cast<blasint>(hd));
}

}  // namespace

void attention(const float* q, const AttentionArgs& a, const PagedKvView& kv, float* out) {
    const int64_t group = a.n_head / a.n_head_kv, hd = a.head_dim;
    int64_t max_pos = 0;
    for (int64_t t = 0; t < a.n_tok; ++t) max_pos = std::max<int64_t>(max_pos, a.positions[t]);
    const int64_t n_kv_pos = max_pos + 1;
    // Query tokens per chunk: keep the score matrix [chunk * group, n_kv_pos] near 4 MiB.
    const int64_t chunk =
        std::min(a.n_tok, std::clamp<int64_t>((int64_t{1} << 20) / std::max<int64_t>(group * n_kv_pos, 1), 1, 64));
    const int64_t n_chunks = (a.n_tok + chunk - 1) / chunk;

    thread_local std::vector<float> keys_buffer, values_buffer;
    float* keys = scratch(keys_buffer, a.n_head_kv * n_kv_pos * hd);
    float* values = scratch(values_buffer, a.n_head_kv * n_kv_pos * hd);
#pragma omp parallel for if (n_kv_pos > 256)
    for (int64_t ikv = 0; ikv < a.n_head_kv; ++ikv)
        gather_head(kv, kv.page_ids, ikv, hd, n_kv_pos, keys + ikv * n_kv_pos * hd, values + ikv * n_kv_pos * hd);

#pragma omp parallel
    {
        thread_local std::vector<float> q_buffer, score_buffer, o_buffer;
        float* q_rows = scratch(q_buffer, chunk * group * hd);
        float* scores = scratch(score_buffer, chunk * group * n_kv_pos);
        float* o_rows = scratch(o_buffer, chunk * group * hd);
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int64_t ikv = 0; ikv < a.n_head_kv; ++ikv) {
            for (int64_t ic = 0; ic < n_chunks; ++ic) {
                const int64_t t0 = ic * chunk, nt = std::min(chunk, a.n_tok - t0);
                int64_t len = 0;  // keys needed by this chunk
                for (int64_t t = t0; t < t0 + nt; ++t) len = std::max<int64_t>(len, a.positions[t] + 1);
                for (int64_t t = 0; t < nt; ++t)
                    std::memcpy(q_rows + t * group * hd, q + ((t0 + t) * a.n_head + ikv * group) * hd,
                                static_cast<size_t>(group * hd) * 4);
                attend_rows(q_rows, nt * group, keys + ikv * n_kv_pos * hd, values + ikv * n_kv_pos * hd, len, hd, scores,
                            o_rows, [&](int64_t r) { return int64_t{a.positions[t0 + r / group]} + 1; });
                for (int64_t t = 0; t < nt; ++t)
                    std::memcpy(out + ((t0 + t) * a.n_head + ikv * group) * hd, o_rows + t * group * hd,
                                static_cast<size_t>(group * hd) * 4);
            }
        }
    }
}

void attention_pages(const float* q, const AttentionArgs& a, const PagedKvView& kv, float* out) {
    FREEKV_CHECK(a.n_tok == 1, "attention_pages takes one query token, got {}", a.n_tok);
    const int64_t group = a.n_head / a.n_head_kv, hd = a.head_dim;
    const int64_t n = (kv.n_pages - 1) * kv.page_size + kv.last_page_len;
    thread_local std::vector<float> keys_buffer, values_buffer, score_buffer;
    float* keys = scratch(keys_buffer, n * hd);
    float* values = scratch(values_buffer, n * hd);
    float* scores = scratch(score_buffer, group * n);
    // One query token: the per-head work is small, so heads run in sequence on this thread (the
    // caller parallelizes over sequences).
    for (int64_t ikv = 0; ikv < a.n_head_kv; ++ikv) {
        gather_head(kv, kv.pages_of(ikv), ikv, hd, n, keys, values);
        attend_rows(q + ikv * group * hd, group, keys, values, n, hd, scores, out + ikv * group * hd,
                    [n](int64_t) { return n; });
    }
}

// ---- 8-bit KV blocks (the ref twin's arithmetic with reciprocal scales and an fp8 table) ----

namespace {

const std::array<float, 256>& fp8_table() {
    static const std::array<float, 256> table = [] {
        std::array<float, 256> t{};
        for (int c = 0; c < 256; ++c) t[static_cast<size_t>(c)] = fp8_e4m3_to_f32(static_cast<uint8_t>(c));
        return t;
    }();
    return table;
}

// Codes of n values x[j * stride] with one scale; returns the scale.
float quantize_group(const float* x, int64_t n, int64_t stride, KvCode code, uint8_t* out, int64_t out_stride) {
    float amax = 0.0f;
    for (int64_t j = 0; j < n; ++j) amax = std::max(amax, std::fabs(x[j * stride]));
    const float scale = amax / (code == KvCode::kInt8 ? 127.0f : kFp8E4m3Max);
    if (scale == 0.0f) {
        for (int64_t j = 0; j < n; ++j) out[j * out_stride] = 0;
        return 0.0f;
    }
    const float inv = 1.0f / scale;
    if (code == KvCode::kInt8) {
        for (int64_t j = 0; j < n; ++j) {
            const float q = std::clamp(std::nearbyint(x[j * stride] * inv), -127.0f, 127.0f);
            out[j * out_stride] = static_cast<uint8_t>(static_cast<int8_t>(q));
        }
    } else {
        for (int64_t j = 0; j < n; ++j) out[j * out_stride] = f32_to_fp8_e4m3(x[j * stride] * inv);
    }
    return scale;
}

}  // namespace

void quantize_kv_block(const float* block, int64_t page_size, int64_t head_dim, KvCode code, uint8_t* codes, float* scales) {
    for (int64_t i = 0; i < head_dim; ++i)  // keys: a channel is a column of the page
        scales[i] = quantize_group(block + i, page_size, head_dim, code, codes + i, head_dim);
    const float* v = block + page_size * head_dim;
    uint8_t* vc = codes + page_size * head_dim;
    for (int64_t r = 0; r < page_size; ++r)
        scales[head_dim + r] = quantize_group(v + r * head_dim, head_dim, 1, code, vc + r * head_dim, 1);
}

void dequantize_kv_block(const uint8_t* codes, const float* scales, int64_t page_size, int64_t head_dim, KvCode code,
                         float* block) {
    const float* table = fp8_table().data();
    const auto value = [&](uint8_t c) {
        return code == KvCode::kInt8 ? static_cast<float>(static_cast<int8_t>(c)) : table[c];
    };
    for (int64_t r = 0; r < page_size; ++r) {
        const uint8_t* kc = codes + r * head_dim;
        float* k = block + r * head_dim;
        for (int64_t i = 0; i < head_dim; ++i) k[i] = value(kc[i]) * scales[i];
        const uint8_t* vc = codes + (page_size + r) * head_dim;
        float* v = block + (page_size + r) * head_dim;
        const float s = scales[head_dim + r];
        for (int64_t i = 0; i < head_dim; ++i) v[i] = value(vc[i]) * s;
    }
}

}  // namespace freekv::cpu
