// cmd_inspect.cpp: `freekv inspect`: load summary, KV sizes and (with --tensors) every tensor.
#include <fmt/ranges.h>

#include "app/commands.h"
#include "model/model_loader.h"

namespace freekv::app {

Command register_inspect(CLI::App& cmd) {
    struct Flags {
        std::string model;
        bool tensors = false;
    };
    auto f = std::make_shared<Flags>();
    add_model_flag(cmd, f->model);
    cmd.add_flag("--tensors", f->tensors, "list every tensor with dtype and shape");
    return [f]() -> int {
        LoadedModel m = load_model(f->model);
        fmt::print("{}\n", m.summary());
        if (m.tokenizer) fmt::print("tokenizer: {} tokens\n", m.tokenizer->n_vocab());
        if (f->tensors)
            for (const auto& [name, view] : m.tensors->tensors())
                fmt::print("{:60} {:5} [{}]\n", name, dtype_name(view.dtype), fmt::join(view.shape, ", "));
        return 0;
    };
}

}  // namespace freekv::app
