// paged_kv_cache.cpp: page allocation and token addressing for the full-attention KV cache.
#include "kv/paged_kv_cache.h"

#include <cstring>

#include "core/error.h"

namespace freekv {

PagedKvCache::PagedKvCache(int64_t n_layer, int64_t n_head_kv, int64_t head_dim, int64_t page_size,
                           int64_t n_page_capacity)
    : n_head_kv_(n_head_kv),
      head_dim_(head_dim),
      page_size_(page_size),
      n_page_capacity_(n_page_capacity),
      page_floats_(n_layer * 2 * page_size * n_head_kv * head_dim) {
    FREEKV_CHECK(n_layer > 0 && page_size > 0 && n_page_capacity > 0,
                 "n_layer {}, page_size {} and capacity {} must be positive", n_layer, page_size, n_page_capacity);
    storage_.assign(static_cast<size_t>(n_page_capacity * page_floats_), 0.0f);
    free_pages_.reserve(static_cast<size_t>(n_page_capacity));
    for (int64_t p = n_page_capacity - 1; p >= 0; --p) free_pages_.push_back(static_cast<int32_t>(p));
}

int32_t PagedKvCache::add_sequence() {
    for (size_t i = 0; i < seqs_.size(); ++i) {
        if (!seqs_[i].live) {
            seqs_[i] = Sequence{true, 0, {}};
            return static_cast<int32_t>(i);
        }
    }
    seqs_.push_back(Sequence{true, 0, {}});
    return static_cast<int32_t>(seqs_.size() - 1);
}

void PagedKvCache::remove_sequence(int32_t seq) {
    Sequence& s = seqs_.at(static_cast<size_t>(seq));
    FREEKV_CHECK(s.live, "sequence {} is not live", seq);
    for (int32_t p : s.pages) free_pages_.push_back(p);
    s = Sequence{};
}

bool PagedKvCache::can_reserve(int32_t seq, int64_t n_new) const {
    const Sequence& s = seqs_.at(static_cast<size_t>(seq));
    const int64_t pages_needed = (s.n_tokens + n_new + page_size_ - 1) / page_size_;
    return pages_needed - static_cast<int64_t>(s.pages.size()) <= n_free_pages();
}

void PagedKvCache::reserve(int32_t seq, int64_t n_new) {
    FREEKV_CHECK(can_reserve(seq, n_new), "KV cache is full: sequence {} needs {} more tokens, {} pages free",
                 seq, n_new, n_free_pages());
    Sequence& s = seqs_.at(static_cast<size_t>(seq));
    s.n_tokens += n_new;
    while (static_cast<int64_t>(s.pages.size()) * page_size_ < s.n_tokens) {
        s.pages.push_back(free_pages_.back());
        free_pages_.pop_back();
    }
}

float* PagedKvCache::token_ptr(int64_t il, int32_t seq, int64_t pos, int kv) const {
    const Sequence& s = seqs_[static_cast<size_t>(seq)];
    FREEKV_DCHECK(pos >= 0 && pos < s.n_tokens, "position {} outside sequence {} of {} tokens", pos, seq, s.n_tokens);
    const int64_t page_id = s.pages[static_cast<size_t>(pos / page_size_)];
    const int64_t offset = page_id * page_floats_ + ((il * 2 + kv) * page_size_ + pos % page_size_) * n_head_kv_ * head_dim_;
    return const_cast<float*>(storage_.data()) + offset;
}

PagedKvView PagedKvCache::view(int64_t il, int32_t seq) const {
    const Sequence& s = seqs_.at(static_cast<size_t>(seq));
    PagedKvView v;
    const int64_t layer_offset = il * 2 * page_size_ * n_head_kv_ * head_dim_;
    v.k = storage_.data() + layer_offset;
    v.v = v.k + page_size_ * n_head_kv_ * head_dim_;
    v.page_ids = s.pages.data();
    v.n_pages = static_cast<int64_t>(s.pages.size());
    v.last_page_len = s.n_tokens - (v.n_pages - 1) * page_size_;
    v.page_size = page_size_;
    v.stride_page = page_floats_;
    v.stride_tok = n_head_kv_ * head_dim_;
    return v;
}

void PagedKvCache::write(int64_t il, int32_t seq, int64_t pos, const float* k, const float* v) {
    const size_t bytes = static_cast<size_t>(n_head_kv_ * head_dim_) * sizeof(float);
    std::memcpy(token_ptr(il, seq, pos, 0), k, bytes);
    std::memcpy(token_ptr(il, seq, pos, 1), v, bytes);
}

}  // namespace freekv
