// bench_decode_attention.cu: one layer's decode attention at the Llama-3.1-8B shape (32 query heads,
// 8 KV heads, head_dim 128, page 32, bf16 KV in the engine's slot layout: per page slot K rows then V
// rows, each row every KV head's head_dim) for the contexts and batches given: the engine's bf16
// kernel (tiles staged in shared memory by cp.async) at the engine's split-K rule with token floor
// 128 for several block targets (--attn-split-blocks; first the default, one full wave, also with
// the combine fused into each (row, KV head)'s last block, and with V rows in registers at that
// variant's own wave, --attn-v-registers), beside the measured HBM read rate.
// Validates before timing: each variant's output against the CPU reference (ref::attention_pages on
// the same bf16 values; NMSE <= 1e-9). Layers are cycled through copies that together exceed the L2
// three times, so that every timed call reads its K/V from HBM, as a decode step does.
// Usage: bench_decode_attention [contexts=2048,32768] [batches=1,4] [reps=20]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_device.h"
#include "backend/cuda/ops_cuda.cuh"
#include "backend/ops.h"
#include "bench_args.h"
#include "bench_cuda_check.h"
#include "bench_timing.h"
#include "core/dtype.h"

namespace {

constexpr int kHead = 32, kHeadKv = 8, kHeadDim = 128, kPage = 32;
constexpr int64_t kRow = int64_t{kHeadKv} * kHeadDim;          // one token's K (or V) over every KV head
constexpr int64_t kSlot = 2 * kPage * kRow;                    // one page slot: K rows, then V rows

// The engine's split-K rule (gpu_tuning.cu, split_for): about `target` blocks, at least `floor`
// tokens each, at most 256 splits.
int split_for(int64_t rows_heads, int64_t tokens, int64_t floor, int64_t target) {
    const int64_t want = std::max<int64_t>(1, target / std::max<int64_t>(1, rows_heads));
    return static_cast<int>(std::clamp<int64_t>(std::min(want, (tokens + floor - 1) / floor), 1, 256));
}

double nmse(const std::vector<float>& got, const std::vector<float>& want) {
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        const double d = static_cast<double>(got[i]) - want[i];
        num += d * d;
        den += static_cast<double>(want[i]) * want[i];
    }
    return den > 0 ? num / den : num;
}

}  // namespace

