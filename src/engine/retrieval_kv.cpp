// retrieval_kv.cpp: prefill, page boundaries and the decode step for the offloading KV modes
// (see retrieval_kv.h and design doc 3.6-3.10).
#include "engine/retrieval_kv.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>

#include "backend/ops.h"
#include "core/error.h"

namespace freekv {

namespace {

size_t sz(int64_t n) { return static_cast<size_t>(n); }

}  // namespace

// ---- construction ----

RetrievalKv::RetrievalKv(const ModelConfig& model, const KvModeConfig& mode, int64_t max_batch, int64_t max_tokens)
    : model_(model),
      mode_(mode),
      budget_(mode.make_budget()),
      summary_kind_(mode.summary_kind()),
      aggregation_(mode.aggregation()) {
    FREEKV_CHECK(mode.mode != KvMode::kFull, "RetrievalKv does not implement --kv-mode full");
    KvManagerShape shape;
    shape.n_layer = model.n_layer;
    shape.n_head = model.n_head;
    shape.n_head_kv = model.n_head_kv;
    shape.head_dim = model.head_dim;
    shape.max_batch = max_batch;
    shape.max_tokens = max_tokens;
    shape.store_code = mode.store_code;
    kv_ = std::make_unique<KvManager>(shape, budget_);
    transfer_ = make_cpu_transfer_engine(*kv_, model.n_layer);
    seqs_.resize(sz(max_batch));
    identity_slots_.resize(sz(budget_.n_budget_page));
    std::iota(identity_slots_.begin(), identity_slots_.end(), 0);
    for (auto* v : {&stats_.sparse_pairs, &stats_.corrected_pairs, &stats_.forced_pairs, &stats_.head_tests, &stats_.head_flags})
        v->assign(sz(model.n_layer), 0);
    recalled_sync_.assign(sz(model.n_layer * model.n_head_kv), 0);
    recalled_background_ = std::make_unique<std::atomic<int64_t>[]>(sz(model.n_layer * model.n_head_kv));
}

RetrievalKv::~RetrievalKv() {
    try {
        transfer_->wait_all();
    } catch (...) {  // errors were reported to the thread that waited; nothing to add while unwinding
    }
}

std::unique_ptr<RetrievalKv> make_retrieval_kv(const ModelConfig& model, const KvModeConfig& mode, int64_t max_batch,
                                               int64_t max_tokens) {
    return std::make_unique<RetrievalKv>(model, mode, max_batch, max_tokens);
}

int32_t RetrievalKv::add_sequence(int64_t max_tokens) {
    const int32_t seq = kv_->admit(max_tokens);
    seqs_[sz(seq)] = SeqState{true, 0, 0, false, false, {}};
    return seq;
}

void RetrievalKv::remove_sequence(int32_t seq) {
    transfer_->wait_all();  // no background task may still touch its slots
    kv_->release(seq);
    seqs_[sz(seq)] = SeqState{};
}

KvStats RetrievalKv::stats() {
    transfer_->wait_all();
    stats_.transfer = transfer_->counters();
    stats_.store_bytes_per_token = static_cast<double>(kv_->stored_block_bytes() * model_.n_layer * model_.n_head_kv) /
                                   static_cast<double>(budget_.page_size);
    stats_.recalled_sync = recalled_sync_;
    stats_.recalled_background.resize(recalled_sync_.size());
    for (size_t i = 0; i < recalled_sync_.size(); ++i) stats_.recalled_background[i] = recalled_background_[i].load();
    return stats_;
}

// ---- forward ----

void RetrievalKv::begin_forward(std::span<const SequenceSpan> spans) {
    bool any_decode = false;
    for (const auto& span : spans) {
        SeqState& s = seqs_.at(sz(span.seq));
        FREEKV_CHECK(s.live, "sequence {} was not added", span.seq);
        FREEKV_CHECK(span.pos0 == s.n_tokens, "sequence {} holds {} tokens but the span starts at {}", span.seq,
                     s.n_tokens, span.pos0);
        FREEKV_CHECK(span.pos0 + span.n_tok <= kv_->max_pages() * budget_.page_size,
                     "sequence {} would hold {} tokens, more than its context of {} (-c/--ctx-size)", span.seq,
                     span.pos0 + span.n_tok, kv_->max_pages() * budget_.page_size);
        s.decoding = span.n_tok == 1 && s.n_tokens > 0;
        any_decode = any_decode || s.decoding;
    }
    if (any_decode) {
        ++step_;
        ++stats_.decode_steps;
        last_plan_.clear();
    }
    for (const auto& span : spans) {
        SeqState& s = seqs_[sz(span.seq)];
        if (s.decoding) {
            s.plan = plan_decode_row(budget_, mode_, false, span.seq, span.pos0, s.forced);
            s.forced = s.plan.forced;
            if (s.plan.has_boundary) page_boundary(span.seq, s.plan.boundary);
            last_plan_.push_back(s.plan);
            ++stats_.sequence_steps;
        }
        kv_->set_n_tokens(span.seq, span.pos0 + span.n_tok);
    }
}

void RetrievalKv::end_forward(std::span<const SequenceSpan> spans) {
    for (const auto& span : spans) {
        SeqState& s = seqs_[sz(span.seq)];
        s.n_tokens = span.pos0 + span.n_tok;
        ++s.n_queries;
        if (s.decoding) s.forced = false;
        // A prefill that leaves the sequence sparse makes its first decode step synchronous.
        if (!s.decoding && budget_.is_sparse(kv_->n_pages(span.seq))) s.forced = true;
        s.decoding = false;
    }
}

void RetrievalKv::attend(int64_t il, std::span<const SequenceSpan> spans, const float* q, const float* k, const float* v,
                         float* out) {
    const int64_t q_row = model_.n_head * model_.head_dim, kv_row = model_.n_head_kv * model_.head_dim;
    std::vector<Background> background;
    for (const auto& span : spans) {
        const float* qs = q + span.offset * q_row;
        const float* ks = k + span.offset * kv_row;
        const float* vs = v + span.offset * kv_row;
        float* os = out + span.offset * q_row;
        if (seqs_[sz(span.seq)].decoding) decode_layer(il, span, qs, ks, vs, os, background);
        else prefill_layer(il, span, qs, ks, vs, os);
    }
    if (background.empty()) return;
    // Sel_t for the unflagged heads, selected and recalled on the worker after this attention.
    transfer_->submit(il, step_, [this, il, background = std::move(background)] {
        RecallPlan plan;
        plan.il = il;
        for (const Background& b : background)
            for (int32_t ikv : b.heads) select_head(il, b.seq, ikv, b.q, b.n_pages, plan.jobs);
        kv_->apply_maps(plan);
        for (const RecallJob& j : plan.jobs) recalled_background_[sz(il * model_.n_head_kv + j.ikv)].fetch_add(1);
        return plan;
    });
}

// ---- page life cycle ----

// A completed page (the plan's boundary): summarized, moved to its ring slot once sparse, offloaded.
void RetrievalKv::page_boundary(int32_t seq, const PlannedBoundary& b) {
    const int64_t p = budget_.page_size, row_stride = model_.n_head_kv * model_.head_dim;
    for (int64_t il = 0; il < model_.n_layer; ++il) {
        for (int64_t ikv = 0; ikv < model_.n_head_kv; ++ikv)
            summarize_page(summary_kind_, kv_->slot_k(il, seq, b.src_slot) + ikv * model_.head_dim, p, row_stride,
                           model_.head_dim, kv_->summary(il, seq, ikv, b.done));
        if (b.ring_slot >= 0) {
            kv_->copy_slot(il, seq, b.src_slot, b.ring_slot);
            kv_->offload(il, seq, b.ring_slot, b.done);
        } else {
            kv_->offload(il, seq, b.done, b.done);
            if (b.place) kv_->place(il, seq, -1, b.done, b.done);
        }
    }
}

void RetrievalKv::prefill_layer(int64_t il, const SequenceSpan& span, const float* q, const float* k, const float* v,
                                float* out) {
    const int64_t p = budget_.page_size, hd = model_.head_dim, n_kv = model_.n_head_kv, row = n_kv * hd;
    const int64_t pos0 = span.pos0, n_tokens = pos0 + span.n_tok;
    const int32_t seq = span.seq;
    history_k_.resize(sz(n_tokens * row));
    history_v_.resize(sz(n_tokens * row));
    // ---- history: offloaded pages from the CPU store, the last chunk's current page from its slot ----
    // The last chunk's current page (its last one, full or not) was not offloaded: a page is
    // offloaded once a later token exists, like a decode step's page boundary.
    const int64_t old_complete = pos0 > 0 ? (pos0 - 1) / p : 0, old_rows = pos0 - old_complete * p;
    std::vector<float> stored(sz(kv_->block_floats()));
    for (int64_t page = 0; page < old_complete; ++page)
        for (int64_t ikv = 0; ikv < n_kv; ++ikv) {
            kv_->read_block(seq, page, il, ikv, stored.data());
            const float* block = stored.data();
            for (int64_t r = 0; r < p; ++r) {
                std::memcpy(&history_k_[sz((page * p + r) * row + ikv * hd)], block + r * hd, sz(hd) * 4);
                std::memcpy(&history_v_[sz((page * p + r) * row + ikv * hd)], block + (p + r) * hd, sz(hd) * 4);
            }
        }
    if (old_rows > 0) {
        const int64_t slot = budget_.is_sparse(old_complete + 1) ? budget_.current_slot() : old_complete;
        std::memcpy(&history_k_[sz(old_complete * p * row)], kv_->slot_k(il, seq, slot), sz(old_rows * row) * 4);
        std::memcpy(&history_v_[sz(old_complete * p * row)], kv_->slot_v(il, seq, slot), sz(old_rows * row) * 4);
    }
    std::memcpy(&history_k_[sz(pos0 * row)], k, sz(span.n_tok * row) * 4);
    std::memcpy(&history_v_[sz(pos0 * row)], v, sz(span.n_tok * row) * 4);

    // ---- dense causal attention over the whole history ----
    const int32_t single_page[1] = {0};
    PagedKvView view{history_k_.data(), history_v_.data(), single_page, 1, n_tokens, n_tokens, 0, row, 0};
    std::vector<int32_t> positions(sz(span.n_tok));
    std::iota(positions.begin(), positions.end(), static_cast<int32_t>(pos0));
    cpu::attention(q, {span.n_tok, model_.n_head, n_kv, hd, positions.data()}, view, out);

    // ---- summaries and offload of the pages completed by this chunk ----
    const int64_t current = (n_tokens - 1) / p, n_pages = current + 1, fill = n_tokens - current * p;
    for (int64_t page = old_complete; page < current; ++page)
        for (int64_t ikv = 0; ikv < n_kv; ++ikv) {
            const float* keys = &history_k_[sz(page * p * row + ikv * hd)];
            summarize_page(summary_kind_, keys, p, row, hd, kv_->summary(il, seq, ikv, page));
            float* block = stored.data();
            for (int64_t r = 0; r < p; ++r) {
                std::memcpy(block + r * hd, &history_k_[sz((page * p + r) * row + ikv * hd)], sz(hd) * 4);
                std::memcpy(block + (p + r) * hd, &history_v_[sz((page * p + r) * row + ikv * hd)], sz(hd) * 4);
            }
            kv_->write_block(seq, page, il, ikv, block);
        }

    // ---- budget cache ----
    auto put_page = [&](int64_t page, int64_t slot) {
        const int64_t rows = page == current ? fill : p;
        std::memcpy(kv_->slot_k(il, seq, slot), &history_k_[sz(page * p * row)], sz(rows * row) * 4);
        std::memcpy(kv_->slot_v(il, seq, slot), &history_v_[sz(page * p * row)], sz(rows * row) * 4);
    };
    const int64_t ns = budget_.n_sink_page, n_select = budget_.n_select;
    for (int64_t ikv = 0; ikv < n_kv; ++ikv)
        for (int64_t slot = ns; slot < ns + n_select; ++slot) {
            const int32_t old = kv_->page_of_slot(il, seq, ikv, slot);
            if (old >= 0) kv_->slot_of_page(il, seq, ikv, old) = -1;
            kv_->page_of_slot(il, seq, ikv, slot) = -1;
        }
    if (!budget_.is_sparse(n_pages)) {
        for (int64_t page = 0; page < n_pages; ++page) {
            put_page(page, page);
            if (page < current && page >= ns && page < ns + n_select) kv_->place(il, seq, -1, page, page);
        }
    } else {
        for (int64_t page = 0; page < ns; ++page) put_page(page, page);
        for (int64_t page = n_pages - budget_.n_recent_page; page < current; ++page) put_page(page, budget_.ring_slot(page));
        put_page(current, budget_.current_slot());
        const int64_t end_candidate = budget_.end_candidate(n_pages);
        for (int64_t ikv = 0; ikv < n_kv; ++ikv) {
            std::vector<int32_t> chosen;
            if (mode_.mode == KvMode::kBudgetOnly) {
                for (int64_t page = end_candidate - n_select; page < end_candidate; ++page) chosen.push_back(static_cast<int32_t>(page));
            } else if (n_select > 0) {
                std::vector<RecallJob> jobs;  // middle slots are empty: every selected page is a job
                select_head(il, seq, ikv, q + (span.n_tok - 1) * model_.n_head * hd, n_pages, jobs);
                for (const auto& j : jobs) chosen.push_back(j.page);
                std::sort(chosen.begin(), chosen.end());
            }
            for (size_t i = 0; i < chosen.size(); ++i) {
                const int64_t slot = ns + static_cast<int64_t>(i);
                kv_->place(il, seq, ikv, chosen[i], slot);
                kv_->recall_now(il, {seq, static_cast<int32_t>(ikv), chosen[i], static_cast<int32_t>(slot)});
            }
        }
    }
    // The last prompt token's query is step 1's previous query.
    SeqState& s = seqs_[sz(seq)];
    std::memcpy(kv_->query(il, seq, s.n_queries % 2), q + (span.n_tok - 1) * model_.n_head * hd,
                sz(model_.n_head * hd) * 4);
}

// ---- decode ----

void RetrievalKv::select_head(int64_t il, int32_t seq, int64_t ikv, const float* q, int64_t n_pages,
                              std::vector<RecallJob>& jobs) const {
    const int64_t group = model_.group_size(), hd = model_.head_dim;
    const int64_t first = budget_.first_candidate(), end = budget_.end_candidate(n_pages), n = end - first;
    std::vector<float> scores(sz(group * n)), aggregated(sz(n));
    score_pages(q + ikv * group * hd, group, hd, kv_->summaries_of(il, seq, ikv), first, end, scores.data());
    aggregate_scores(scores.data(), group, n, aggregation_, aggregated.data());
    const std::vector<int32_t> selected = top_k_pages(aggregated, first, budget_.n_select);
    std::vector<int32_t> resident(sz(budget_.n_select));
    for (int64_t s = 0; s < budget_.n_select; ++s) resident[sz(s)] = kv_->page_of_slot(il, seq, ikv, first + s);
    // Empty middle slots (-1, before the first selection) hold no candidate, so they are evicted.
    plan_head_recall(seq, static_cast<int32_t>(ikv), selected, resident, budget_.n_sink_page, jobs);
}

void RetrievalKv::decode_layer(int64_t il, const SequenceSpan& span, const float* q, const float* k, const float* v,
                               float* out, std::vector<Background>& background) {
    const int64_t p = budget_.page_size, hd = model_.head_dim, n_kv = model_.n_head_kv, row = n_kv * hd;
    const int32_t seq = span.seq;
    SeqState& s = seqs_[sz(seq)];
    const RowPlan& step = s.plan;
    const int64_t n_tokens = span.pos0 + 1, n_pages = step.n_pages, fill = step.fill, slot = step.append_slot;
    const bool sparse = step.sparse;
    std::memcpy(kv_->slot_k(il, seq, slot) + (fill - 1) * row, k, sz(row) * 4);
    std::memcpy(kv_->slot_v(il, seq, slot) + (fill - 1) * row, v, sz(row) * 4);
    float* ring_now = kv_->query(il, seq, s.n_queries % 2);
    const float* ring_prev = kv_->query(il, seq, (s.n_queries + 1) % 2);

    using clock = std::chrono::steady_clock;
    auto ms_since = [](clock::time_point t) { return std::chrono::duration<double, std::milli>(clock::now() - t).count(); };
    if (!sparse) {  // dense: the same attention call as full mode, over slots 0 .. n_pages-1
        const auto position = static_cast<int32_t>(n_tokens - 1);
        const auto t_attention = clock::now();
        cpu::attention(q, {1, model_.n_head, n_kv, hd, &position},
                       kv_->slot_view(il, seq, identity_slots_.data(), n_pages, p), out);
        stats_.attention_ms += ms_since(t_attention);
        std::memcpy(ring_now, q, sz(model_.n_head * hd) * 4);
        return;
    }

    const auto t_wait = clock::now();
    if (speculative()) transfer_->wait(il, step_ - 1);  // Sel_{t-1} has landed
    stats_.recall_wait_ms += ms_since(t_wait);
    const auto t_select = clock::now();
    // ---- correction test (design doc 3.7) ----
    std::vector<int32_t> flagged, unflagged;
    if (step.select != SelectKind::kNone) {
        const int64_t group = model_.group_size();
        for (int64_t ikv = 0; ikv < n_kv; ++ikv) {
            bool flag = step.select == SelectKind::kSync;
            if (step.select == SelectKind::kForcedRate) {
                flag = std::uniform_real_distribution<float>(0.0f, 1.0f)(force_rng_) < *mode_.force_corr_rate;
            } else if (step.select == SelectKind::kSpeculative) {
                flag = group_cosine(q + ikv * group * hd, ring_prev + ikv * group * hd, group, hd) < mode_.correction_threshold;
            }
            (flag ? flagged : unflagged).push_back(static_cast<int32_t>(ikv));
        }
        if (step.forced) {
            ++stats_.forced_pairs[sz(il)];
        } else if (speculative()) {
            ++stats_.sparse_pairs[sz(il)];
            stats_.head_tests[sz(il)] += n_kv;
            stats_.head_flags[sz(il)] += static_cast<int64_t>(flagged.size());
            if (!flagged.empty()) ++stats_.corrected_pairs[sz(il)];
        }
        RecallPlan plan;
        plan.il = il;
        for (int32_t ikv : flagged) select_head(il, seq, ikv, q, n_pages, plan.jobs);
        kv_->apply_maps(plan);
        transfer_->recall_sync(plan);
        for (const RecallJob& j : plan.jobs) ++recalled_sync_[sz(il * n_kv + j.ikv)];
    }

    stats_.select_ms += ms_since(t_select);
    // ---- attention over all slots; each KV head sees its own middle pages ----
    const auto t_attention = clock::now();
    cpu::attention_pages(q, {1, model_.n_head, n_kv, hd, nullptr},
                         kv_->slot_view(il, seq, identity_slots_.data(), budget_.n_budget_page, fill), out);
    stats_.attention_ms += ms_since(t_attention);
    if (mode_.attention_mass_recall) record_mass_recall(il, seq, q, n_tokens);
    if (observer_) {
        for (int64_t ikv = 0; ikv < n_kv; ++ikv) {
            AttendEvent e{step_, il, seq, ikv, n_pages,
                          std::find(flagged.begin(), flagged.end(), ikv) != flagged.end(),
                          q + ikv * model_.group_size() * hd, {}};
            for (int64_t m = 0; m < budget_.n_select; ++m)
                e.middle_pages.push_back(kv_->page_of_slot(il, seq, ikv, budget_.n_sink_page + m));
            std::sort(e.middle_pages.begin(), e.middle_pages.end());
            observer_(e);
        }
    }
    if (mode_.check_invariants) kv_->check_invariants(il, seq);
    std::memcpy(ring_now, q, sz(model_.n_head * hd) * 4);
    if (speculative() && !unflagged.empty()) background.push_back({seq, n_pages, ring_now, std::move(unflagged)});
}

void RetrievalKv::record_mass_recall(int64_t il, int32_t seq, const float* q, int64_t n_tokens) {
    const int64_t p = budget_.page_size, hd = model_.head_dim, n_kv = model_.n_head_kv, group = model_.group_size();
    const int64_t current = (n_tokens - 1) / p, n_pages = current + 1;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    // logits[g][j]: the group's query heads against every key of the sequence, one GEMM per page.
    std::vector<float> logits(sz(group * n_tokens)), stored(sz(kv_->block_floats()));
    std::vector<double> middle_mass;
    for (int64_t ikv = 0; ikv < n_kv; ++ikv) {
        const float* q_group = q + ikv * group * hd;
        for (int64_t page = 0; page < n_pages; ++page) {
            const bool in_store = page < current;
            if (in_store) kv_->read_block(seq, page, il, ikv, stored.data());
            const float* keys = in_store ? stored.data() : kv_->slot_k(il, seq, budget_.current_slot()) + ikv * hd;
            const int64_t rows = in_store ? p : n_tokens - current * p;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(group), static_cast<blasint>(rows),
                        static_cast<blasint>(hd), scale, q_group, static_cast<blasint>(hd), keys,
                        static_cast<blasint>(in_store ? hd : n_kv * hd), 0.0f, logits.data() + page * p,
                        static_cast<blasint>(n_tokens));
        }
        for (int64_t g = 0; g < group; ++g) {
            const float* row = logits.data() + g * n_tokens;
            const float mx = *std::max_element(row, row + n_tokens);
            double total = 0.0, attended = 0.0, fixed = 0.0;
            middle_mass.clear();
            for (int64_t page = 0; page < n_pages; ++page) {
                const bool always = page < budget_.n_sink_page || page >= n_pages - budget_.n_recent_page;
                const bool in_set = always || kv_->slot_of_page(il, seq, ikv, page) >= 0;
                double mass = 0.0;
                for (int64_t j = page * p; j < std::min(n_tokens, (page + 1) * p); ++j)
                    mass += std::exp(static_cast<double>(row[j] - mx));
                total += mass;
                if (in_set) attended += mass;
                if (always) fixed += mass;
                else middle_mass.push_back(mass);
            }
            stats_.mass_recall.push_back(static_cast<float>(attended / total));
            // The oracle: this query head's own n_select heaviest middle pages beside sink and recent.
            const auto keep = std::min(middle_mass.size(), static_cast<size_t>(budget_.n_select));
            std::partial_sort(middle_mass.begin(), middle_mass.begin() + static_cast<std::ptrdiff_t>(keep), middle_mass.end(),
                              std::greater<>());
            const double best = std::accumulate(middle_mass.begin(), middle_mass.begin() + static_cast<std::ptrdiff_t>(keep), fixed);
            stats_.oracle_mass_recall.push_back(static_cast<float>(best / total));
        }
    }
}

}  // namespace freekv
