// bench.cpp: see bench.h. Each (depth, batch, mode, repetition) builds its own AttentionKv,
// prefills every sequence of the batch with the same random prompt tokens, discards warm-up steps,
// then times decode steps of the whole batch (one forward per step, one token per sequence).
#include "engine/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <new>
#include <numeric>
#include <random>

#include "core/error.h"
#include "core/log.h"
#include "backend/cuda/cuda_device.h"
#include "core/system_memory.h"
#include "gpu/gpu_memory_plan.h"
#include "engine/gpu_tensor_parallel_runner.h"
#include "engine/retrieval_kv.h"
#include "kv/full_attention_kv.h"

namespace freekv {

namespace {

struct CellResult {
    double tokens_per_s = 0, prefill_tokens_per_s = 0;
    std::vector<double> step_ms;
    KvStats stats;                 // the timed steps: recall volume, correction rate
    KvStats breakdown;             // the steps timed by events: select, recall, attention, gather times
    int64_t breakdown_steps = 0;
    double device_mib = 0, host_mib = 0;
    double kv_read_bytes = 0;  // GPU: K/V bytes the last decode step's attention read
};

KvStats measured_part(KvStats after, const KvStats& before) {  // the measured steps only: subtract the warm-up
    after.select_ms -= before.select_ms;
    after.recall_wait_ms -= before.recall_wait_ms;
    after.attention_ms -= before.attention_ms;
    after.gather_sync_ms -= before.gather_sync_ms;
    after.gather_background_ms -= before.gather_background_ms;
    after.host_issue_ms -= before.host_issue_ms;
    after.sequence_steps -= before.sequence_steps;
    after.transfer.sync_jobs -= before.transfer.sync_jobs;
    after.transfer.background_jobs -= before.transfer.background_jobs;
    after.transfer.sync_bytes -= before.transfer.sync_bytes;
    after.transfer.background_bytes -= before.transfer.background_bytes;
    for (size_t l = 0; l < after.sparse_pairs.size(); ++l) {
        after.sparse_pairs[l] -= before.sparse_pairs[l];
        after.corrected_pairs[l] -= before.corrected_pairs[l];
    }
    return after;
}

// Times the decode steps of a batch: `step` runs one forward of the batch (one random token per
// sequence); `snapshot` is taken after the warm-up, so the returned stats cover measured steps.
template <typename Step, typename Snapshot>
void time_decode(const ModelConfig& c, const std::vector<int64_t>& lengths, const std::vector<int32_t>& seqs, const BenchParams& p,
                 Step step, Snapshot snapshot, CellResult& out, KvStats& before) {
    const auto batch = static_cast<int64_t>(lengths.size());
    using clock = std::chrono::steady_clock;
    std::mt19937 rng(static_cast<uint32_t>(p.seed));
    std::vector<int32_t> tokens(static_cast<size_t>(batch));
    std::vector<SequenceSpan> spans(static_cast<size_t>(batch));
    std::vector<int64_t> rows(static_cast<size_t>(batch));
    std::iota(rows.begin(), rows.end(), 0);
    for (int64_t s = 0; s < p.n_warmup + p.n_gen; ++s) {
        if (s == p.n_warmup) before = snapshot();
        for (int64_t b = 0; b < batch; ++b) {
            tokens[static_cast<size_t>(b)] = static_cast<int32_t>(rng() % static_cast<uint32_t>(c.n_vocab));
            spans[static_cast<size_t>(b)] = {seqs[static_cast<size_t>(b)], lengths[static_cast<size_t>(b)] + s, 1, b};
        }
        const auto t = clock::now();
        step(tokens, spans, rows);  // returns with the logits (GPU: the greedy tokens) on the host
        if (s >= p.n_warmup) out.step_ms.push_back(std::chrono::duration<double, std::milli>(clock::now() - t).count());
    }
    const double total_s = std::accumulate(out.step_ms.begin(), out.step_ms.end(), 0.0) / 1000.0;
    out.tokens_per_s = static_cast<double>(batch * p.n_gen) / total_s;
}

// Prompt tokens of all sequences of a cell.
int64_t total_length(const std::vector<int64_t>& lengths) { return std::accumulate(lengths.begin(), lengths.end(), int64_t{0}); }

// Refuses a pinned store that the machine's RAM cannot hold before it is pinned (pinning past
// the free RAM gets the process killed, not an error). weight_bytes: one GPU's weights (0 for
// tensor-parallel ranks; the host plan does not depend on them).
void check_host_store(const ModelConfig& c, const KvModeConfig& mode, int elem_bytes, int64_t weight_bytes, int64_t batch,
                      int64_t max_tokens) {
    const gpu::GpuMemoryPlan plan = gpu::plan_gpu_memory(c, mode, elem_bytes, weight_bytes, max_tokens);
    const auto gib = [](int64_t b) { return static_cast<double>(b) / static_cast<double>(int64_t{1} << 30); };
    FREEKV_LOG_INFO("bench: batch {}: {}; pinned store of the batch {:.2f} GiB", batch, plan.describe(), gib(plan.host_bytes(batch)));
    const SystemMemory sys = system_memory();
    if (plan.host_bytes(batch) > sys.available) {
        std::string hint;
        if (!mode.store_code) {
            KvModeConfig coded = mode;
            coded.store_code = KvCode::kInt8;
            hint = fmt::format(", or keep it in 8 bits (--kv-store-dtype int8: {} bytes per token instead of {})",
                               gpu::plan_gpu_memory(c, coded, elem_bytes, weight_bytes, max_tokens).store_bytes_per_token,
                               plan.store_bytes_per_token);
        }
        FREEKV_FAIL("bench: the pinned CPU store of {} sequences of {} tokens needs {:.1f} GiB, more than the {:.1f} GiB of "
                    "RAM available; lower -b/--batch or -d/--depth{}",
                    batch, max_tokens, gib(plan.host_bytes(batch)), gib(sys.available), hint);
    }
}

// One GPU cell on `engine`: a GpuEngine (one GPU) or the tensor-parallel ranks' ModelRunner, which
// offer the same calls.
template <class Engine>
CellResult run_cell_on(Engine& engine, const ModelConfig& c, const KvModeConfig& mode, int elem_bytes, const std::vector<int64_t>& lengths,
                       const BenchParams& p, const std::vector<int32_t>& prompt) {
    using clock = std::chrono::steady_clock;
    const auto batch = static_cast<int64_t>(lengths.size());
    std::vector<int32_t> seqs;
    for (int64_t b = 0; b < batch; ++b) seqs.push_back(engine.add_sequence());
    CellResult out;
    std::vector<float> logits;
    if (!p.synthetic_kv) {
        // An untimed prefill of the longest prompt first: a shape's first forward pays one-time costs
        // (activation and history buffers, cuBLAS's per-shape set-up, kernel attributes) that a
        // running server has paid before its requests; the HF peer times after a warm-up as well.
        const int64_t len = *std::max_element(lengths.begin(), lengths.end());
        const SequenceSpan span{seqs[0], 0, len, 0};
        const int64_t last = len - 1;
        engine.forward(std::span(prompt).first(static_cast<size_t>(len)), std::span(&span, 1), std::span(&last, 1), logits);
        engine.remove_sequence(seqs[0]);
        seqs[0] = engine.add_sequence();
    }
    const auto t_prefill = clock::now();
    for (int64_t b = 0; b < batch; ++b) {
        const int64_t len = lengths[static_cast<size_t>(b)];
        if (p.synthetic_kv) {
            engine.fill_synthetic(seqs[static_cast<size_t>(b)], len, p.seed + static_cast<uint64_t>(b));
            continue;
        }
        const SequenceSpan span{seqs[static_cast<size_t>(b)], 0, len, 0};
        const int64_t last = len - 1;
        engine.forward(std::span(prompt).first(static_cast<size_t>(len)), std::span(&span, 1), std::span(&last, 1), logits);
    }
    out.prefill_tokens_per_s = p.synthetic_kv ? 0.0
                                              : static_cast<double>(total_length(lengths)) /
                                                    std::chrono::duration<double>(clock::now() - t_prefill).count();
    // A step ends with every sequence's greedy token on the host, chosen on the device (a serving
    // engine copies no logits; the measured tokens stay random, see time_decode).
    std::vector<int32_t> top_ids;
    auto step = [&](const std::vector<int32_t>& tokens, const std::vector<SequenceSpan>& spans, const std::vector<int64_t>& rows) {
        (void)engine.forward_top(tokens, spans, rows, 1, top_ids, logits);
    };
    KvStats before;
    engine.set_timing(false);  // the timed steps record no events
    // The measured steps are what a profiler started with its capture off records (gpu::profiler_range).
    time_decode(c, lengths, seqs, p, step, [&] { gpu::profiler_range(true); return engine.stats(); }, out, before);
    gpu::profiler_range(false);
    out.stats = measured_part(engine.stats(), before);
    if (p.n_breakdown > 0) {  // then the breakdown, from steps that do
        std::vector<int64_t> later = lengths;
        for (auto& len : later) len += p.n_warmup + p.n_gen;
        BenchParams bp = p;
        bp.n_warmup = 0;
        bp.n_gen = p.n_breakdown;
        CellResult ignored;
        KvStats start;
        engine.set_timing(true);
        time_decode(c, later, seqs, bp, step, [&] { return engine.stats(); }, ignored, start);
        out.breakdown = measured_part(engine.stats(), start);
        out.breakdown_steps = p.n_breakdown;
    }
    out.device_mib = static_cast<double>(engine.device_bytes()) / 1048576.0;
    out.kv_read_bytes = static_cast<double>(attended_kv_bytes(engine.last_decode_plan(), mode.page_size, c, elem_bytes));
    out.host_mib = static_cast<double>(engine.host_bytes()) / 1048576.0;
    return out;
}

int64_t max_cell_tokens(const std::vector<int64_t>& lengths, const BenchParams& p) {
    return *std::max_element(lengths.begin(), lengths.end()) + p.n_warmup + p.n_gen + p.n_breakdown + 1;
}

CellResult run_cell_gpu(const LoadedModel& m, const KvModeConfig& mode, const std::vector<int64_t>& lengths, const BenchParams& p,
                        const std::vector<int32_t>& prompt) {
    const auto batch = static_cast<int64_t>(lengths.size());
    const int64_t max_tokens = max_cell_tokens(lengths, p);
    const int elem_bytes = p.gpu->dtype() == gpu::GpuDtype::kF32 ? 4 : 2;
    check_host_store(m.config, mode, elem_bytes, p.gpu->bytes(), batch, max_tokens);
    gpu::GpuEngine engine(p.gpu, mode, batch, max_tokens, p.gpu_tuning);
    return run_cell_on(engine, m.config, mode, elem_bytes, lengths, p, prompt);
}

// The same on tensor-parallel ranks, one per GPU of p.gpu_ranks: recall volume and times are the
// ranks' merged counters (bytes summed, times of the slowest rank).
CellResult run_cell_gpu_ranks(const LoadedModel& m, const KvModeConfig& mode, const std::vector<int64_t>& lengths,
                              const BenchParams& p, const std::vector<int32_t>& prompt) {
    const auto batch = static_cast<int64_t>(lengths.size());
    const int64_t max_tokens = max_cell_tokens(lengths, p);
    const int elem_bytes = p.gpu_ranks.dtype == gpu::GpuDtype::kF32 ? 4 : 2;
    check_host_store(m.config, mode, elem_bytes, 0, batch, max_tokens);
    const auto runner = make_gpu_tensor_parallel_runner(m, mode, batch, max_tokens, p.gpu_ranks.dtype, p.gpu_tuning, p.gpu_ranks.devices);
    return run_cell_on(*runner, m.config, mode, elem_bytes, lengths, p, prompt);
}

CellResult run_cell(const LoadedModel& m, const KvModeConfig& mode, const std::vector<int64_t>& lengths, const BenchParams& p,
                    const std::vector<int32_t>& prompt) {
    using clock = std::chrono::steady_clock;
    const ModelConfig& c = m.config;
    const auto batch = static_cast<int64_t>(lengths.size());
    const int64_t max_tokens = *std::max_element(lengths.begin(), lengths.end()) + p.n_warmup + p.n_gen + 1;
    std::unique_ptr<PagedKvCache> cache;
    std::unique_ptr<AttentionKv> kv;
    RetrievalKv* retrieval = nullptr;
    std::vector<int32_t> seqs;
    if (mode.mode == KvMode::kFull) {
        cache = std::make_unique<PagedKvCache>(c.n_layer, c.n_head_kv, c.head_dim, mode.page_size,
                                               batch * ((max_tokens + mode.page_size - 1) / mode.page_size));
        for (int64_t b = 0; b < batch; ++b) seqs.push_back(cache->add_sequence());
        kv = std::make_unique<FullAttentionKv>(*cache, c.n_head);
    } else {
        auto r = make_retrieval_kv(c, mode, batch, max_tokens);
        for (int64_t b = 0; b < batch; ++b) seqs.push_back(r->add_sequence(max_tokens));
        retrieval = r.get();
        kv = std::move(r);
    }
    CellResult out;
    std::vector<float> logits;
    const auto t_prefill = clock::now();
    for (int64_t b = 0; b < batch; ++b) {
        const int64_t len = lengths[static_cast<size_t>(b)];
        const SequenceSpan span{seqs[static_cast<size_t>(b)], 0, len, 0};
        const int64_t last = len - 1;
        m.model->forward_batch(std::span(prompt).first(static_cast<size_t>(len)), std::span(&span, 1), *kv,
                               std::span(&last, 1), logits);
    }
    out.prefill_tokens_per_s =
        static_cast<double>(total_length(lengths)) / std::chrono::duration<double>(clock::now() - t_prefill).count();
    KvStats before;
    time_decode(
        c, lengths, seqs, p,
        [&](const std::vector<int32_t>& tokens, const std::vector<SequenceSpan>& spans, const std::vector<int64_t>& rows) {
            m.model->forward_batch(tokens, spans, *kv, rows, logits);
        },
        [&] { return retrieval ? retrieval->stats() : KvStats{}; }, out, before);
    if (retrieval) out.stats = measured_part(retrieval->stats(), before);
    out.breakdown = out.stats;  // host timers: no event overhead to avoid
    out.breakdown_steps = p.n_gen;
    return out;
}

// FLOPs per prompt token of a causal prefill of `depth` tokens: 2 per weight of the layers'
// matrices, plus QK^T and PV over depth / 2 keys on average (2 * 2 * head_dim * depth / 2 per
// query head and layer). The output head runs for the last token only and is left out.
double prefill_flops_per_token(const ModelConfig& c, int64_t depth) {
    const double q_dim = static_cast<double>(c.n_head * c.head_dim), kv_dim = static_cast<double>(c.n_head_kv * c.head_dim);
    const double e = static_cast<double>(c.n_embd), ff = static_cast<double>(c.n_ff);
    const double per_layer = 2.0 * (2.0 * q_dim * e + 2.0 * kv_dim * e + 3.0 * e * ff) + 2.0 * q_dim * static_cast<double>(depth);
    return per_layer * static_cast<double>(c.n_layer);
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

}  // namespace

int64_t bench_length(const BenchParams& p, int64_t depth, int64_t b, int64_t batch) {
    if (p.ragged_min <= 0 || batch <= 1) return depth;
    return p.ragged_min + (depth - p.ragged_min) * b / (batch - 1);
}

int64_t attended_kv_bytes(std::span<const RowPlan> plan, int64_t page_size, const ModelConfig& c, int64_t elem_bytes) {
    int64_t tokens = 0;
    for (const RowPlan& r : plan)
        if (r.n_attend > 0) tokens += (r.n_attend - 1) * page_size + r.fill;
    return tokens * c.n_layer * c.n_head_kv * c.head_dim * 2 * elem_bytes;
}

std::vector<BenchRow> run_bench(const LoadedModel& m, const BenchParams& p,
                                const std::function<void(const std::string&)>& progress) {
    std::vector<BenchRow> rows;
    // The decode floor's denominator: measured once, before any engine holds device memory.
    const bool on_gpu = p.gpu != nullptr || !p.gpu_ranks.devices.empty();
    const double hbm_gbps = on_gpu ? cuda::measure_hbm_read_gbps() : 0.0;
    std::mt19937 rng(static_cast<uint32_t>(p.seed));
    for (int64_t depth : p.depths) {  // every depth is checked before the first one runs
        const int64_t breakdown = on_gpu ? p.n_breakdown : 0;
        const int64_t extra = p.n_warmup + p.n_gen + breakdown;
        if (depth + extra + 1 > m.config.n_ctx_train)
            FREEKV_FAIL("-d {} plus {} generated tokens ({} warm-up, {} measured (-n), {} for the GPU breakdown "
                        "(--breakdown-steps)) exceeds the model's context {}",
                        depth, extra, p.n_warmup, p.n_gen, breakdown, m.config.n_ctx_train);
        if (p.ragged_min > 0 && p.ragged_min >= depth)
            FREEKV_FAIL("--ragged {} must be below every depth (-d {}): it is the shortest sequence of a batch", p.ragged_min, depth);
    }
    for (int64_t depth : p.depths) {
        std::vector<int32_t> prompt(static_cast<size_t>(depth));
        for (auto& t : prompt) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(m.config.n_vocab));
        for (int64_t batch : p.batches) {
            std::vector<int64_t> lengths;
            for (int64_t b = 0; b < batch; ++b) lengths.push_back(bench_length(p, depth, b, batch));
            const size_t n_modes = p.modes.size();
            std::vector<std::vector<CellResult>> results(n_modes);
            std::vector<std::string> errors(n_modes);
            for (int rep = 0; rep < p.reps; ++rep) {
                for (size_t k = 0; k < n_modes; ++k) {
                    const size_t i = (k + static_cast<size_t>(rep)) % n_modes;  // rotate the order
                    if (!errors[i].empty()) continue;
                    if (progress) progress(fmt::format("{} d{} b{} rep {}", p.labels[i], depth, batch, rep + 1));
                    try {
                        results[i].push_back(!p.gpu_ranks.devices.empty() ? run_cell_gpu_ranks(m, p.modes[i], lengths, p, prompt)
                                             : p.gpu                        ? run_cell_gpu(m, p.modes[i], lengths, p, prompt)
                                                                            : run_cell(m, p.modes[i], lengths, p, prompt));
                    } catch (const std::bad_alloc&) {
                        errors[i] = "out of memory";
                    } catch (const Error& e) {
                        errors[i] = e.what();
                    }
                }
            }
            const size_t first_row = rows.size();
            double floor_ms = 0.0;
            for (size_t i = 0; i < n_modes; ++i) {
                BenchRow row;
                row.label = p.labels[i];
                row.recall_impl = p.modes[i].recall();
                row.force_corr_rate = p.modes[i].force_corr_rate.value_or(-1.0f);
                row.depth = depth;
                row.depth_min = lengths.front();
                row.batch = batch;
                if (!errors[i].empty()) {
                    row.oom = true;
                    row.error = errors[i];
                    rows.push_back(row);
                    continue;
                }
                std::vector<double> tps, steps;
                for (const auto& r : results[i]) {
                    tps.push_back(r.tokens_per_s);
                    steps.insert(steps.end(), r.step_ms.begin(), r.step_ms.end());
                    row.prefill_tokens_per_s += r.prefill_tokens_per_s / static_cast<double>(results[i].size());
                }
                const double mean = std::accumulate(tps.begin(), tps.end(), 0.0) / static_cast<double>(tps.size());
                double var = 0.0;
                for (double x : tps) var += (x - mean) * (x - mean);
                row.tokens_per_s = mean;
                row.tokens_per_s_std = tps.size() > 1 ? std::sqrt(var / static_cast<double>(tps.size() - 1)) : 0.0;
                row.step_ms_median = median(steps);
                std::sort(steps.begin(), steps.end());
                row.step_ms_p99 = steps[std::min(steps.size() - 1, steps.size() * 99 / 100)];
                const KvStats& s = results[i].back().stats;
                const KvStats& bd = results[i].back().breakdown;
                const double n_steps = static_cast<double>(p.n_gen);
                const double n_bd = static_cast<double>(std::max<int64_t>(results[i].back().breakdown_steps, 1));
                row.select_ms = bd.select_ms / n_bd;
                row.recall_wait_ms = bd.recall_wait_ms / n_bd;
                row.attention_ms = bd.attention_ms / n_bd;
                row.rest_ms = std::max(0.0, row.step_ms_median - row.select_ms - row.recall_wait_ms - row.attention_ms);
                row.pages_per_step = s.sequence_steps > 0 ? static_cast<double>(s.transfer.sync_jobs + s.transfer.background_jobs) /
                                                                 n_steps
                                                           : 0.0;
                row.correction_rate = s.sparse_pairs.empty() ? 0.0 : s.correction_rate();
                const double recall_ms = bd.gather_sync_ms + bd.gather_background_ms;
                const double recall_bytes = static_cast<double>(bd.transfer.sync_bytes + bd.transfer.background_bytes);
                row.recall_gbps = recall_ms > 0 && recall_bytes > 0 ? recall_bytes / (recall_ms * 1e6) : 0.0;
                row.recall_gbps_per_gpu = row.recall_gbps / static_cast<double>(std::max<size_t>(p.gpu_ranks.devices.size(), 1));
                row.recall_sync_ms = bd.gather_sync_ms / n_bd;
                row.recall_background_ms = bd.gather_background_ms / n_bd;
                row.host_issue_ms = s.host_issue_ms / n_steps;
                double flops = 0;  // of the whole cell's prefill, per prompt token
                for (int64_t len : lengths) flops += static_cast<double>(len) * prefill_flops_per_token(m.config, len);
                flops /= static_cast<double>(total_length(lengths));
                row.prefill_tflops = row.prefill_tokens_per_s * flops / 1e12;
                row.device_mib = results[i].back().device_mib;
                if (hbm_gbps > 0 && p.gpu) {  // one GPU: its whole step's floor (ranks: not computed)
                    row.hbm_gbps = hbm_gbps;
                    row.roofline_ms = (static_cast<double>(p.gpu->decode_read_bytes()) + results[i].back().kv_read_bytes) /
                                      (hbm_gbps * 1e6);
                }
                row.host_mib = results[i].back().host_mib;
                if (p.modes[i].mode == KvMode::kBudgetOnly) floor_ms = row.step_ms_median;
                rows.push_back(row);
            }
            if (floor_ms > 0)
                for (size_t r = first_row; r < rows.size(); ++r)
                    if (!rows[r].oom) rows[r].floor_ratio = rows[r].step_ms_median / floor_ms;
        }
    }
    return rows;
}

}  // namespace freekv
