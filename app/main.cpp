// main.cpp: the freekv binary: parses the subcommand and runs it; every freekv::Error becomes one
// "error: ..." line on stderr and exit code 1.
#include <omp.h>

#include <map>
#include <sstream>

#include "app/commands.h"
#include "backend/cuda/cuda_device.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "core/progress.h"
#include "engine/tensor_parallel_runner.h"
#include "gpu/gpu_collectives.h"

namespace freekv::app {

CLI::Option* add_model_flag(CLI::App& cmd, std::string& model_path) {
    return cmd.add_option("-m,--model", model_path, "Hugging Face model folder or .gguf file")
        ->required()
        ->envname("FREEKV_ARG_MODEL");
}

CLI::Option* add_threads_flag(CLI::App& cmd, int& threads) {
    return cmd.add_option("-t,--threads", threads, "CPU threads (default: all cores)")
        ->envname("FREEKV_ARG_THREADS")
        ->check(CLI::Range(1, 4096));
}

void apply_threads(int threads) {
    if (threads > 0) omp_set_num_threads(threads);
}

CLI::Option* add_gpu_dtype_flag(CLI::App& cmd, std::string& dtype) {
    return cmd.add_option("--gpu-dtype", dtype,
                          "GPU weights, GEMM inputs and KV: bf16 (fast) or f32 (the accuracy reference: twice the memory)")
        ->envname("FREEKV_ARG_GPU_DTYPE")
        ->check(CLI::IsMember({"bf16", "f32"}));
}

std::shared_ptr<const gpu::GpuWeights> make_gpu_weights(const LoadedModel& m, const std::string& dtype) {
    const gpu::GpuDtype d = gpu::parse_gpu_dtype(dtype);
    auto w = std::make_shared<const gpu::GpuWeights>(m.config, m.model->weights(), d);
    fmt::print(stderr, "gpu: {:.2f} GiB of {} weights on the device\n", static_cast<double>(w->bytes()) / (1 << 30),
               gpu::gpu_dtype_name(d));
    if (const std::string g = w->gemv_summary(); !g.empty())
        fmt::print(stderr, "gpu: decode GEMV per shape, 1..8 rows (s simt, b2/b4/b8 block-k, m1/m2 tensor-core mma, c cuBLAS): {}\n", g);
    return w;
}

CLI::Option* add_device_flag(CLI::App& cmd, std::string& device) {
    return cmd.add_option("--device", device, "auto, cpu or cuda[:N] (auto)")
        ->envname("FREEKV_ARG_DEVICE")
        ->check([](const std::string& v) {
            return v == "auto" || v == "cpu" || v.rfind("cuda", 0) == 0 ? std::string() : "must be auto, cpu or cuda[:N]";
        });
}

std::string resolve_device(const std::string& device) {
    if (device == "cpu") return "cpu";
    const cuda::CudaProbe probe = cuda::probe_cuda();
    std::string why;
    const bool engine = gpu::gpu_available(&why);
    if (device == "auto") {
        if (!probe.available || !engine) {
            fmt::print(stderr, "freekv: CUDA unavailable ({}); using the CPU backend. Pass --device cpu to skip this check.\n",
                       probe.available ? why : probe.reason);
            return "cpu";
        }
        fmt::print(stderr, "freekv: running on {} (CUDA); pass --device cpu for the CPU backend\n", probe.device_name);
        return "cuda";
    }
    if (!probe.available || !engine)
        FREEKV_FAIL("--device {}: CUDA is unavailable ({}); use --device cpu", device, probe.available ? why : probe.reason);
    if (device != "cuda" && device != "cuda:0")
        FREEKV_FAIL("--device {}: this build drives GPU 0 only; use --device cuda (or CUDA_VISIBLE_DEVICES to pick the GPU)",
                    device);
    return "cuda";
}

void add_gpu_tuning_flags(CLI::App& cmd, gpu::GpuTuning& t, std::string& diag) {
    const char* group = "GPU tuning (measured defaults)";
    cmd.add_option("--attn-min-split-tokens", t.attn_min_split_tokens, "GPU decode attention: least tokens per split-K block (32)")
        ->group(group)->check(CLI::Range(16, 4096));
    cmd.add_option("--attn-split-blocks", t.attn_split_blocks,
                   "GPU decode attention: thread blocks the split-K rule aims at over all (sequence, KV head) pairs "
                   "(0, the default: one full wave, the SMs times the kernel's resident blocks per SM)")
        ->group(group)->check(CLI::Range(0, 8192));
    cmd.add_flag_callback("--attn-fused-combine", [&t] { t.attn_fused_combine = true; },
                          "GPU decode attention (bf16 KV): the last block of each (sequence, KV head) merges the split-K "
                          "partials instead of a second kernel (default: the combine kernel)")
        ->group(group);
    cmd.add_flag_callback("--attn-pdl", [&t] { t.attn_pdl = true; },
                          "GPU decode attention (bf16 KV): launch it and its split-K combine as programmatic dependents of the "
                          "kernel before each, so that their launch overlaps it (default: plain launches)")
        ->group(group);
    cmd.add_flag_callback("--attn-v-registers", [&t] { t.attn_v_registers = true; },
                          "GPU decode attention (bf16 KV): read V rows into registers instead of staging them in shared "
                          "memory, so that more blocks fit on an SM (default: staged)")
        ->group(group);
    cmd.add_flag_callback("--no-cuda-graphs", [&t] { t.cuda_graphs = false; },
                          "GPU decode: launch every step's kernels from the host (default: steps without selection or page "
                          "boundaries, as in budget-only, full and streaming, replay a CUDA graph where their shape repeats)")
        ->group(group);
    cmd.add_flag_callback("--no-pdl", [&t] { t.pdl = false; },
                          "GPU decode: launch the block-k and tensor-core GEMVs only after the kernel before them ends (default: as programmatic "
                          "dependents that stream their first weights while it ends)")
        ->group(group);
    cmd.add_option("--sync-gather-ctas", t.sync_gather_ctas, "GPU: thread blocks of the critical-path recall gather (32)")
        ->group(group)->check(CLI::Range(1, 528));
    cmd.add_option("--bg-gather-ctas", t.bg_gather_ctas, "GPU: thread blocks of FreeKV's background recall gather (12)")
        ->group(group)->check(CLI::Range(1, 132));
    cmd.add_flag_callback("--no-gemm-sm-reserve", [&t] { t.gemm_sm_reserve = false; },
                          "GPU: let cuBLAS use every SM while the background gather runs (default: it leaves the gather its SMs)")
        ->group(group);
    cmd.add_flag_callback("--no-prefill-install-beside", [&t] { t.prefill_install_beside = false; },
                          "GPU: install each prefilled layer on the main stream before the next layer (default: beside it, "
                          "on the second stream)")
        ->group(group);
    cmd.add_option("--prefill-install-ctas", t.prefill_install_ctas,
                   "GPU: thread blocks per KV head of a prefilled layer's install beside the next layer, their SMs kept "
                   "from cuBLAS while it runs (0: one block per page, sharing every SM)")
        ->group(group)->check(CLI::Range(0, 64));
    cmd.add_option("--diag-background", diag,
                   "measurement only: FreeKV's background recall does everything (off), its selection but no gather "
                   "(select), or nothing (none); outputs are wrong unless off")
        ->group(group)->check(CLI::IsMember({"off", "select", "none"}));
}

void finish_gpu_tuning(gpu::GpuTuning& t, const std::string& diag) {
    t.diag_background = gpu::parse_diag_background(diag);
    t.validate();
}

CLI::Option* add_tensor_parallel_flag(CLI::App& cmd, int& n_ranks, std::string* tp_gpus) {
    if (tp_gpus != nullptr)
        cmd.add_option("--tp-gpus", *tp_gpus,
                       "the GPU of each --tensor-parallel rank, comma-separated (default 0..N-1); a GPU named twice is "
                       "shared by those ranks, their sums going through host memory (a check of the split, not a speed-up)")
            ->envname("FREEKV_ARG_TP_GPUS");
    return cmd.add_option("--tensor-parallel", n_ranks,
                          "split the model over N ranks, each with its own KV heads (1); on the GPU one rank per GPU "
                          "summing over NCCL (--tp-gpus), on the CPU threads of this process (a check of the split, not a "
                          "speed-up)")
        ->envname("FREEKV_ARG_TENSOR_PARALLEL")
        ->check(CLI::Range(1, 64));
}

GpuRanks resolve_gpu_ranks(int n_ranks, const std::string& backend, const std::string& tp_gpus, const std::string& gpu_dtype) {
    GpuRanks out;
    if (backend != "cuda") {
        FREEKV_CHECK(tp_gpus.empty(), "--tp-gpus places tensor-parallel ranks on GPUs; the CPU backend runs them as threads: drop "
                     "--tp-gpus or run with --device cuda");
        return out;
    }
    if (n_ranks <= 1) {
        FREEKV_CHECK(tp_gpus.empty(), "--tp-gpus {} names GPUs for tensor-parallel ranks, but --tensor-parallel is 1", tp_gpus);
        return out;
    }
    const int visible = gpu::device_count();
    if (tp_gpus.empty()) {
        FREEKV_CHECK(visible >= n_ranks, "--tensor-parallel {} puts one rank on each of GPUs 0..{}, but {} GPU{} visible: lower "
                     "--tensor-parallel, or name the GPUs with --tp-gpus (e.g. --tp-gpus {} to share GPU 0)", n_ranks,
                     n_ranks - 1, visible, visible == 1 ? " is" : "s are", fmt::join(std::vector<int>(static_cast<size_t>(n_ranks), 0), ","));
        for (int r = 0; r < n_ranks; ++r) out.devices.push_back(r);
    } else {
        for (int64_t d : parse_int_list(tp_gpus, "--tp-gpus", 0, std::max(visible - 1, 0))) out.devices.push_back(static_cast<int>(d));
        FREEKV_CHECK(static_cast<int>(out.devices.size()) == n_ranks, "--tp-gpus {} names {} GPU{} for --tensor-parallel {}: give one per rank",
                     tp_gpus, out.devices.size(), out.devices.size() == 1 ? "" : "s", n_ranks);
    }
    out.dtype = gpu::parse_gpu_dtype(gpu_dtype);
    return out;
}

void RunFlags::add_to(CLI::App& cmd) {
    add_threads_flag(cmd, threads);
    add_device_flag(cmd, device);
    add_gpu_dtype_flag(cmd, gpu_dtype);
    add_tensor_parallel_flag(cmd, tensor_parallel, &tp_gpus);
    cmd.add_flag("--no-progress", no_progress, "no progress line");
}

void RunFlags::apply() {
    apply_threads(threads);
    backend = resolve_device(device);
    gpu_ranks = resolve_gpu_ranks(tensor_parallel, backend, tp_gpus, gpu_dtype);  // before any weights go to a GPU
    check_tensor_parallel(tensor_parallel, false, gpu_ranks.devices.size());
    ProgressLine::set_enabled(!no_progress);
}

std::shared_ptr<const gpu::GpuWeights> RunFlags::gpu_weights(const LoadedModel& m) const {
    if (backend != "cuda" || tensor_parallel > 1) return nullptr;
    return make_gpu_weights(m, gpu_dtype);
}

std::vector<int64_t> parse_int_list(const std::string& s, const char* flag, int64_t min, int64_t max) {
    std::vector<int64_t> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        size_t used = 0;
        int64_t v = 0;
        try {
            v = std::stoll(item, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used == 0 || used != item.size()) FREEKV_FAIL("{} '{}' must be a comma-separated list of integers", flag, s);
        if (v < min || v > max) FREEKV_FAIL("{} value {} must be in [{}, {}]", flag, v, min, max);
        out.push_back(v);
    }
    if (out.empty()) FREEKV_FAIL("{} is empty", flag);
    return out;
}

std::string read_prompt(const std::string& prompt, const std::string& file) {
    if (!file.empty()) return read_text_file(file);
    return prompt;
}

}  // namespace freekv::app

