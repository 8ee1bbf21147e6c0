// cmd_bench.cpp: `freekv bench`: every KV mode side by side on one model (a named synthetic shape
// by default, or -m), over depths and batch sizes, in one table (markdown, csv or json lines).
#include <fmt/format.h>

#include "app/commands.h"
#include "app/kv_flags.h"
#include "core/error.h"
#include "engine/bench.h"
#include "model/synthetic_model.h"

namespace freekv::app {

Command register_bench(CLI::App& cmd) {
    struct Flags {
        std::string model, shape = "tiny", depths = "4096", batches = "1,2", output = "md", kv_fill = "auto";
        int64_t n_gen = 32, ragged = 0, breakdown_steps = 32;
        int reps = 2;
        RunFlags run;
        float force_corr_rate = -1;
        KvFlags kv;
        gpu::GpuTuning tuning;
        std::string diag = "off";
    };
    auto f = std::make_shared<Flags>();
    f->kv.mode = "full,budget-only,streaming,quest,arkvale,freekv,freekv:corr-off,freekv:no-spec";
    cmd.add_option("-m,--model", f->model, "model folder or .gguf (default: a synthetic --shape)")->envname("FREEKV_ARG_MODEL");
    cmd.add_option("--shape", f->shape, fmt::format("synthetic weights of a named shape: {} (tiny)", kNamedShapes));
    cmd.add_option("-d,--depth", f->depths, "context depths, comma-separated (4096)");
    cmd.add_option("-b,--batch", f->batches, "batch sizes, comma-separated (1,2)");
    cmd.add_option("--breakdown-steps", f->breakdown_steps,
                   "GPU: further decode steps timed with events for the breakdown columns, after the timed steps that "
                   "record none (32; 0: no breakdown)")
        ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
    cmd.add_option("--ragged", f->ragged,
                   "ragged batches: the context lengths of a batch's sequences spread evenly from this many tokens up "
                   "to the depth (e.g. -d 131072 -b 8 --ragged 8192)")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
    cmd.add_option("-n,--n-gen", f->n_gen, "decode steps measured per cell (32)")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
    cmd.add_option("-r,--repetitions", f->reps, "repetitions per cell, mode order rotated (2)")->check(CLI::Range(1, 100));
    cmd.add_option("-o,--output", f->output, "md, csv or json")->check(CLI::IsMember({"md", "csv", "json"}));
    cmd.add_option("--force-corr-rate", f->force_corr_rate,
                   "flag each (step, layer, sequence, KV head) with this probability (default 0.5 with synthetic weights, "
                   "whose query similarity means nothing; natural correction with -m)")
        ->check(CLI::Range(0.0f, 1.0f));
    cmd.add_option("--kv-fill", f->kv_fill,
                   "how the GPU bench fills the context: prefill (timed after one untimed prefill of the longest prompt), "
                   "synthetic (pseudo-random K/V, no model run) or auto (synthetic for --shape, prefill for -m)")
        ->check(CLI::IsMember({"auto", "prefill", "synthetic"}));
    f->run.add_to(cmd);
    f->kv.add_to(cmd);
    add_gpu_tuning_flags(cmd, f->tuning, f->diag);
    return [f]() -> int {
        f->run.apply();
        if (f->run.tensor_parallel > 1 && f->run.backend != "cuda")
            FREEKV_FAIL("freekv bench runs --tensor-parallel {} on GPUs only (--device cuda); on the CPU the ranks run with "
                        "generate, perplexity, needle and serve", f->run.tensor_parallel);
        finish_gpu_tuning(f->tuning, f->diag);
        const bool synthetic = f->model.empty();
        LoadedModel m = synthetic ? make_synthetic_model(f->shape) : load_model(f->model);
        fmt::print(stderr, "{}\n", m.summary());
        BenchParams p;
        p.depths = parse_int_list(f->depths, "-d/--depth", 1, int64_t{1} << 24);
        p.batches = parse_int_list(f->batches, "-b/--batch", 1, int64_t{1} << 20);
        p.n_gen = f->n_gen;
        p.ragged_min = f->ragged;
        p.n_breakdown = f->breakdown_steps;
        p.reps = f->reps;
        p.gpu = f->run.gpu_weights(m);
        p.gpu_ranks = f->run.gpu_ranks;
        p.gpu_tuning = f->tuning;
        const bool on_gpu = p.gpu != nullptr || !p.gpu_ranks.devices.empty();
        if (on_gpu) fmt::print(stderr, "bench: {}\n", f->tuning.describe());
        if (!p.gpu_ranks.devices.empty())
            fmt::print(stderr, "bench: {} tensor-parallel ranks on GPUs {}\n", p.gpu_ranks.devices.size(), fmt::join(p.gpu_ranks.devices, ","));
        p.synthetic_kv = on_gpu && (f->kv_fill == "synthetic" || (f->kv_fill == "auto" && synthetic));
        if (p.synthetic_kv) fmt::print(stderr, "bench: context filled with pseudo-random K/V (--kv-fill synthetic), no prefill\n");
        const float rate = f->force_corr_rate >= 0 ? f->force_corr_rate : (synthetic ? 0.5f : -1.0f);
        for (auto& [label, mode] : f->kv.resolve_all()) {
            if (rate >= 0 && mode.mode == KvMode::kFreekv && mode.correction_on() && mode.spec_retrieval) mode.force_corr_rate = rate;
            p.labels.push_back(label);
            p.modes.push_back(mode);
            fmt::print(stderr, "{}: {}\n", label, mode.describe());
        }
        const auto rows = run_bench(m, p, [](const std::string& what) { fmt::print(stderr, "bench: {}\n", what); });
        const std::string name = (synthetic ? f->shape + " (synthetic bf16)" : m.path) +
                                 (f->run.backend == "cuda" ? (f->run.gpu_dtype == "f32" ? " cuda f32" : " cuda") : " cpu") +
                                 (f->run.tensor_parallel > 1 ? fmt::format(" tp{}", f->run.tensor_parallel) : "");
        if (f->output == "json") {
            for (const auto& r : rows)
                fmt::print("{{\"model\":\"{}\",\"kv_mode\":\"{}\",\"depth\":{},\"depth_min\":{},\"batch\":{},\"oom\":{},\"tokens_per_s\":{:.3f},"
                           "\"tokens_per_s_std\":{:.3f},\"step_ms\":{:.4f},\"step_ms_p99\":{:.4f},\"floor_ratio\":{:.4f},"
                           "\"select_ms\":{:.4f},\"recall_wait_ms\":{:.4f},\"attention_ms\":{:.4f},\"rest_ms\":{:.4f},"
                           "\"pages_per_step\":{:.2f},\"correction_rate\":{:.4f},\"prefill_tokens_per_s\":{:.1f},\"backend\":\"{}\","
                           "\"kv_gpu_mib\":{:.1f},\"kv_host_mib\":{:.1f},\"tensor_parallel\":{},\"recall_gbps\":{:.2f},\"recall_gbps_per_gpu\":{:.2f},\"recall_sync_ms\":{:.4f},"
                           "\"recall_background_ms\":{:.4f},\"prefill_tflops\":{:.2f},\"recall_impl\":\"{}\",\"force_corr_rate\":{},"
                           "\"attn_min_split_tokens\":{},\"attn_split_blocks\":{},\"attn_fused_combine\":{},\"attn_pdl\":{},\"attn_v_registers\":{},\"cuda_graphs\":{},\"pdl\":{},\"sync_gather_ctas\":{},\"bg_gather_ctas\":{},\"gemm_sm_reserve\":{},"
                           "\"prefill_install_beside\":{},\"prefill_install_ctas\":{},\"diag_background\":\"{}\",\"host_issue_ms\":{:.4f},"
                           "\"roofline_ms\":{:.4f},\"hbm_gbps\":{:.1f}}}\n",
                           name, r.label, r.depth, r.depth_min, r.batch, r.oom ? "true" : "false", r.tokens_per_s, r.tokens_per_s_std,
                           r.step_ms_median, r.step_ms_p99, r.floor_ratio, r.select_ms, r.recall_wait_ms, r.attention_ms,
                           r.rest_ms, r.pages_per_step, r.correction_rate, r.prefill_tokens_per_s, f->run.backend, r.device_mib,
                           r.host_mib, f->run.tensor_parallel, r.recall_gbps, r.recall_gbps_per_gpu, r.recall_sync_ms, r.recall_background_ms, r.prefill_tflops,
                           recall_impl_name(r.recall_impl), r.force_corr_rate >= 0 ? fmt::format("{:.3f}", r.force_corr_rate) : "null",
                           p.gpu_tuning.attn_min_split_tokens, p.gpu_tuning.attn_split_blocks, p.gpu_tuning.attn_fused_combine ? "true" : "false",
                           p.gpu_tuning.attn_pdl ? "true" : "false", p.gpu_tuning.attn_v_registers ? "true" : "false",
                           p.gpu_tuning.cuda_graphs ? "true" : "false", p.gpu_tuning.pdl ? "true" : "false",
                           p.gpu_tuning.sync_gather_ctas, p.gpu_tuning.bg_gather_ctas,
                           p.gpu_tuning.gemm_sm_reserve ? "true" : "false", p.gpu_tuning.prefill_install_beside ? "true" : "false",
                           p.gpu_tuning.prefill_install_ctas, gpu::diag_background_name(p.gpu_tuning.diag_background),
                           r.host_issue_ms, r.roofline_ms, r.hbm_gbps);
            return 0;
        }
        const bool csv = f->output == "csv";
        const char* sep = csv ? "," : " | ";
        // A ragged cell's depth column gives the shortest and the longest context.
        auto depth_of = [](const BenchRow& r) {
            return r.depth_min != r.depth ? fmt::format("{}-{}", r.depth_min, r.depth) : fmt::format("{}", r.depth);
        };
        if (csv) fmt::print("model,kv_mode,depth,batch,tokens_per_s,tokens_per_s_std,step_ms,step_ms_p99,vs_floor,select_ms,"
                            "recall_wait_ms,attention_ms,rest_ms,pages_per_step,recall_gbps,correction_rate,prefill_tokens_per_s,prefill_tflops,"
                            "kv_gpu_mib,kv_host_mib\n");
        else fmt::print("| model | kv mode | depth | batch | t/s | ms/step | p99 ms | vs floor | select | recall wait | attention | "
                        "rest | pages/step | recall GB/s | corr rate | prefill t/s | prefill TFLOP/s | KV GPU MiB | KV host MiB |\n"
                        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for (const auto& r : rows) {
            if (!csv) fmt::print("| ");
            if (r.oom) {
                fmt::print("{}{}{}{}{}{}{}{}OOM: {}{}\n", name, sep, r.label, sep, depth_of(r), sep, r.batch, sep, r.error,
                           csv ? "" : " |");
                continue;
            }
            fmt::print("{}{}{}{}{}{}{}{}{:.1f} ± {:.1f}{}{:.2f}{}{:.2f}{}{}{}{:.3f}{}{:.3f}{}{:.3f}{}{:.3f}{}{:.1f}{}{}{}{:.3f}{}{:.0f}{}{:.2f}{}{:.0f}{}{:.0f}{}\n",
                       name, sep, r.label, sep, depth_of(r), sep, r.batch, sep, r.tokens_per_s, r.tokens_per_s_std, sep,
                       r.step_ms_median, sep, r.step_ms_p99, sep,
                       r.floor_ratio > 0 ? fmt::format("{:.0f}%", 100.0 * r.floor_ratio) : std::string("-"), sep,
                       r.select_ms, sep, r.recall_wait_ms, sep, r.attention_ms, sep, r.rest_ms, sep, r.pages_per_step, sep,
                       r.recall_gbps > 0 ? fmt::format("{:.1f}", r.recall_gbps) : std::string("-"), sep, r.correction_rate, sep,
                       r.prefill_tokens_per_s, sep, r.prefill_tflops, sep, r.device_mib, sep, r.host_mib, csv ? "" : " |");
        }
        if (!csv)
            fmt::print("\nt/s: mean ± std over {} repetitions of {} decode steps after {} warm-up steps; ms/step: median "
                       "(p99) of all measured steps; vs floor: step time / budget-only's; select, recall wait, attention, "
                       "rest: ms per step on the critical path{}. recall GB/s: recalled bytes over the device time of the recall kernels "
                       "inside the decode loop (GPU). KV GPU/host MiB: the engine's KV, maps and scratch on the GPU "
                       "(weights excluded) and its pinned CPU store. Excluded: tokenization and sampling (random token ids).{}{}\n",
                       p.reps, p.n_gen, p.n_warmup, on_gpu ? fmt::format(" (GPU: event times of the main stream over {} further steps, so that the timed steps record no "
                                          "events; prefill t/s 0 = synthetic K/V fill)", p.n_breakdown)
                             : std::string(),
                       std::string(p.synthetic_kv ? " Context: pseudo-random K/V, no prefill." : "") +
                           (p.ragged_min > 0 ? " Ragged batches: depth shortest-longest, lengths spread evenly." : ""),
                       rate >= 0 ? fmt::format(" FreeKV correction is forced at rate {:.2f} (random weights).", rate)
                                 : std::string());
        if (!csv && !p.gpu_ranks.devices.empty()) {  // the recall rate per GPU beside the table's sum
            std::string line;
            for (const auto& r : rows)
                if (!r.oom && r.recall_gbps > 0)
                    line += fmt::format("{}{} d{} b{} {:.1f} GB/s per GPU ({:.1f} in all)", line.empty() ? "" : "; ", r.label, r.depth,
                                        r.batch, r.recall_gbps_per_gpu, r.recall_gbps);
            fmt::print("\n{} tensor-parallel ranks: the step is every rank's (they run together); recall GB/s sums the ranks' bytes "
                       "over the slowest rank's recall time; KV MiB sum every GPU and rank store.{}{}\n",
                       p.gpu_ranks.devices.size(), line.empty() ? "" : " Recall: ", line);
        }
        if (!csv && p.gpu) {  // whether the host's launches keep ahead of the device
            std::string line;
            for (const auto& r : rows)
                if (!r.oom)
                    line += fmt::format("{}{} d{} b{} {:.2f} of {:.2f}", line.empty() ? "" : "; ", r.label, r.depth, r.batch,
                                        r.host_issue_ms, r.step_ms_median);
            fmt::print("\nHost issue time per step (ms until its last launch is issued, of the step): {}\n", line);
            std::string floor_line;
            double gbps = 0;
            for (const auto& r : rows)
                if (!r.oom && r.roofline_ms > 0) {
                    gbps = r.hbm_gbps;
                    floor_line += fmt::format("{}{} d{} b{} {:.2f} ms (step {:.2f}x)", floor_line.empty() ? "" : "; ", r.label, r.depth,
                                              r.batch, r.roofline_ms, r.step_ms_median / r.roofline_ms);
                }
            if (!floor_line.empty())
                fmt::print("Memory floor per step ((weights a decode step reads, {:.2f} GB, + the K/V its attention reads) / the "
                           "measured HBM read rate, {:.0f} GB/s): {}\n",
                           static_cast<double>(p.gpu->decode_read_bytes()) * 1e-9, gbps, floor_line);
        }
        return 0;
    };
}

}  // namespace freekv::app
