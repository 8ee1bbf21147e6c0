// tp_shard.cpp: see tp_shard.h.
#include "parallel/tp_shard.h"

#include <cstring>

#include "core/error.h"
#include "model/synthetic_model.h"

namespace freekv {

namespace {

// Rows [begin, begin + count) of a matrix, or elements of a vector (a bias), as a view.
WeightView slice_rows(const WeightView& w, int64_t begin, int64_t count) {
    if (w.data == nullptr) return w;  // an absent bias stays absent
    WeightView v = w;
    if (w.shape.size() == 1) {
        FREEKV_CHECK(dtype_size(w.dtype) > 0 && begin + count <= w.shape[0], "{}: cannot slice [{}, {})", w.name, begin, begin + count);
        v.shape = {count};
        v.data = static_cast<const uint8_t*>(w.data) + begin * static_cast<int64_t>(dtype_size(w.dtype));
        return v;
    }
    FREEKV_CHECK(w.shape.size() == 2 && begin + count <= w.rows(), "{}: cannot take rows [{}, {})", w.name, begin, begin + count);
    v.shape = {count, w.cols()};
    v.data = w.row(begin);
    return v;
}

// Columns [begin, begin + count) of a matrix, copied into a buffer of `owned`.
WeightView slice_cols(const WeightView& w, int64_t begin, int64_t count, std::vector<std::vector<uint8_t>>& owned) {
    FREEKV_CHECK(w.shape.size() == 2 && begin + count <= w.cols(), "{}: cannot take columns [{}, {})", w.name, begin, begin + count);
    WeightView v = w;
    v.shape = {w.rows(), count};
    auto& buf = owned.emplace_back();
    if (dtype_size(w.dtype) == 0) {  // block-quantized: whole rows to f32, then the columns
        v.dtype = DType::kF32;
        buf.resize(static_cast<size_t>(w.rows() * count) * 4);
        std::vector<float> row(static_cast<size_t>(w.cols()));
        for (int64_t r = 0; r < w.rows(); ++r) {
            convert_to_f32(w.dtype, w.row(r), row.data(), w.cols());
            std::memcpy(buf.data() + r * count * 4, row.data() + begin, static_cast<size_t>(count) * 4);
        }
    } else {
        const auto es = static_cast<int64_t>(dtype_size(w.dtype));
        buf.resize(static_cast<size_t>(w.rows() * count * es));
        for (int64_t r = 0; r < w.rows(); ++r)
            std::memcpy(buf.data() + r * count * es, w.row(r) + begin * es, static_cast<size_t>(count * es));
    }
    v.data = buf.data();
    return v;
}

}  // namespace

TpShard shard_llama_weights(const LlamaWeights& w, const ModelConfig& config, const TpRank& r) {
    TpShard s;
    s.config = tp_rank_config(config, r);
    const int64_t hd = config.head_dim;
    LlamaWeights& o = s.weights;
    o.token_embd = slice_rows(w.token_embd, r.vocab.begin, r.vocab.count);
    o.output_norm = w.output_norm;
    o.output = slice_rows(w.output, r.vocab.begin, r.vocab.count);
    for (const LlamaLayerWeights& l : w.layers) {
        LlamaLayerWeights t;
        t.attn_norm = l.attn_norm;
        t.ffn_norm = l.ffn_norm;
        t.wq = slice_rows(l.wq, r.q_heads.begin * hd, r.q_heads.count * hd);
        t.wk = slice_rows(l.wk, r.kv_heads.begin * hd, r.kv_heads.count * hd);
        t.wv = slice_rows(l.wv, r.kv_heads.begin * hd, r.kv_heads.count * hd);
        t.bq = slice_rows(l.bq, r.q_heads.begin * hd, r.q_heads.count * hd);
        t.bk = slice_rows(l.bk, r.kv_heads.begin * hd, r.kv_heads.count * hd);
        t.bv = slice_rows(l.bv, r.kv_heads.begin * hd, r.kv_heads.count * hd);
        t.wo = slice_cols(l.wo, r.q_heads.begin * hd, r.q_heads.count * hd, s.owned);
        t.w_gate = slice_rows(l.w_gate, r.ff.begin, r.ff.count);
        t.w_up = slice_rows(l.w_up, r.ff.begin, r.ff.count);
        t.w_down = slice_cols(l.w_down, r.ff.begin, r.ff.count, s.owned);
        o.layers.push_back(std::move(t));
    }
    return s;
}

TpShard make_synthetic_shard(const ModelConfig& config, uint64_t seed, const TpRank& r) {
    TpShard s;
    s.config = tp_rank_config(config, r);
    s.tensors = std::make_unique<TensorSource>();
    const int64_t hd = config.head_dim;
    auto ends_with = [](const std::string& name, const char* suffix) {
        const std::string x(suffix);
        return name.size() >= x.size() && name.compare(name.size() - x.size(), x.size(), x) == 0;
    };
    for (const SyntheticTensor& t : synthetic_tensors(config, seed)) {
        const int64_t rows = t.rows(), cols = t.shape.back();
        int64_t r0 = 0, rc = rows, c0 = 0, cc = cols;  // whole, unless the tensor is split
        if (ends_with(t.name, "embed_tokens.weight") || ends_with(t.name, "lm_head.weight")) {
            r0 = r.vocab.begin, rc = r.vocab.count;
        } else if (ends_with(t.name, "q_proj.weight")) {
            r0 = r.q_heads.begin * hd, rc = r.q_heads.count * hd;
        } else if (ends_with(t.name, "k_proj.weight") || ends_with(t.name, "v_proj.weight")) {
            r0 = r.kv_heads.begin * hd, rc = r.kv_heads.count * hd;
        } else if (ends_with(t.name, "q_proj.bias")) {
            c0 = r.q_heads.begin * hd, cc = r.q_heads.count * hd;
        } else if (ends_with(t.name, "k_proj.bias") || ends_with(t.name, "v_proj.bias")) {
            c0 = r.kv_heads.begin * hd, cc = r.kv_heads.count * hd;
        } else if (ends_with(t.name, "o_proj.weight")) {
            c0 = r.q_heads.begin * hd, cc = r.q_heads.count * hd;
        } else if (ends_with(t.name, "gate_proj.weight") || ends_with(t.name, "up_proj.weight")) {
            r0 = r.ff.begin, rc = r.ff.count;
        } else if (ends_with(t.name, "down_proj.weight")) {
            c0 = r.ff.begin, cc = r.ff.count;
        } else {
            FREEKV_CHECK(ends_with(t.name, "norm.weight"), "make_synthetic_shard: no split rule for {}", t.name);
        }
        std::vector<int64_t> shape = t.shape.size() == 1 ? std::vector<int64_t>{cc} : std::vector<int64_t>{rc, cc};
        s.tensors->add_owned(t.name, DType::kBF16, std::move(shape), synthetic_block(t, r0, rc, c0, cc));
    }
    s.weights = LlamaWeights::bind(*s.tensors, s.config);
    return s;
}

}  // namespace freekv
