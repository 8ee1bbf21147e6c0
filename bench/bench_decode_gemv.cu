// bench_decode_gemv.cu: the decode GEMVs of the Llama-3.1-8B shape (issue 16) at small batches: the
// engine's SIMT GEMV (16-byte chunks in flight per lane 2, 4, 8), cuBLAS on a bf16 input, the
// measured choice's block-k and tensor-core (mma) kernels on fp32 and on bf16 x, and
// candidate kernels that vary rows per warp, chunks in flight and split-K, each validated against a
// CPU reference (double sums of bf16(x) . w) on the same random inputs before it is timed (the
// candidates: one warp per row group with split-K across blocks, or a block's warps splitting k for
// a few rows). Beside them: the measured HBM read bandwidth (a streaming read of 2 GiB) and each
// kernel's share of it.
// Weights are cycled through copies that together exceed the L2, so every timed call reads HBM.
// Every variant computes what the engine's GEMV computes: x rounded to bf16, fp32 accumulation; the
// split-K candidates sum their partial rows in a fixed order (deterministic).
// Usage: bench_decode_gemv [batches=1,4] [reps=40]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/gemv_chunk.cuh"
#include "backend/cuda/cuda_device.h"
#include "backend/cuda/ops_cuda.cuh"
#include "bench_args.h"
#include "bench_cuda_check.h"
#include "bench_timing.h"
#include "core/dtype.h"

namespace {

using freekv::cuda::gemv_chunk;

// ---------------------------------------------------------------- the candidate kernel

// y_part[split][m][n] (or y when one split) = bf16(x[m, ks]) . w[n, ks] over split `blockIdx.y`'s
// chunk range ks; each warp owns RPW rows, each lane C 16-byte chunks of each row in flight.
template <int M, int RPW, int C>
__global__ void __launch_bounds__(256) gemv_candidate(const float* __restrict__ x, int m, const uint16_t* __restrict__ w,
                                                      int64_t n, int64_t k, float* __restrict__ out, int64_t chunks_per_split) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * 8 + warp) * RPW;
    if (row0 >= n) return;
    const int64_t chunks = k / 8, c_begin = blockIdx.y * chunks_per_split,
                  c_end = chunks < c_begin + chunks_per_split ? chunks : c_begin + chunks_per_split;
    float acc[RPW][M];
#pragma unroll
    for (int r = 0; r < RPW; ++r)
#pragma unroll
        for (int i = 0; i < M; ++i) acc[r][i] = 0.0f;
    for (int64_t c0 = c_begin + lane; c0 < c_end; c0 += 32 * C) {
        uint4 wv[C][RPW];
#pragma unroll
        for (int h = 0; h < C; ++h)
#pragma unroll
            for (int r = 0; r < RPW; ++r) {
                const int64_t c = c0 + 32 * h;
                wv[h][r] = row0 + r < n && c < c_end ? __ldg(reinterpret_cast<const uint4*>(w + (row0 + r) * k) + c)
                                                     : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
        for (int h = 0; h < C; ++h) {
            const int64_t c = c0 + 32 * h;
            if (c >= c_end) break;
            gemv_chunk<M, RPW>(wv[h], x, m, k, c, acc);
        }
    }
#pragma unroll
    for (int r = 0; r < RPW; ++r)
#pragma unroll
        for (int i = 0; i < M; ++i) {
            if (i >= m) break;
            float s = acc[r][i];
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane == 0 && row0 + r < n) out[(static_cast<int64_t>(blockIdx.y) * m + i) * n + row0 + r] = s;
        }
}

// The block-k kernels of the library (gemv_choice.cu: a block's 8 warps split k for RPW rows, partial
// sums in shared memory), the ones the engine's measured choice picks from.
template <int RPW, int C>
void block_k(const float* x, int m, const uint16_t* w, int64_t n, int64_t k, float* y, float*, int, cudaStream_t s) {
    freekv::cuda::gemv_block_k(x, m, w, n, k, y, nullptr, RPW, C, s);
}

// y[m][n] = sum over splits of part[split][m][n], in split order.
__global__ void sum_splits(const float* __restrict__ part, int splits, int64_t mn, float* __restrict__ y) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= mn) return;
    float s = 0.0f;
    for (int p = 0; p < splits; ++p) s += part[p * mn + i];
    y[i] = s;
}

