// cmd_needle.cpp: `freekv needle`: passkey or key-value retrieval accuracy per depth and length,
// one table per KV mode.
#include <fmt/format.h>

#include "app/commands.h"
#include "app/kv_flags.h"
#include "core/error.h"
#include "core/progress.h"
#include "engine/needle.h"

namespace freekv::app {

Command register_needle(CLI::App& cmd) {
    struct Flags {
        std::string model, haystack, task = "passkey", lengths, depths = "0,10,20,30,40,50,60,70,80,90,100";
        int trials = 2;
        uint64_t seed = 1234;
        RunFlags run;
        KvFlags kv;
    };
    auto f = std::make_shared<Flags>();
    add_model_flag(cmd, f->model);
    cmd.add_option("--haystack", f->haystack, "filler text file for passkey (any long text)")->envname("FREEKV_ARG_HAYSTACK");
    cmd.add_option("--task", f->task, "passkey or kv")->check(CLI::IsMember({"passkey", "kv"}));
    cmd.add_option("--lengths", f->lengths, "prompt lengths in tokens (default: 1/8, 1/4, 1/2 and all of the context)");
    cmd.add_option("--depths", f->depths, "needle depths in percent (0,10,...,100)");
    cmd.add_option("--trials", f->trials, "cases per (length, depth) (2)")->check(CLI::Range(1, 1000));
    cmd.add_option("-s,--seed", f->seed, "seed of the keys and filler offsets (1234)");
    f->run.add_to(cmd);
    f->kv.add_to(cmd);
    return [f]() -> int {
        f->run.apply();
        LoadedModel m = load_model(f->model);
        fmt::print(stderr, "{}\n", m.summary());
        if (!m.tokenizer) FREEKV_FAIL("{} has no tokenizer.json", f->model);
        NeedleParams params;
        params.gpu = f->run.gpu_weights(m);
        params.task = f->task == "kv" ? NeedleTask::kKeyValue : NeedleTask::kPasskey;
        const int64_t answer = params.task == NeedleTask::kPasskey ? 16 : 48;
        const int64_t ctx = m.config.n_ctx_train;
        params.lengths = f->lengths.empty() ? std::vector<int64_t>{ctx / 8, ctx / 4, ctx / 2, ctx - answer}
                                            : parse_int_list(f->lengths, "--lengths", 1, ctx);
        for (int64_t d : parse_int_list(f->depths, "--depths", 0, 100)) params.depths.push_back(static_cast<int>(d));
        params.trials = f->trials;
        params.seed = f->seed;
        std::vector<int32_t> haystack;
        if (params.task == NeedleTask::kPasskey) {
            if (f->haystack.empty()) FREEKV_FAIL("the passkey task needs --haystack FILE (any long text)");
            haystack = m.tokenizer->encode(read_prompt("", f->haystack));
        }
        for (const auto& [label, mode] : f->kv.resolve_all()) {
            params.mode = mode;
            fmt::print(stderr, "{}: {}\n", label, mode.describe());
            std::unique_ptr<ProgressLine> line;
            const auto cells = run_needle(m, haystack, params, [&](int64_t done, int64_t total) {
                if (!line) line = std::make_unique<ProgressLine>("needle", total, "cases");
                line->update(done);
            });
            if (line) line->finish();
            fmt::print("\n{} accuracy, kv mode {} ({} cases per cell)\n\n| depth |", f->task, label, params.trials);
            for (int64_t len : params.lengths) fmt::print(" {} |", len);
            fmt::print("\n|---|");
            for (size_t i = 0; i < params.lengths.size(); ++i) fmt::print("---|");
            fmt::print("\n");
            int correct = 0, total = 0;
            for (int depth : params.depths) {
                fmt::print("| {}% |", depth);
                for (int64_t len : params.lengths)
                    for (const NeedleCell& c : cells)
                        if (c.length == len && c.depth == depth) {
                            fmt::print(" {:.0f}% |", 100.0 * c.correct / c.total);
                            correct += c.correct;
                            total += c.total;
                        }
                fmt::print("\n");
            }
            fmt::print("\noverall {}/{} = {:.1f}%\n", correct, total, 100.0 * correct / std::max(total, 1));
        }
        return 0;
    };
}

}  // namespace freekv::app