int main(int argc, char** argv) {
    const std::vector<int> contexts = parse_list(argc > 1 ? argv[1] : "2048,32768");
    const std::vector<int> batches = parse_list(argc > 2 ? argv[2] : "1,4");
    const int reps = argc > 3 ? std::atoi(argv[3]) : 20;
    cudaDeviceProp prop{};
    CHECK(cudaGetDeviceProperties(&prop, 0));
    const double bw = freekv::cuda::measure_hbm_read_gbps();
    std::printf("device: %s, L2 %d MB; measured HBM read %.0f GB/s (2 GiB streamed)\n\n", prop.name, prop.l2CacheSize >> 20, bw);
    std::printf("| context | batch | split blocks | splits | us | KV GB/s | of measured |\n|---|---|---|---|---|---|---|\n");
    std::mt19937 rng(3);
    std::normal_distribution<float> nd;
    int status = 0;
    for (int ctx : contexts)
        for (int batch : batches) {
            const int n_pages = (ctx + kPage - 1) / kPage, last = ctx - (n_pages - 1) * kPage;
            const int64_t layer_elems = int64_t{batch} * n_pages * kSlot, layer_bytes = layer_elems * 2;
            const int copies = static_cast<int>(std::max<int64_t>(1, (int64_t{3} * prop.l2CacheSize + layer_bytes - 1) / layer_bytes));
            std::vector<uint16_t> kv(static_cast<size_t>(layer_elems));
            for (auto& e : kv) e = freekv::f32_to_bf16(nd(rng));
            std::vector<uint16_t*> layers(static_cast<size_t>(copies));
            for (auto& p : layers) {
                CHECK(cudaMalloc(&p, layer_bytes));
                CHECK(cudaMemcpy(p, kv.data(), layer_bytes, cudaMemcpyHostToDevice));
            }
            // As the engine lists them: page j of row r is slot r * n_pages + j for every KV head.
            std::vector<int32_t> lists(static_cast<size_t>(batch) * kHeadKv * n_pages);
            for (int r = 0; r < batch; ++r)
                for (int h = 0; h < kHeadKv; ++h)
                    for (int j = 0; j < n_pages; ++j) lists[(static_cast<size_t>(r) * kHeadKv + h) * n_pages + j] = r * n_pages + j;
            const std::vector<int32_t> n_list(static_cast<size_t>(batch), n_pages), last_len(static_cast<size_t>(batch), last);
            std::vector<float> q(static_cast<size_t>(batch) * kHead * kHeadDim);
            for (auto& e : q) e = nd(rng);
            // Reference on the first copy's values.
            std::vector<float> kvf(kv.size());
            for (size_t i = 0; i < kv.size(); ++i) kvf[i] = freekv::bf16_to_f32(kv[i]);
            std::vector<float> want(q.size());
            for (int r = 0; r < batch; ++r) {
                const float* base = kvf.data();
                freekv::PagedKvView view{base, base + kPage * kRow, lists.data() + static_cast<size_t>(r) * kHeadKv * n_pages,
                                         n_pages, last, kPage, kSlot, kRow, n_pages};
                freekv::ref::attention_pages(q.data() + static_cast<size_t>(r) * kHead * kHeadDim,
                                             {1, kHead, kHeadKv, kHeadDim, nullptr}, view,
                                             want.data() + static_cast<size_t>(r) * kHead * kHeadDim);
            }
            float *dq = nullptr, *dout = nullptr, *dpart = nullptr;
            int32_t *dlists = nullptr, *dn = nullptr, *dlast = nullptr;
            CHECK(cudaMalloc(&dq, q.size() * 4));
            CHECK(cudaMalloc(&dout, q.size() * 4));
            CHECK(cudaMalloc(&dpart, q.size() / kHeadDim * (kHeadDim + 2) * 256 * 4));
            CHECK(cudaMalloc(&dlists, lists.size() * 4));
            CHECK(cudaMalloc(&dn, n_list.size() * 4));
            CHECK(cudaMalloc(&dlast, last_len.size() * 4));
            CHECK(cudaMemcpy(dq, q.data(), q.size() * 4, cudaMemcpyHostToDevice));
            CHECK(cudaMemcpy(dlists, lists.data(), lists.size() * 4, cudaMemcpyHostToDevice));
            CHECK(cudaMemcpy(dn, n_list.data(), n_list.size() * 4, cudaMemcpyHostToDevice));
            CHECK(cudaMemcpy(dlast, last_len.data(), last_len.size() * 4, cudaMemcpyHostToDevice));
            const double kv_bytes = static_cast<double>(batch) * ctx * kRow * 2 * 2;  // K and V of every attended token
            const int wave = freekv::cuda::attention_pages_wave(kHead, kHeadKv, kHeadDim, 2);
            const int wave_vr = freekv::cuda::attention_pages_wave(kHead, kHeadKv, kHeadDim, 2, true);
            int32_t* counters = nullptr;  // the fused combine's, zero between calls
            CHECK(cudaMalloc(&counters, static_cast<size_t>(batch) * kHeadKv * 4));
            CHECK(cudaMemset(counters, 0, static_cast<size_t>(batch) * kHeadKv * 4));
            // The default (one wave) with the combine kernel and fused into the last block, V in registers
            // at its own wave, then other targets.
            struct Variant {
                int target;
                bool fused, v_registers;
            };
            const std::vector<Variant> variants{{wave, false, false}, {wave, true, false}, {wave_vr, false, true}, {1056, false, false},
                                                {792, false, false},  {528, false, false}, {264, false, false}};
            for (auto [target, fused, v_registers] : variants) {
                    const std::string name = std::to_string(target) + (fused ? ", fused combine" : "") + (v_registers ? ", V in registers" : "");
                    freekv::cuda::PagesAttentionArgs a;
                    a.q = dq, a.page_ids = dlists, a.n_pages = dn, a.last_len = dlast, a.out = dout;
                    a.n_seq = batch, a.n_head = kHead, a.n_head_kv = kHeadKv, a.head_dim = kHeadDim, a.page_size = kPage;
                    a.max_list = n_pages, a.elem_bytes = 2, a.stride_seq = 0, a.stride_page = kSlot, a.stride_tok = kRow;
                    a.n_split = split_for(int64_t{batch} * kHeadKv, ctx, 128, target);
                    a.partial = dpart;
                    a.split_counters = fused ? counters : nullptr;
                    a.v_registers = v_registers;
                    auto run = [&](int copy) {
                        a.k = layers[static_cast<size_t>(copy)];
                        a.v = layers[static_cast<size_t>(copy)] + kPage * kRow;
                        freekv::cuda::attention_pages(a, nullptr);
                    };
                    run(0);
                    CHECK(cudaDeviceSynchronize());
                    std::vector<float> got(q.size());
                    CHECK(cudaMemcpy(got.data(), dout, got.size() * 4, cudaMemcpyDeviceToHost));
                    const double err = nmse(got, want);
                    if (!(err <= 1e-9)) {
                        std::printf("| %d | %d | %s | %d | WRONG (NMSE %.3g) | | |\n", ctx, batch, name.c_str(), a.n_split, err);
                        status = 1;
                        continue;
                    }
                    int call = 0;  // the warm-up reads copy 0 again; the timed calls cycle from copy 1
                    const double ms = time_ms([&] { run(call++ % copies); }, reps);
                    const double us = ms * 1e3, gbps = kv_bytes / (us * 1e3);
                    std::printf("| %d | %d | %s | %d | %.1f | %.0f | %.0f%% |\n", ctx, batch, name.c_str(), a.n_split, us, gbps,
                                100.0 * gbps / bw);
                }
            for (void* p : {static_cast<void*>(dq), static_cast<void*>(dout), static_cast<void*>(dpart), static_cast<void*>(dlists),
                            static_cast<void*>(dn), static_cast<void*>(dlast), static_cast<void*>(counters)})
                CHECK(cudaFree(p));
            for (auto* p : layers) CHECK(cudaFree(p));
        }
    std::printf("\nKV GB/s: K and V bytes of every attended token over the kernel time (combine kernel or fused combine included).\n");
    return status;
}