template <int M, int RPW, int C>
void launch_candidate(const float* x, int m, const uint16_t* w, int64_t n, int64_t k, float* y, float* part, int splits,
                      cudaStream_t s) {
    const int64_t chunks = k / 8, per = (chunks + splits - 1) / splits;
    const dim3 grid(static_cast<unsigned>((n + 8 * RPW - 1) / (8 * RPW)), static_cast<unsigned>(splits));
    gemv_candidate<M, RPW, C><<<grid, 256, 0, s>>>(x, m, w, n, k, splits == 1 ? y : part, per);
    if (splits > 1) sum_splits<<<static_cast<unsigned>((m * n + 255) / 256), 256, 0, s>>>(part, splits, m * n, y);
}

template <int RPW, int C>
void candidate(const float* x, int m, const uint16_t* w, int64_t n, int64_t k, float* y, float* part, int splits, cudaStream_t s) {
    if (m == 1) launch_candidate<1, RPW, C>(x, m, w, n, k, y, part, splits, s);
    else if (m == 2) launch_candidate<2, RPW, C>(x, m, w, n, k, y, part, splits, s);
    else if (m <= 4) launch_candidate<4, RPW, C>(x, m, w, n, k, y, part, splits, s);
    else launch_candidate<8, RPW, C>(x, m, w, n, k, y, part, splits, s);
}

struct Shape {
    const char* name;
    int64_t n, k;
};

}  // namespace

