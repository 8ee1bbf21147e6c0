// cmd_needle.cpp: `freekv needle`: passkey and/or key-value retrieval accuracy per depth and length,
// a grid per (task, KV mode) and every mode side by side per task, as markdown or JSON rows.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <memory>

#include "app/commands.h"
#include "app/kv_flags.h"
#include "core/error.h"
#include "core/progress.h"
#include "engine/needle.h"
#include "engine/needle_report.h"

namespace freekv::app {

Command register_needle(CLI::App& cmd) {
    struct Flags {
        std::vector<std::string> tasks{"passkey"};
        std::string model, haystack, lengths, depths = "0,10,20,30,40,50,60,70,80,90,100", output = "md", json_file;
        int trials = 2;
        bool mass_recall = false;
        uint64_t seed = 1234;
        RunFlags run;
        KvFlags kv;
    };
    auto f = std::make_shared<Flags>();
    add_model_flag(cmd, f->model);
    cmd.add_option("--haystack", f->haystack, "filler text file for passkey (any long text)")->envname("FREEKV_ARG_HAYSTACK");
    cmd.add_option("--task", f->tasks, "passkey, kv, or both as passkey,kv (passkey)")
        ->delimiter(',')
        ->check(CLI::IsMember({"passkey", "kv"}));
    cmd.add_option("--lengths", f->lengths, "prompt lengths in tokens (default: 1/8, 1/4, 1/2 and all of the context)");
    cmd.add_option("--depths", f->depths, "needle depths in percent (0,10,...,100)");
    cmd.add_option("--trials", f->trials, "cases per (length, depth) (2)")->check(CLI::Range(1, 1000));
    cmd.add_option("-s,--seed", f->seed, "seed of the keys and filler offsets (1234)");
    cmd.add_option("-o,--output", f->output, "md (grids and a side-by-side table per task) or json (one row per cell)")
        ->check(CLI::IsMember({"md", "json"}));
    cmd.add_flag("--mass-recall", f->mass_recall,
                 "also measure the share of full attention mass that each sparse step attends (slower: scores every key)");
    cmd.add_option("--json", f->json_file, "also append the JSON rows to this file (a long grid's results, both ways)");
    f->run.add_to(cmd);
    f->kv.add_to(cmd);
    return [f]() -> int {
        f->run.apply();
        LoadedModel m = load_model(f->model);
        fmt::print(stderr, "{}\n", m.summary());
        if (!m.tokenizer) FREEKV_FAIL("{} has no tokenizer.json", f->model);
        std::vector<NeedleTask> tasks;
        for (const auto& t : f->tasks) tasks.push_back(t == "kv" ? NeedleTask::kKeyValue : NeedleTask::kPasskey);
        NeedleParams params;
        params.gpu = f->run.gpu_weights(m);
        params.tensor_parallel = f->run.tensor_parallel;
        params.gpu_ranks = f->run.gpu_ranks;
        const int64_t ctx = m.config.n_ctx_train;
        const int64_t answer = std::find(tasks.begin(), tasks.end(), NeedleTask::kKeyValue) != tasks.end() ? 48 : 16;
        params.lengths = f->lengths.empty() ? std::vector<int64_t>{ctx / 8, ctx / 4, ctx / 2, ctx - answer}
                                            : parse_int_list(f->lengths, "--lengths", 1, ctx);
        for (int64_t d : parse_int_list(f->depths, "--depths", 0, 100)) params.depths.push_back(static_cast<int>(d));
        params.trials = f->trials;
        params.seed = f->seed;
        std::vector<int32_t> haystack;
        if (std::find(tasks.begin(), tasks.end(), NeedleTask::kPasskey) != tasks.end()) {
            if (f->haystack.empty()) FREEKV_FAIL("the passkey task needs --haystack FILE (any long text)");
            haystack = m.tokenizer->encode(read_prompt("", f->haystack));
        }
        const auto modes = f->kv.resolve_all();
        std::FILE* json_out = nullptr;
        if (!f->json_file.empty()) {
            json_out = std::fopen(f->json_file.c_str(), "a");
            if (json_out == nullptr) FREEKV_FAIL("--json {}: cannot open it for appending", f->json_file);
        }
        const std::unique_ptr<std::FILE, int (*)(std::FILE*)> json_closer(json_out, [](std::FILE* p) { return p ? std::fclose(p) : 0; });
        for (const NeedleTask task : tasks) {
            params.task = task;
            const std::string task_name = task == NeedleTask::kKeyValue ? "kv" : "passkey";
            std::vector<NeedleRun> runs;
            for (const auto& [label, mode] : modes) {
                params.mode = mode;
                params.mode.attention_mass_recall = f->mass_recall;
                fmt::print(stderr, "{} {}: {}\n", task_name, label, mode.describe());
                std::unique_ptr<ProgressLine> line;
                NeedleRun run{task_name, label, mode.describe(), params.lengths, params.depths, params.trials, {},
                              m.config.n_layer, m.config.n_head};
                run.cells = run_needle(m, haystack, params, [&](int64_t done, int64_t total) {
                    if (!line) line = std::make_unique<ProgressLine>("needle", total, "cases");
                    line->update(done);
                });
                if (line) line->finish();
                if (f->output == "json") {
                    fmt::print("{}", needle_json(run));
                } else {
                    fmt::print("\n{}", needle_grid_markdown(run));
                }
                if (json_out != nullptr) {
                    fmt::print(json_out, "{}", needle_json(run));
                    std::fflush(json_out);
                }
                std::fflush(stdout);
                runs.push_back(std::move(run));
            }
            if (f->output == "md") fmt::print("\n{}", needle_summary_markdown(runs));
        }
        return 0;
    };
}

}  // namespace freekv::app
