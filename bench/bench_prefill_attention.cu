// bench_prefill_attention.cu: one layer's causal prefill attention at the Llama-3.1-8B shape (32
// query heads, 8 KV heads, head_dim 128; or as given) for several prompt lengths: the flash kernel
// (src/backend/cuda/flash_prefill.cu: mma.sync at 16 and 32 rows per warp, and wgmma where the
// device has it), whole prompt and in chunks of
// 4096 queries against all earlier keys, beside the chunked fp32 cuBLAS path it replaces
// (prefill_attention.cu), on the same inputs in the same run.
// Validates before timing: the flash output and the cuBLAS output agree (NMSE <= 1e-4; the flash
// kernel rounds probabilities to bf16). TFLOP/s counts the causal half that is computed:
// 4 * head_dim * n_head * sum over queries of (position + 1).
// Usage: bench_prefill_attention [lengths=4096,8192,32768] [n_head=32] [n_head_kv=8] [head_dim=128]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "backend/cuda/flash_prefill.cuh"
#include "backend/cuda/prefill_attention.cuh"
#include "bench_args.h"
#include "bench_cuda_check.h"
#include "core/dtype.h"

namespace {

template <class F>
double time_ms(F&& f, int reps) {
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    f();  // warm-up
    std::vector<float> t;
    for (int r = 0; r < reps; ++r) {
        CHECK(cudaEventRecord(a));
        f();
        CHECK(cudaEventRecord(b));
        CHECK(cudaEventSynchronize(b));
        float ms = 0;
        CHECK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    const std::vector<int> lengths = parse_list(argc > 1 ? argv[1] : "4096,8192,32768");
    const int n_head = argc > 2 ? std::atoi(argv[2]) : 32, n_head_kv = argc > 3 ? std::atoi(argv[3]) : 8;
    const int d = argc > 4 ? std::atoi(argv[4]) : 128;
    cudaDeviceProp prop{};
    CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, %d SMs; heads %d/%d, head_dim %d\n\n", prop.name, prop.multiProcessorCount, n_head, n_head_kv, d);
    std::printf("| n | method | ms | TFLOP/s |\n|---|---|---|---|\n");
    int status = 0;
    for (const int n : lengths) {
        const int64_t q_elems = int64_t{n} * n_head * d, kv_elems = int64_t{n} * n_head_kv * d;
        std::mt19937 rng(7);
        std::normal_distribution<float> nd;
        std::vector<float> q(static_cast<size_t>(q_elems)), k(static_cast<size_t>(kv_elems)), v(static_cast<size_t>(kv_elems));
        std::vector<uint16_t> k16(k.size()), v16(v.size());
        for (auto& x : q) x = freekv::bf16_to_f32(freekv::f32_to_bf16(nd(rng)));
        for (size_t i = 0; i < k.size(); ++i) {
            k16[i] = freekv::f32_to_bf16(nd(rng));
            v16[i] = freekv::f32_to_bf16(nd(rng));
            k[i] = freekv::bf16_to_f32(k16[i]);
            v[i] = freekv::bf16_to_f32(v16[i]);
        }
        float *dq, *dk, *dv, *dout, *dref, *scores;
        uint16_t *dk16, *dv16;
        CHECK(cudaMalloc(&dq, q.size() * 4));
        CHECK(cudaMalloc(&dk, k.size() * 4));
        CHECK(cudaMalloc(&dv, v.size() * 4));
        CHECK(cudaMalloc(&dk16, k.size() * 2));
        CHECK(cudaMalloc(&dv16, v.size() * 2));
        CHECK(cudaMalloc(&dout, q.size() * 4));
        CHECK(cudaMalloc(&dref, q.size() * 4));
        CHECK(cudaMemcpy(dq, q.data(), q.size() * 4, cudaMemcpyHostToDevice));
        CHECK(cudaMemcpy(dk, k.data(), k.size() * 4, cudaMemcpyHostToDevice));
        CHECK(cudaMemcpy(dv, v.data(), v.size() * 4, cudaMemcpyHostToDevice));
        CHECK(cudaMemcpy(dk16, k16.data(), k16.size() * 2, cudaMemcpyHostToDevice));
        CHECK(cudaMemcpy(dv16, v16.data(), v16.size() * 2, cudaMemcpyHostToDevice));
        freekv::cuda::PrefillAttentionArgs pa;
        pa.q = dq, pa.k = dk, pa.v = dv, pa.out = dref;
        pa.n = n, pa.n_head = n_head, pa.n_head_kv = n_head_kv, pa.head_dim = d;
        pa.chunk = freekv::cuda::prefill_chunk(n, n_head_kv, int64_t{512} << 20);
        CHECK(cudaMalloc(&scores, static_cast<size_t>(freekv::cuda::prefill_scores_floats(n, n_head_kv, pa.chunk)) * 4));
        pa.scores = scores;
        double causal = 0;
        for (int i = 0; i < n; ++i) causal += i + 1;
        const double flops = 4.0 * d * n_head * causal;
        const int reps = n >= 32768 ? 5 : 10;

        const double ms_cublas = time_ms([&] { freekv::cuda::prefill_attention(pa, nullptr); }, reps);
        std::vector<float> want(q.size()), got(q.size());
        CHECK(cudaMemcpy(want.data(), dref, want.size() * 4, cudaMemcpyDeviceToHost));
        std::printf("| %d | cuBLAS fp32 (chunk %d) | %.2f | %.1f |\n", n, pa.chunk, ms_cublas, flops / ms_cublas * 1e-9);

        const auto check = [&](const char* what) {
            CHECK(cudaMemcpy(got.data(), dout, got.size() * 4, cudaMemcpyDeviceToHost));
            double num = 0, den = 0;
            for (size_t i = 0; i < got.size(); ++i) {
                const double e = static_cast<double>(got[i]) - want[i];
                num += e * e;
                den += static_cast<double>(want[i]) * want[i];
            }
            const double nmse = num / std::max(den, 1e-30);
            if (!(nmse <= 1e-4)) {
                std::printf("MISMATCH %s at n %d: NMSE %.3g\n", what, n, nmse);
                status = 1;
            }
        };
        struct Variant {
            freekv::cuda::FlashKernel kernel;
            int rows_per_warp;
            const char* name;
        };
        std::vector<Variant> variants{{freekv::cuda::FlashKernel::mma_sync, 16, "flash mma.sync, 4 warps x 16 rows"},
                                      {freekv::cuda::FlashKernel::mma_sync, 32, "flash mma.sync, 4 warps x 32 rows"}};
        if (freekv::cuda::flash_prefill_has_wgmma(d))
            variants.push_back({freekv::cuda::FlashKernel::wgmma, 0, "flash wgmma, 2 warpgroups x 64 rows"});
        for (const Variant& var : variants) {
            freekv::cuda::FlashPrefillArgs fa;
            fa.q = dq, fa.k = dk16, fa.v = dv16, fa.out = dout;
            fa.n_q = n, fa.q_pos0 = 0, fa.n_keys = n, fa.n_head = n_head, fa.n_head_kv = n_head_kv, fa.head_dim = d;
            fa.rows_per_warp = var.rows_per_warp;
            fa.kernel = var.kernel;
            CHECK(cudaMemset(dout, 0xff, q.size() * 4));
            const double ms = time_ms([&] { freekv::cuda::flash_prefill(fa, nullptr); }, reps);
            check("flash whole");
            std::printf("| %d | %s, whole prompt | %.2f | %.1f |\n", n, var.name, ms, flops / ms * 1e-9);
            const int chunk = 4096;
            if (n > chunk) {
                CHECK(cudaMemset(dout, 0xff, q.size() * 4));
                const double ms_c = time_ms(
                    [&] {
                        for (int c0 = 0; c0 < n; c0 += chunk) {
                            freekv::cuda::FlashPrefillArgs c = fa;
                            c.q = dq + int64_t{c0} * n_head * d;
                            c.out = dout + int64_t{c0} * n_head * d;
                            c.n_q = std::min(chunk, n - c0);
                            c.q_pos0 = c0;
                            c.n_keys = c0 + c.n_q;
                            freekv::cuda::flash_prefill(c, nullptr);
                        }
                    },
                    reps);
                check("flash chunked");
                std::printf("| %d | %s, chunks of %d | %.2f | %.1f |\n", n, var.name, chunk, ms_c, flops / ms_c * 1e-9);
            }
        }
        for (void* p : {static_cast<void*>(dq), static_cast<void*>(dk), static_cast<void*>(dv), static_cast<void*>(dk16),
                        static_cast<void*>(dv16), static_cast<void*>(dout), static_cast<void*>(dref), static_cast<void*>(scores)})
            CHECK(cudaFree(p));
    }
    return status;
}