int main(int argc, char** argv) {
    const std::vector<int> batches = parse_list(argc > 1 ? argv[1] : "1,4");
    const int reps = argc > 2 ? std::atoi(argv[2]) : 40;
    int sms = 0;
    CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    cudaDeviceProp prop{};
    CHECK(cudaGetDeviceProperties(&prop, 0));

    const double bw = freekv::cuda::measure_hbm_read_gbps();  // GB/s
    std::printf("device: %s, %d SMs, L2 %d MB; measured HBM read %.0f GB/s (2 GiB streamed)\n\n", prop.name, sms,
                prop.l2CacheSize >> 20, bw);
    std::printf("| matrix | n x k | batch | kernel | us | GB/s | of measured |\n|---|---|---|---|---|---|---|\n");

    const std::vector<Shape> shapes = {{"qkv (fused)", 6144, 4096}, {"o", 4096, 4096}, {"gate+up (fused)", 28672, 4096},
                                       {"down", 4096, 14336},       {"k alone", 1024, 4096}, {"lm head", 128256, 4096}};
    std::mt19937 rng(5);
    std::normal_distribution<float> nd;
    int status = 0;
    for (const Shape& sh : shapes) {
        const int64_t w_elems = sh.n * sh.k, w_bytes = w_elems * 2;
        std::vector<uint16_t> w_host(static_cast<size_t>(w_elems));
        for (auto& v : w_host) v = freekv::f32_to_bf16(nd(rng) * 0.05f);
        // Copies enough to exceed the L2 three times over, cycled call by call.
        const int copies = static_cast<int>(std::max<int64_t>(1, (int64_t{3} * prop.l2CacheSize + w_bytes - 1) / w_bytes));
        std::vector<uint16_t*> w_dev(static_cast<size_t>(copies));
        for (auto& p : w_dev) {
            CHECK(cudaMalloc(&p, w_bytes));
            CHECK(cudaMemcpy(p, w_host.data(), w_bytes, cudaMemcpyHostToDevice));
        }
        for (int m : batches) {
            std::vector<float> x(static_cast<size_t>(m * sh.k));
            for (auto& v : x) v = nd(rng);
            std::vector<uint16_t> xb(x.size());
            for (size_t i = 0; i < x.size(); ++i) xb[i] = freekv::f32_to_bf16(x[i]);
            // Reference: double sums of bf16(x) . w.
            std::vector<double> want(static_cast<size_t>(m * sh.n));
            for (int i = 0; i < m; ++i)
                for (int64_t r = 0; r < sh.n; ++r) {
                    double s = 0;
                    const uint16_t* wr = w_host.data() + r * sh.k;
                    const uint16_t* xr = xb.data() + static_cast<int64_t>(i) * sh.k;
                    for (int64_t j = 0; j < sh.k; ++j)
                        s += static_cast<double>(freekv::bf16_to_f32(wr[j])) * freekv::bf16_to_f32(xr[j]);
                    want[static_cast<size_t>(i * sh.n + r)] = s;
                }
            float *dx = nullptr, *dy = nullptr, *part = nullptr;
            uint16_t* dxb = nullptr;
            CHECK(cudaMalloc(&dx, x.size() * 4));
            CHECK(cudaMalloc(&dxb, xb.size() * 2));
            CHECK(cudaMalloc(&dy, want.size() * 4));
            CHECK(cudaMalloc(&part, want.size() * 4 * 8));
            CHECK(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
            CHECK(cudaMemcpy(dxb, xb.data(), xb.size() * 2, cudaMemcpyHostToDevice));

            struct Variant {
                std::string name;
                std::function<void(const uint16_t*)> run;
            };
            std::vector<Variant> variants;
            for (int chunks : {2, 4, 8})
                variants.push_back({"engine SIMT, chunks " + std::to_string(chunks), [&, chunks](const uint16_t* w) {
                                        freekv::cuda::gemv_simt(dx, m, w, sh.n, sh.k, dy, nullptr, chunks, nullptr);
                                    }});
            variants.push_back({"cuBLAS (bf16 input)", [&](const uint16_t* w) {
                                    freekv::cuda::gemm_bf16(dxb, m, w, sh.n, sh.k, dy, nullptr, false, nullptr);
                                }});
            for (int splits : {1, 2, 4, 8}) {
                const auto add = [&](int rpw, int c, auto fn) {
                    variants.push_back({"candidate " + std::to_string(rpw) + " rows/warp, chunks " + std::to_string(c) +
                                            ", split-K " + std::to_string(splits),
                                        [&, splits, fn](const uint16_t* w) { fn(dx, m, w, sh.n, sh.k, dy, part, splits, nullptr); }});
                };
                add(2, 4, candidate<2, 4>);
                add(4, 2, candidate<4, 2>);
                add(4, 4, candidate<4, 4>);
                add(8, 2, candidate<8, 2>);
            }
            const auto add_block = [&](int rpw, int c, auto fn) {
                variants.push_back({"block-k " + std::to_string(rpw) + " rows/block, chunks " + std::to_string(c),
                                    [&, fn](const uint16_t* w) { fn(dx, m, w, sh.n, sh.k, dy, part, 1, nullptr); }});
            };
            add_block(2, 2, block_k<2, 2>);
            add_block(4, 1, block_k<4, 1>);
            add_block(8, 1, block_k<8, 1>);
            // The library's kernels as the decode step runs them: on bf16(x) written by the kernel before.
            for (auto [rpw, c] : {std::pair{2, 2}, std::pair{4, 1}, std::pair{8, 1}})
                variants.push_back({"block-k " + std::to_string(rpw) + " rows/block, chunks " + std::to_string(c) + ", bf16 x",
                                    [&, rpw, c](const uint16_t* w) {
                                        freekv::cuda::gemv_block_k(dx, m, w, sh.n, sh.k, dy, nullptr, rpw, c, nullptr, false, dxb);
                                    }});
            for (int tiles : {1, 2})
                variants.push_back({"tensor-core mma, " + std::to_string(16 * tiles) + " rows/warp, bf16 x", [&, tiles](const uint16_t* w) {
                                        freekv::cuda::gemv_mma(dx, m, w, sh.n, sh.k, dy, nullptr, nullptr, false, tiles, dxb);
                                    }});
            for (const Variant& v : variants) {
                CHECK(cudaMemset(dy, 0xff, want.size() * 4));
                v.run(w_dev[0]);
                CHECK(cudaDeviceSynchronize());
                std::vector<float> got(want.size());
                CHECK(cudaMemcpy(got.data(), dy, got.size() * 4, cudaMemcpyDeviceToHost));
                double num = 0, den = 0;
                for (size_t i = 0; i < got.size(); ++i) {
                    num += (got[i] - want[i]) * (got[i] - want[i]);
                    den += want[i] * want[i];
                }
                if (!(num <= 1e-9 * den)) {  // fp32 sums against double ones: NMSE ~1e-13; a wrong row ~1
                    std::printf("MISMATCH %s on %s m %d: NMSE %.3g\n", v.name.c_str(), sh.name, m, num / den);
                    status = 1;
                    continue;
                }
                int next = 0;
                const double ms = time_ms([&] { v.run(w_dev[static_cast<size_t>(next++ % copies)]); }, reps);
                const double gbps = static_cast<double>(w_bytes) / ms * 1e-6;
                std::printf("| %s | %lld x %lld | %d | %s | %.1f | %.0f | %.0f%% |\n", sh.name, static_cast<long long>(sh.n),
                            static_cast<long long>(sh.k), m, v.name.c_str(), ms * 1e3, gbps, 100.0 * gbps / bw);
            }
            for (void* p : {static_cast<void*>(dx), static_cast<void*>(dxb), static_cast<void*>(dy), static_cast<void*>(part)})
                CHECK(cudaFree(p));
        }
        for (auto* p : w_dev) CHECK(cudaFree(p));
    }
    return status;
}