int main(int argc, char** argv) {
    using namespace freekv::app;
    CLI::App app{"freekv: long-context LLM inference with the KV cache in CPU memory"};
    app.require_subcommand(1);
    app.set_version_flag("--version", std::string("freekv ") + FREEKV_VERSION + " (backends: cpu" +
                                          (FREEKV_HAVE_CUDA_BUILD ? ", cuda build" : "") + ")");
    std::map<CLI::App*, Command> commands;
    auto add = [&](const char* name, const char* help, Command (*reg)(CLI::App&)) {
        CLI::App* sub = app.add_subcommand(name, help);
        commands[sub] = reg(*sub);
    };
    add("generate", "generate text from a prompt", register_generate);
    add("tokenize", "print the token ids of a text (--decode: ids to text)", register_tokenize);
    add("inspect", "print the model summary and its tensors; runs nothing", register_inspect);
    add("perplexity", "decode-time perplexity of a text under a KV mode (--compare full for KL, top-1, mass recall)",
        register_perplexity);
    add("needle", "passkey / key-value retrieval accuracy by depth and length", register_needle);
    add("bench", "every KV mode side by side: decode speed, floor ratio, breakdown, recall volume", register_bench);
    add("serve", "an HTTP server with the OpenAI completions and chat APIs, batching concurrent requests", register_serve);
    add("bench-serve", "load generator for a running server: concurrent streams, TTFT / TPOT / ITL, tokens/s",
        register_bench_serve);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ExtrasError& e) {
        // A word with no flag before it ("freekv generate -m model 'Once upon'"): say where it goes.
        const CLI::App* sub = nullptr;
        for (const auto& [s, run] : commands)
            if (s->parsed()) sub = s;
        std::string hint = "every value follows its flag";
        if (sub != nullptr && sub->get_option_no_throw("--prompt") != nullptr)
            hint = "a prompt goes after -p/--prompt (or in a file given with -f/--file)";
        fmt::print(stderr, "error: {}; {}; see `freekv {}--help`\n", e.what(), hint,
                   sub != nullptr ? sub->get_name() + " " : std::string());
        return e.get_exit_code();
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }
    try {
        for (auto& [sub, run] : commands)
            if (sub->parsed()) return run();
    } catch (const freekv::Error& e) {
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    }
    return 0;
}
