// commands.h: registration of each subcommand on the CLI11 app. Each register_* adds its flags
// and returns the callback main() runs when that subcommand is chosen.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>

#include "engine/gpu_ranks.h"
#include "gpu/gpu_engine.h"
#include "model/model_loader.h"

#include <functional>
#include <string>
#include <vector>

namespace freekv::app {

using Command = std::function<int()>;

Command register_generate(CLI::App& app);
Command register_tokenize(CLI::App& app);
Command register_inspect(CLI::App& app);
Command register_perplexity(CLI::App& app);
Command register_needle(CLI::App& app);
Command register_bench(CLI::App& app);
Command register_serve(CLI::App& app);
Command register_bench_serve(CLI::App& app);

/// Adds -m/--model (required) with its environment variable.
CLI::Option* add_model_flag(CLI::App& cmd, std::string& model_path);
/// Adds -t/--threads; applies it (OpenMP / OpenBLAS) when the command runs.
CLI::Option* add_threads_flag(CLI::App& cmd, int& threads);
void apply_threads(int threads);
/// Adds --device auto|cpu|cuda[:N].
CLI::Option* add_device_flag(CLI::App& cmd, std::string& device);
/// Adds --tensor-parallel N (ranks the model is split over; 1 by default) and --tp-gpus LIST.
CLI::Option* add_tensor_parallel_flag(CLI::App& cmd, int& n_ranks, std::string* tp_gpus = nullptr);
/// The GPUs of --tensor-parallel N ranks on the cuda backend: --tp-gpus's list when given, else GPUs
/// 0..N-1; Error naming both flags when a GPU is missing or the list's length is not N. Empty on the
/// CPU or with one rank (the engine then holds the whole model on its GPU).
GpuRanks resolve_gpu_ranks(int n_ranks, const std::string& backend, const std::string& tp_gpus, const std::string& gpu_dtype);
/// Adds --gpu-dtype bf16|f32.
CLI::Option* add_gpu_dtype_flag(CLI::App& cmd, std::string& dtype);
/// The model's weights on the GPU in `dtype` (bf16 or f32), with one line on stderr saying how much.
std::shared_ptr<const gpu::GpuWeights> make_gpu_weights(const LoadedModel& m, const std::string& dtype);
/// Resolves --device to the backend that will run: "cpu" or "cuda". auto takes the GPU when one
/// answers and otherwise prints one line and continues on the CPU; cuda without a GPU fails with a
/// message naming the flag.
std::string resolve_device(const std::string& device);
/// The flags every running command shares: -t/--threads, --device, --gpu-dtype, --tensor-parallel,
/// --no-progress.
struct RunFlags {
    int threads = 0;
    int tensor_parallel = 1;
    std::string tp_gpus;
    std::string device = "auto";
    std::string gpu_dtype = "bf16";
    bool no_progress = false;
    std::string backend = "cpu";  // set by apply()
    GpuRanks gpu_ranks;           // set by apply(): the ranks' GPUs (resolve_gpu_ranks)
    void add_to(CLI::App& cmd);
    /// Applies the thread count, resolves the device (printing the CPU fallback line) and the
    /// progress setting.
    void apply();
    /// The model's weights on the GPU when the backend is cuda with one rank, else nullptr (GPU
    /// ranks make their shards' weights themselves).
    std::shared_ptr<const gpu::GpuWeights> gpu_weights(const LoadedModel& m) const;
};

/// Adds the GPU engine's tuning options (--attn-min-split-tokens, --sync-gather-ctas,
/// --bg-gather-ctas, --no-gemm-sm-reserve, --diag-background) bound to `t` and `diag`; call
/// finish_gpu_tuning() when the command runs.
void add_gpu_tuning_flags(CLI::App& cmd, gpu::GpuTuning& t, std::string& diag);
void finish_gpu_tuning(gpu::GpuTuning& t, const std::string& diag);

/// Parses a comma-separated list of integers in [min, max]; Error names the flag.
std::vector<int64_t> parse_int_list(const std::string& s, const char* flag, int64_t min, int64_t max);

/// Reads the prompt from -p or -f (one of them is required).
std::string read_prompt(const std::string& prompt, const std::string& file);

}  // namespace freekv::app
