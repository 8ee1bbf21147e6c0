// bench_cpu_baseline.cpp: CPU speed of the full-attention engine next to its ceilings.
//   ceiling 1: OpenBLAS SGEMM GFLOP/s on this machine (fp32, same threads);
//   ceiling 2: host memory bandwidth (a large memcpy), the bound for decode weight reads;
//   measured: freekv's bf16 matmul GFLOP/s (tile convert + SGEMM), prefill tokens/s of an N-token
//   prompt and decode tokens/s at that depth on a model folder.
// Usage: bench_cpu_baseline MODEL_DIR [n_prompt=8192] [n_decode=32]. Prints a markdown table.
#include <cblas.h>
#include <fmt/format.h>
#include <omp.h>

#include <chrono>
#include <cstring>
#include <random>

#include "backend/ops.h"
#include "core/dtype.h"
#include "engine/sampler.h"
#include "model/model_loader.h"

using namespace freekv;
using clock_type = std::chrono::steady_clock;

static double seconds_since(clock_type::time_point t) {
    return std::chrono::duration<double>(clock_type::now() - t).count();
}

int main(int argc, char** argv) {
    if (argc < 2) {
        fmt::print(stderr, "usage: bench_cpu_baseline MODEL_DIR [n_prompt] [n_decode]\n");
        return 2;
    }
    const int64_t n_prompt = argc > 2 ? std::stoll(argv[2]) : 8192, n_decode = argc > 3 ? std::stoll(argv[3]) : 32;
    std::mt19937 rng(7);
    std::normal_distribution<float> nd;

    // ---- ceiling: SGEMM [512 x 2048] x [2048 x 2048] ----
    const int m = 512, n = 2048, k = 2048;
    std::vector<float> a(size_t{m} * k), b(size_t{n} * k), c(size_t{m} * n);
    for (auto& x : a) x = nd(rng);
    for (auto& x : b) x = nd(rng);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1, a.data(), k, b.data(), k, 0, c.data(), n);
    auto t = clock_type::now();
    int reps = 0;
    while (seconds_since(t) < 2.0 || reps < 3) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1, a.data(), k, b.data(), k, 0, c.data(), n);
        ++reps;
    }
    const double sgemm_gflops = 2.0 * m * n * k * reps / seconds_since(t) / 1e9;

    // ---- freekv matmul on bf16 weights, same shape ----
    std::vector<uint16_t> wb(b.size());
    for (size_t i = 0; i < b.size(); ++i) wb[i] = f32_to_bf16(b[i]);
    WeightView w{"w", DType::kBF16, {n, k}, wb.data()};
    std::vector<float> c_ref(c.size());
    cpu::matmul(a.data(), m, w, c.data());
    t = clock_type::now();
    reps = 0;
    while (seconds_since(t) < 2.0 || reps < 3) {
        cpu::matmul(a.data(), m, w, c.data());
        ++reps;
    }
    const double bf16_gflops = 2.0 * m * n * k * reps / seconds_since(t) / 1e9;

    // ---- ceiling: memcpy bandwidth, 256 MiB ----
    std::vector<char> src(size_t{256} << 20, 1), dst(src.size());
    std::memcpy(dst.data(), src.data(), src.size());
    t = clock_type::now();
    reps = 0;
    while (seconds_since(t) < 1.0 || reps < 3) {
        std::memcpy(dst.data(), src.data(), src.size());
        ++reps;
    }
    const double memcpy_gbs = 2.0 * static_cast<double>(src.size()) * reps / seconds_since(t) / 1e9;  // read + write

    // ---- model: prefill n_prompt tokens, then decode n_decode ----
    LoadedModel model = load_model(argv[1]);
    const ModelConfig& cfg = model.config;
    std::vector<int32_t> prompt(static_cast<size_t>(n_prompt));
    for (auto& id : prompt) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(cfg.n_vocab));
    PagedKvCache kv(cfg.n_layer, cfg.n_head_kv, cfg.head_dim, 32, (n_prompt + n_decode) / 32 + 2);
    const int32_t seq = kv.add_sequence();
    std::vector<float> logits;
    t = clock_type::now();
    for (int64_t done = 0; done < n_prompt; done += 512) {
        const int64_t chunk = std::min<int64_t>(512, n_prompt - done);
        model.model->forward(std::span(prompt).subspan(static_cast<size_t>(done), static_cast<size_t>(chunk)), seq, kv,
                             done + chunk == n_prompt ? 1 : 0, logits);
    }
    const double prefill_s = seconds_since(t);
    t = clock_type::now();
    for (int64_t i = 0; i < n_decode; ++i) {
        const int32_t tok[1] = {Sampler::argmax(logits)};
        model.model->forward(tok, seq, kv, 1, logits);
    }
    const double decode_s = seconds_since(t);
    const double weight_bytes = static_cast<double>(model.tensors->total_bytes());
    const double kv_bytes = static_cast<double>(n_prompt) * static_cast<double>(cfg.kv_bytes_per_token(4));

    fmt::print("| quantity | value | ceiling / reference |\n|---|---|---|\n");
    fmt::print("| OpenBLAS SGEMM {}x{}x{} (fp32) | {:.1f} GFLOP/s | the GEMM ceiling here |\n", m, n, k, sgemm_gflops);
    fmt::print("| freekv matmul, bf16 weights, same shape | {:.1f} GFLOP/s | {:.0f}% of SGEMM |\n", bf16_gflops,
               100.0 * bf16_gflops / sgemm_gflops);
    fmt::print("| memcpy 256 MiB (read + write) | {:.1f} GB/s | the decode bandwidth ceiling |\n", memcpy_gbs);
    fmt::print("| prefill {} tokens | {:.1f} tokens/s ({:.2f} s) | |\n", n_prompt, static_cast<double>(n_prompt) / prefill_s,
               prefill_s);
    fmt::print("| decode at depth {} ({} steps) | {:.1f} tokens/s ({:.2f} ms/token) | reads {:.0f} MB weights + {:.0f} MB "
               "f32 KV per token: {:.1f} ms at the memcpy rate |\n",
               n_prompt, n_decode, static_cast<double>(n_decode) / decode_s, 1000.0 * decode_s / static_cast<double>(n_decode),
               weight_bytes / 1e6, kv_bytes / 1e6, 1000.0 * (weight_bytes + kv_bytes) / (memcpy_gbs / 2 * 1e9));
    fmt::print("\nthreads: {} (OpenMP), model: {}\n", omp_get_max_threads(), argv[1]);
    return 0;
}
