// kv_manager.cpp: storage layout, admission, offload / recall copies, map bookkeeping.
#include "kv/kv_manager.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "core/error.h"

namespace freekv {

KvManager::KvManager(const KvManagerShape& shape, const KvBudget& budget)
    : shape_(shape), budget_(budget), max_pages_((shape.max_tokens + budget.page_size - 1) / budget.page_size) {
    FREEKV_CHECK(shape.max_batch >= 1 && shape.max_tokens >= 1, "KvManager needs a batch and a context");
    if (shape_.cpu_store_pages <= 0) shape_.cpu_store_pages = shape_.max_batch * max_pages_;
    const auto n = [](int64_t x) { return static_cast<size_t>(x); };
    budget_cache_.assign(n(shape_.n_layer * shape_.max_batch * budget_.n_budget_page * 2 * page_floats()), 0.0f);
    if (shape_.store_code) {
        store_codes_.assign(n(shape_.cpu_store_pages * cpu_page_floats()), 0);
        store_scales_.assign(n(shape_.cpu_store_pages * shape_.n_layer * shape_.n_head_kv *
                               kv_block_scales(budget_.page_size, shape_.head_dim)), 0.0f);
    } else {
        cpu_store_.assign(n(shape_.cpu_store_pages * cpu_page_floats()), 0.0f);
    }
    for (int64_t p = shape_.cpu_store_pages - 1; p >= 0; --p) free_cpu_pages_.push_back(static_cast<int32_t>(p));
    summaries_.assign(n(shape_.n_layer * shape_.max_batch * shape_.n_head_kv * max_pages_ * 2 * shape_.head_dim), 0.0f);
    page_of_slot_.assign(n(shape_.n_layer * shape_.max_batch * shape_.n_head_kv * budget_.n_budget_page), -1);
    slot_of_page_.assign(n(shape_.n_layer * shape_.max_batch * shape_.n_head_kv * max_pages_), -1);
    queries_.assign(n(shape_.n_layer * shape_.max_batch * 2 * shape_.n_head * shape_.head_dim), 0.0f);
    seqs_.resize(n(shape_.max_batch));
}

bool KvManager::can_admit(int64_t n_tokens) const {
    const int64_t pages = (n_tokens + budget_.page_size - 1) / budget_.page_size;
    const bool free_slot = std::any_of(seqs_.begin(), seqs_.end(), [](const Sequence& s) { return !s.live; });
    return free_slot && n_tokens <= shape_.max_tokens && pages <= static_cast<int64_t>(free_cpu_pages_.size());
}

int32_t KvManager::admit(int64_t n_tokens) {
    const int64_t pages = (n_tokens + budget_.page_size - 1) / budget_.page_size;
    if (n_tokens > shape_.max_tokens)
        FREEKV_FAIL("a sequence of {} tokens exceeds the context of {} tokens (-c/--ctx-size)", n_tokens, shape_.max_tokens);
    if (pages > static_cast<int64_t>(free_cpu_pages_.size()))
        FREEKV_FAIL("the CPU KV store (system RAM) has {} free pages but the sequence needs {}; raise --cpu-kv-gib",
                    free_cpu_pages_.size(), pages);
    for (size_t b = 0; b < seqs_.size(); ++b) {
        if (seqs_[b].live) continue;
        Sequence& s = seqs_[b];
        s = Sequence{true, 0, {}};
        for (int64_t i = 0; i < pages; ++i) {
            s.cpu_pages.push_back(free_cpu_pages_.back());
            free_cpu_pages_.pop_back();
        }
        const auto seq = static_cast<int32_t>(b);
        for (int64_t il = 0; il < shape_.n_layer; ++il)
            for (int64_t ikv = 0; ikv < shape_.n_head_kv; ++ikv) {
                for (int64_t slot = 0; slot < budget_.n_budget_page; ++slot) page_of_slot(il, seq, ikv, slot) = -1;
                for (int64_t page = 0; page < max_pages_; ++page) slot_of_page(il, seq, ikv, page) = -1;
            }
        return seq;
    }
    FREEKV_FAIL("all {} batch slots are in use; raise the batch size", shape_.max_batch);
}

void KvManager::release(int32_t seq) {
    Sequence& s = seqs_.at(static_cast<size_t>(seq));
    FREEKV_CHECK(s.live, "sequence {} is not live", seq);
    for (int32_t p : s.cpu_pages) free_cpu_pages_.push_back(p);
    s = Sequence{};
}

PagedKvView KvManager::slot_view(int64_t il, int32_t seq, const int32_t* slot_list, int64_t n_list, int64_t last_len) const {
    PagedKvView v;
    v.k = slot_k(il, seq, 0);
    v.v = slot_v(il, seq, 0);
    v.page_ids = slot_list;
    v.n_pages = n_list;
    v.last_page_len = last_len;
    v.page_size = budget_.page_size;
    v.stride_page = 2 * page_floats();
    v.stride_tok = shape_.n_head_kv * shape_.head_dim;
    return v;
}

void KvManager::copy_slot(int64_t il, int32_t seq, int64_t from, int64_t to) {
    std::memcpy(slot_k(il, seq, to), slot_k(il, seq, from), static_cast<size_t>(2 * page_floats()) * sizeof(float));
}

int64_t KvManager::block_index(int32_t seq, int64_t page, int64_t il, int64_t ikv) const {
    const Sequence& s = seqs_[static_cast<size_t>(seq)];
    FREEKV_DCHECK(page < static_cast<int64_t>(s.cpu_pages.size()), "page {} beyond the {} reserved for sequence {}", page,
                  s.cpu_pages.size(), seq);
    const int64_t cpu_page = s.cpu_pages[static_cast<size_t>(page)];
    return (cpu_page * shape_.n_layer + il) * shape_.n_head_kv + ikv;
}

void KvManager::read_block(int32_t seq, int64_t page, int64_t il, int64_t ikv, float* dst) const {
    const int64_t b = block_index(seq, page, il, ikv), nf = block_floats();
    if (!shape_.store_code) {
        std::memcpy(dst, cpu_store_.data() + b * nf, static_cast<size_t>(nf) * sizeof(float));
        return;
    }
    const int64_t ns = kv_block_scales(budget_.page_size, shape_.head_dim);
    cpu::dequantize_kv_block(store_codes_.data() + b * nf, store_scales_.data() + b * ns, budget_.page_size, shape_.head_dim,
                             *shape_.store_code, dst);
}

void KvManager::write_block(int32_t seq, int64_t page, int64_t il, int64_t ikv, const float* src) {
    const int64_t b = block_index(seq, page, il, ikv), nf = block_floats();
    if (!shape_.store_code) {
        std::memcpy(cpu_store_.data() + b * nf, src, static_cast<size_t>(nf) * sizeof(float));
        return;
    }
    const int64_t ns = kv_block_scales(budget_.page_size, shape_.head_dim);
    cpu::quantize_kv_block(src, budget_.page_size, shape_.head_dim, *shape_.store_code, store_codes_.data() + b * nf,
                           store_scales_.data() + b * ns);
}

int64_t KvManager::stored_block_bytes() const {
    if (!shape_.store_code) return block_bytes();
    return block_floats() + kv_block_scales(budget_.page_size, shape_.head_dim) * static_cast<int64_t>(sizeof(float));
}

void KvManager::recall_now(int64_t il, const RecallJob& job) {
    if (!shape_.store_code) {  // fp32: straight from the store, no copy
        scatter_block(il, job, cpu_store_.data() + block_index(job.seq, job.page, il, job.ikv) * block_floats());
        return;
    }
    thread_local std::vector<float> decoded;  // per thread: recalls run on the main and transfer threads
    decoded.resize(static_cast<size_t>(block_floats()));
    read_block(job.seq, job.page, il, job.ikv, decoded.data());
    scatter_block(il, job, decoded.data());
}

void KvManager::offload(int64_t il, int32_t seq, int64_t slot, int64_t page) {
    const int64_t p = budget_.page_size, hd = shape_.head_dim, n_kv = shape_.n_head_kv;
    FREEKV_CHECK(page < static_cast<int64_t>(seqs_[static_cast<size_t>(seq)].cpu_pages.size()),
                 "offload of page {} beyond the CPU pages reserved for sequence {}", page, seq);
    const float* k = slot_k(il, seq, slot);
    const float* v = slot_v(il, seq, slot);
    thread_local std::vector<float> dst;  // one block, reused: offload runs every page boundary
    dst.resize(static_cast<size_t>(block_floats()));
    for (int64_t ikv = 0; ikv < n_kv; ++ikv) {
        for (int64_t r = 0; r < p; ++r) {
            std::memcpy(dst.data() + r * hd, k + (r * n_kv + ikv) * hd, static_cast<size_t>(hd) * sizeof(float));
            std::memcpy(dst.data() + (p + r) * hd, v + (r * n_kv + ikv) * hd, static_cast<size_t>(hd) * sizeof(float));
        }
        write_block(seq, page, il, ikv, dst.data());
    }
}

void KvManager::scatter_block(int64_t il, const RecallJob& job, const float* src) {
    const int64_t p = budget_.page_size, hd = shape_.head_dim, n_kv = shape_.n_head_kv;
    float* k = slot_k(il, job.seq, job.slot);
    float* v = slot_v(il, job.seq, job.slot);
    for (int64_t r = 0; r < p; ++r) {
        std::memcpy(k + (r * n_kv + job.ikv) * hd, src + r * hd, static_cast<size_t>(hd) * sizeof(float));
        std::memcpy(v + (r * n_kv + job.ikv) * hd, src + (p + r) * hd, static_cast<size_t>(hd) * sizeof(float));
    }
}

void KvManager::place(int64_t il, int32_t seq, int64_t ikv, int64_t page, int64_t slot) {
    const int64_t first = ikv < 0 ? 0 : ikv, last = ikv < 0 ? shape_.n_head_kv : ikv + 1;
    for (int64_t h = first; h < last; ++h) {
        const int32_t old = page_of_slot(il, seq, h, slot);
        if (old >= 0) slot_of_page(il, seq, h, old) = -1;
        page_of_slot(il, seq, h, slot) = static_cast<int32_t>(page);
        slot_of_page(il, seq, h, page) = static_cast<int32_t>(slot);
    }
}

void KvManager::apply_maps(const RecallPlan& plan) {
    for (const RecallJob& j : plan.jobs) place(plan.il, j.seq, j.ikv, j.page, j.slot);
}

void KvManager::check_invariants(int64_t il, int32_t seq) const {
    const int64_t ns = budget_.n_sink_page, n_select = budget_.n_select, n_pages_now = n_pages(seq);
    for (int64_t ikv = 0; ikv < shape_.n_head_kv; ++ikv) {
        std::set<int32_t> seen;
        for (int64_t slot = ns; slot < ns + n_select; ++slot) {
            const int32_t page = page_of_slot(il, seq, ikv, slot);
            FREEKV_CHECK(page >= ns && page < budget_.end_candidate(n_pages_now),
                         "layer {} seq {} head {}: middle slot {} holds page {}, not a candidate [{}, {})", il, seq, ikv,
                         slot, page, ns, budget_.end_candidate(n_pages_now));
            FREEKV_CHECK(seen.insert(page).second, "layer {} seq {} head {}: page {} in two middle slots", il, seq, ikv, page);
            FREEKV_CHECK(slot_of_page(il, seq, ikv, page) == slot, "layer {} seq {} head {}: maps disagree on page {}", il,
                         seq, ikv, page);
            std::vector<float> stored(static_cast<size_t>(block_floats()));
            read_block(seq, page, il, ikv, stored.data());
            const float* src = stored.data();
            const float* k = slot_k(il, seq, slot);
            const float* v = slot_v(il, seq, slot);
            const int64_t p = budget_.page_size, hd = shape_.head_dim, n_kv = shape_.n_head_kv;
            if (!shape_.store_code) {
                for (int64_t r = 0; r < p; ++r)
                    FREEKV_CHECK(std::memcmp(k + (r * n_kv + ikv) * hd, src + r * hd, static_cast<size_t>(hd) * 4) == 0 &&
                                     std::memcmp(v + (r * n_kv + ikv) * hd, src + (p + r) * hd, static_cast<size_t>(hd) * 4) == 0,
                                 "layer {} seq {} head {}: middle slot {} does not hold the data of page {} (stale recall)",
                                 il, seq, ikv, slot, page);
                continue;
            }
            // 8-bit store: a slot holds the decoded block (recalled) or the exact one (resident since
            // it completed); either is within the code's error of the decoded block.
            const float* scales = store_scales_.data() + block_index(seq, page, il, ikv) * kv_block_scales(p, hd);
            for (int64_t half = 0; half < 2; ++half)
                for (int64_t r = 0; r < p; ++r)
                    for (int64_t i = 0; i < hd; ++i) {
                        const float got = (half == 0 ? k : v)[(r * n_kv + ikv) * hd + i], want = src[(half * p + r) * hd + i];
                        const float s = half == 0 ? scales[i] : scales[hd + r];
                        const float allowed = *shape_.store_code == KvCode::kInt8
                                                  ? 0.5f * s * 1.001f
                                                  : std::max(std::fabs(want) / 15.0f, s / 1024.0f) * 1.001f;
                        FREEKV_CHECK(std::fabs(got - want) <= allowed,
                                     "layer {} seq {} head {}: middle slot {} does not hold the data of page {} (stale recall)",
                                     il, seq, ikv, slot, page);
                    }
        }
        for (int64_t page = 0; page < n_pages_now; ++page) {
            const int32_t slot = slot_of_page(il, seq, ikv, page);
            if (slot >= 0)
                FREEKV_CHECK(slot >= ns && slot < ns + n_select && page_of_slot(il, seq, ikv, slot) == page,
                             "layer {} seq {} head {}: page {} claims slot {} which does not hold it", il, seq, ikv, page, slot);
        }
    }
}

}  // namespace freekv
