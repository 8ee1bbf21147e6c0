// cmd_inspect.cpp: `freekv inspect`: load summary, KV sizes, (with --tensors) every tensor and
// (with --memory-plan) what each GPU would hold for a KV mode, context, dtype and tensor-parallel
// split, and how many sequences fit under given caps; runs nothing.
#include <fmt/ranges.h>

#include "app/commands.h"
#include "app/kv_flags.h"
#include "core/error.h"
#include "gpu/gpu_memory_plan.h"
#include "model/model_loader.h"
#include "model/synthetic_model.h"
#include "parallel/tp_memory_plan.h"

namespace freekv::app {

namespace {

constexpr double kGiB = static_cast<double>(int64_t{1} << 30);
constexpr int64_t kPrefillChunk = 2048;  // the GPU engine's default prompt chunk (engine.cpp)

}  // namespace

Command register_inspect(CLI::App& cmd) {
    struct Flags {
        std::string model, shape, gpu_dtype = "bf16";
        bool tensors = false, memory_plan = false;
        int64_t n_ctx = 0;
        int tensor_parallel = 1;
        double gpu_memory_gib = 0, cpu_kv_gib = 0;
        KvFlags kv;
    };
    auto f = std::make_shared<Flags>();
    cmd.add_option("-m,--model", f->model, "Hugging Face model folder or .gguf file")->envname("FREEKV_ARG_MODEL");
    cmd.add_option("--shape", f->shape, fmt::format("a named shape instead of -m, for --memory-plan ({})", kNamedShapes));
    cmd.add_flag("--tensors", f->tensors, "list every tensor with dtype and shape");
    cmd.add_flag("--memory-plan", f->memory_plan,
                 "what each GPU would hold for --kv-mode, -c, --gpu-dtype and --tensor-parallel, and how many sequences "
                 "fit in --gpu-memory-gib per GPU and --cpu-kv-gib of pinned memory");
    cmd.add_option("-c,--ctx-size", f->n_ctx, "tokens per sequence for --memory-plan (0 = the model's trained context)")
        ->check(CLI::NonNegativeNumber);
    add_gpu_dtype_flag(cmd, f->gpu_dtype);
    add_tensor_parallel_flag(cmd, f->tensor_parallel);
    cmd.add_option("--gpu-memory-gib", f->gpu_memory_gib, "GPU memory of each GPU for --memory-plan's sequence count")
        ->check(CLI::NonNegativeNumber);
    cmd.add_option("--cpu-kv-gib", f->cpu_kv_gib, "pinned CPU memory of all GPUs' stores together for --memory-plan")
        ->check(CLI::NonNegativeNumber);
    f->kv.add_to(cmd);
    return [f]() -> int {
        if (f->model.empty() == f->shape.empty()) FREEKV_FAIL("inspect needs -m MODEL or --shape NAME ({}), not both", kNamedShapes);
        if (!f->shape.empty() && !f->memory_plan)
            FREEKV_FAIL("--shape has no file to show; add --memory-plan, or give the model with -m");
        std::optional<LoadedModel> m;
        ModelConfig config;
        if (f->model.empty()) {
            config = named_shape(f->shape);
        } else {
            m = load_model(f->model);
            config = m->config;
            fmt::print("{}\n", m->summary());
            if (m->tokenizer) fmt::print("tokenizer: {} tokens\n", m->tokenizer->n_vocab());
            if (f->tensors)
                for (const auto& [name, view] : m->tensors->tensors())
                    fmt::print("{:60} {:5} [{}]\n", name, dtype_name(view.dtype), fmt::join(view.shape, ", "));
        }
        if (!f->memory_plan) return 0;
        const KvModeConfig mode = f->kv.resolve();
        const int64_t n_ctx = f->n_ctx > 0 ? f->n_ctx : config.n_ctx_train;
        const int elem_bytes = f->gpu_dtype == "f32" ? 4 : 2;
        const int64_t chunk = gpu::prefill_can_chunk(elem_bytes, config.head_dim) ? kPrefillChunk : 0;
        const TpMemoryPlan plan = plan_tp_memory(config, mode, elem_bytes, f->tensor_parallel, n_ctx, chunk);
        fmt::print("{}, {} tokens per sequence, {} on {} GPU{}:\n{}\n", kv_mode_name(mode.mode), n_ctx, f->gpu_dtype,
                   f->tensor_parallel, f->tensor_parallel > 1 ? "s" : "", plan.describe());
        if (f->gpu_memory_gib > 0) {
            const auto device_cap = static_cast<int64_t>(f->gpu_memory_gib * kGiB);
            const auto host_cap = static_cast<int64_t>(f->cpu_kv_gib * kGiB);
            const int64_t by_device = plan.max_sequences(device_cap, 0), fits = plan.max_sequences(device_cap, host_cap);
            fmt::print("fits {} sequences in {:.1f} GiB per GPU{}{}\n", fits, f->gpu_memory_gib,
                       host_cap > 0 ? fmt::format(" and {:.1f} GiB of pinned CPU memory", f->cpu_kv_gib) : "",
                       fits < by_device ? " (the pinned store is the limit)" : "");
        }
        return 0;
    };
}

}  // namespace freekv::app
