// cmd_perplexity.cpp: `freekv perplexity`: decode-time perplexity of a text file under a KV mode,
// with --compare full adding KL divergence, top-1 agreement and attention-mass recall.
#include <fmt/format.h>

#include <cmath>

#include "app/commands.h"
#include "app/kv_flags.h"
#include "core/error.h"
#include "core/progress.h"
#include "engine/perplexity.h"

namespace freekv::app {

Command register_perplexity(CLI::App& cmd) {
    struct Flags {
        std::string model, file, compare, output = "md";
        int64_t n_ctx = 8192, prefix = 4096, chunks = 0;
        RunFlags run;
        KvFlags kv;
    };
    auto f = std::make_shared<Flags>();
    add_model_flag(cmd, f->model);
    cmd.add_option("-f,--file", f->file, "text file")->required()->envname("FREEKV_ARG_FILE");
    cmd.add_option("-c,--ctx-size", f->n_ctx, "window length in tokens (8192)")->envname("FREEKV_ARG_CTX_SIZE");
    cmd.add_option("--prefix", f->prefix, "tokens prefilled per window; the rest are decoded one by one (4096)")
        ->envname("FREEKV_ARG_PREFIX");
    cmd.add_option("--chunks", f->chunks, "windows to score (0 = all)")->envname("FREEKV_ARG_CHUNKS");
    cmd.add_option("--compare", f->compare, "reference mode run in lockstep: full")->check(CLI::IsMember({"full"}));
    cmd.add_option("-o,--output", f->output, "md or json")->check(CLI::IsMember({"md", "json"}));
    f->run.add_to(cmd);
    f->kv.add_to(cmd);
    return [f]() -> int {
        f->run.apply();
        PerplexityParams params;
        params.n_ctx = f->n_ctx;
        params.prefix = f->prefix;
        params.max_windows = f->chunks;
        params.compare_full = f->compare == "full";
        for (auto& [label, mode] : f->kv.resolve_all()) {
            params.labels.push_back(label);
            params.modes.push_back(mode);
        }
        LoadedModel m = load_model(f->model);
        fmt::print(stderr, "{}\n", m.summary());
        params.gpu = f->run.gpu_weights(m);
        params.tensor_parallel = f->run.tensor_parallel;
        params.gpu_ranks = f->run.gpu_ranks;
        for (size_t i = 0; i < params.modes.size(); ++i) fmt::print(stderr, "{}: {}\n", params.labels[i], params.modes[i].describe());
        if (!m.tokenizer) FREEKV_FAIL("{} has no tokenizer.json", f->model);
        const std::vector<int32_t> tokens = m.tokenizer->encode(read_prompt("", f->file));
        std::unique_ptr<ProgressLine> line;
        const auto results = run_perplexity(m, tokens, params, [&](int64_t done, int64_t total) {
            if (!line) line = std::make_unique<ProgressLine>("perplexity", total, "tokens");
            line->update(done);
        });
        if (line) line->finish();
        if (f->output == "json") {
            for (const PerplexityResult& r : results) {
                const KvStats& s = r.kv_stats;
                fmt::print("{{\"kv_mode\":\"{}\",\"config\":\"{}\",\"windows\":{},\"scored\":{},\"ppl\":{:.6f},\"ppl_err\":{:.6f}",
                           r.label, r.mode.describe(), r.n_windows, r.n_scored, r.ppl(), r.ppl_error());
                if (params.compare_full)
                    fmt::print(",\"full_ppl\":{:.6f},\"kl_mean\":{:.6g},\"kl_p99\":{:.6g},\"top1\":{:.6f},"
                               "\"mass_recall_mean\":{:.6f},\"mass_recall_p5\":{:.6f}",
                               std::exp(r.full_nll_mean), r.kl_mean, r.kl_p99, r.top1_agreement, s.mass_recall_mean(),
                               s.mass_recall_percentile(5));
                fmt::print(",\"correction_rate\":{:.6f},\"pages_per_step\":{:.4f},\"recall_bytes\":{}}}\n",
                           s.correction_rate(), s.pages_per_step(), s.transfer.sync_bytes + s.transfer.background_bytes);
            }
            return 0;
        }
        fmt::print("| kv mode | PPL | ");
        if (params.compare_full) fmt::print("vs full | KL mean | KL p99 | top-1 agree | mass recall mean | mass recall p5 | ");
        fmt::print("correction rate | pages/step |\n|---|---|");
        if (params.compare_full) fmt::print("---|---|---|---|---|---|");
        fmt::print("---|---|\n");
        for (const PerplexityResult& r : results) {
            const KvStats& s = r.kv_stats;
            fmt::print("| {} | {:.3f} ± {:.3f} | ", r.label, r.ppl(), r.ppl_error());
            if (params.compare_full)
                fmt::print("{:+.2f}% | {:.5f} | {:.4f} | {:.4f} | {:.4f} | {:.4f} | ",
                           100.0 * (r.ppl() / std::exp(r.full_nll_mean) - 1.0), r.kl_mean, r.kl_p99, r.top1_agreement,
                           s.mass_recall_mean(), s.mass_recall_percentile(5));
            fmt::print("{:.4f} | {:.2f} |\n", s.correction_rate(), s.pages_per_step());
        }
        fmt::print("\n{} windows of {} tokens, prefix {}, {} scored tokens per mode; PPL ± one standard error\n",
                   results.front().n_windows, params.n_ctx, params.prefix, results.front().n_scored);
        return 0;
    };
}

}  // namespace freekv::app
