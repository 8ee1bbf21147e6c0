// bench_recall.cu: recall micro-benchmark (design doc 6.2, R1). Moves scattered (page, KV head)
// blocks from mapped pinned host memory (HND) into a device budget cache (NHD) and reports
// effective GB/s (block bytes / time) for:
//   gather    the zero-copy gather kernel (src/backend/cuda/gather_pages.cu), at several CTA counts;
//   per-copy  one cudaMemcpyAsync per block into a device staging buffer, then the scatter kernel
//             (the gather kernel in staging mode) into the slots: ArkVale's way, the arkvale mode's;
//   dma       one cudaMemcpyBatchAsync per 1 MiB of blocks into the staging buffer, then the scatter
//             (the DMA engines with the per-call cost amortized);
//   peak      one contiguous pinned -> device copy of the same number of bytes (the PCIe ceiling).
// Validates before timing: the gathered slots equal a host reference byte for byte and untouched
// bytes keep their poison; per-copy and dma leave the cache identical to the gather. Sources rotate over many job sets so repeated runs cannot hit in L2.
// Usage: bench_recall [n_pages=4096] [reps=20]. Prints a markdown table; exits 1 on a mismatch.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cuda/gather_pages.cuh"
#include "backend/cuda/pinned_store.cuh"
#include "bench_cuda_check.h"

using freekv::cuda::GatherArgs;
using freekv::cuda::GatherJob;

namespace {

struct Shape {
    int page_size, head_dim;
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    const int n_pages = argc > 1 ? std::atoi(argv[1]) : 4096;
    const int reps = argc > 2 ? std::atoi(argv[2]) : 20;
    const int n_head_kv = 8, n_slots = 64, first_middle = 16, n_middle = 32;
    cudaDeviceProp prop{};
    CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, %d SMs; %d CPU pages in the store\n\n", prop.name, prop.multiProcessorCount, n_pages);
    std::printf("| block | jobs | method | CTAs | GB/s | us | vs peak |\n|---|---|---|---|---|---|---|\n");
    std::mt19937 rng(12345);
    int failures = 0;
    for (const Shape shape : {Shape{32, 128}, Shape{16, 128}, Shape{16, 64}, Shape{8, 64}}) {
        const long long block_elems = 2LL * shape.page_size * shape.head_dim;
        const long long block_bytes = block_elems * 2;
        const long long page_elems = static_cast<long long>(n_head_kv) * block_elems;  // one layer per CPU page
        // 64 MiB chunks, so the kernel's chunk table is exercised (the engine default is 1 GiB).
        freekv::cuda::PinnedStore store(static_cast<int64_t>(n_pages) * page_elems * 2, page_elems * 2, int64_t{64} << 20);
        const int pages_per_chunk = static_cast<int>(store.chunk_bytes() / (page_elems * 2));
        auto page_host = [&](long long page) {
            return static_cast<uint16_t*>(store.host_chunk(page / pages_per_chunk)) + (page % pages_per_chunk) * page_elems;
        };
        for (long long page = 0; page < n_pages; ++page)
            for (long long i = 0; i < page_elems; ++i) page_host(page)[i] = static_cast<uint16_t>(rng());
        uint16_t** d_chunks = nullptr;
        CHECK(cudaMalloc(&d_chunks, store.n_chunks() * sizeof(void*)));
        CHECK(cudaMemcpy(d_chunks, store.device_chunks().data(), store.n_chunks() * sizeof(void*), cudaMemcpyHostToDevice));
        std::vector<int32_t> page_table(n_pages);
        std::iota(page_table.begin(), page_table.end(), 0);
        std::shuffle(page_table.begin(), page_table.end(), rng);  // logical -> CPU page, scattered
        int32_t* d_page_table = nullptr;
        CHECK(cudaMalloc(&d_page_table, n_pages * sizeof(int32_t)));
        CHECK(cudaMemcpy(d_page_table, page_table.data(), n_pages * sizeof(int32_t), cudaMemcpyHostToDevice));
        const long long cache_elems = static_cast<long long>(n_slots) * block_elems * n_head_kv;
        uint16_t* d_cache = nullptr;
        CHECK(cudaMalloc(&d_cache, cache_elems * 2));
        uint16_t* d_staging = nullptr;
        CHECK(cudaMalloc(&d_staging, 1024 * block_bytes));
        uint16_t* d_contig = nullptr;
        CHECK(cudaMalloc(&d_contig, 1024 * block_bytes));
        cudaStream_t stream;
        CHECK(cudaStreamCreate(&stream));
        cudaEvent_t t0, t1;
        CHECK(cudaEventCreate(&t0));
        CHECK(cudaEventCreate(&t1));

        for (const int n_jobs : {256, 1024}) {
            // Job sets: distinct destinations (ikv, middle slot), random pages; rotate over sets.
            const int n_sets = reps + 1;
            std::vector<std::vector<GatherJob>> sets(n_sets);
            for (auto& set : sets) {
                for (int j = 0; j < n_jobs; ++j) {
                    const int dest = j % (n_head_kv * n_middle);
                    set.push_back({0, dest % n_head_kv, static_cast<int32_t>(rng() % n_pages), first_middle + dest / n_head_kv});
                }
            }
            GatherJob* d_jobs = nullptr;
            int32_t* d_count = nullptr;
            CHECK(cudaMalloc(&d_jobs, n_sets * n_jobs * sizeof(GatherJob)));
            CHECK(cudaMalloc(&d_count, sizeof(int32_t)));
            for (int s = 0; s < n_sets; ++s)
                CHECK(cudaMemcpy(d_jobs + s * n_jobs, sets[s].data(), n_jobs * sizeof(GatherJob), cudaMemcpyHostToDevice));
            CHECK(cudaMemcpy(d_count, &n_jobs, sizeof(int32_t), cudaMemcpyHostToDevice));
            GatherArgs a;
            a.cpu_chunks = reinterpret_cast<void* const*>(d_chunks);
            a.pages_per_chunk = pages_per_chunk;
            a.cpu_page_of = d_page_table;
            a.budget_cache = d_cache;
            a.n_jobs = d_count;
            a.il = 0;
            a.n_layer = 1;
            a.max_batch = 1;
            a.max_pages = n_pages;
            a.n_slots = n_slots;
            a.page_size = shape.page_size;
            a.n_head_kv = n_head_kv;
            a.head_dim = shape.head_dim;
            const double bytes = static_cast<double>(n_jobs) * static_cast<double>(block_bytes);

            // Staged paths: copy job j's block of set r to staging block j, then scatter.
            auto per_copy = [&](int r, int count) {
                for (int j = 0; j < count; ++j) {
                    const GatherJob& job = sets[r][j];
                    CHECK(cudaMemcpyAsync(d_staging + static_cast<long long>(j) * block_elems,
                                          page_host(page_table[job.page]) + static_cast<long long>(job.ikv) * block_elems,
                                          block_bytes, cudaMemcpyHostToDevice, stream));
                }
            };
            std::vector<void*> dsts(n_jobs);
            std::vector<const void*> srcs(n_jobs);
            std::vector<size_t> sizes(n_jobs, static_cast<size_t>(block_bytes));
            auto dma = [&](int r, int count) {
                for (int j = 0; j < count; ++j) {
                    const GatherJob& job = sets[r][j];
                    dsts[j] = d_staging + static_cast<long long>(j) * block_elems;
                    srcs[j] = page_host(page_table[job.page]) + static_cast<long long>(job.ikv) * block_elems;
                }
                cudaMemcpyAttributes attr{};
                attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
                size_t attr_index = 0;
                const int per_call = static_cast<int>(std::max<long long>(1, (1LL << 20) / block_bytes));
                for (int j = 0; j < count; j += per_call)
                    CHECK(cudaMemcpyBatchAsync(dsts.data() + j, srcs.data() + j, sizes.data() + j,
                                               static_cast<size_t>(std::min(per_call, count - j)), &attr, &attr_index, 1, stream));
            };
            auto scatter = [&](int r) {
                GatherArgs sa = a;
                sa.jobs = d_jobs + static_cast<long long>(r) * n_jobs;
                sa.staging = d_staging;
                sa.ctas = 64;
                const std::string err = freekv::cuda::gather_pages(sa, stream);
                if (!err.empty()) { std::fprintf(stderr, "launch: %s\n", err.c_str()); std::exit(2); }
            };

            // ---- validate (last writer wins when a destination repeats: use the first 256 jobs) ----
            {
                CHECK(cudaMemset(d_cache, 0xAB, cache_elems * 2));
                a.jobs = d_jobs;
                const int check_jobs = std::min(n_jobs, n_head_kv * n_middle);
                CHECK(cudaMemcpy(d_count, &check_jobs, sizeof(int32_t), cudaMemcpyHostToDevice));
                a.ctas = 64;
                const std::string err = freekv::cuda::gather_pages(a, stream);
                if (!err.empty()) { std::fprintf(stderr, "launch: %s\n", err.c_str()); return 2; }
                CHECK(cudaStreamSynchronize(stream));
                std::vector<uint16_t> cache(cache_elems);
                CHECK(cudaMemcpy(cache.data(), d_cache, cache_elems * 2, cudaMemcpyDeviceToHost));
                std::vector<char> written(cache_elems, 0);
                const long long token = static_cast<long long>(n_head_kv) * shape.head_dim;
                for (int j = 0; j < check_jobs; ++j) {
                    const GatherJob& job = sets[0][j];
                    const uint16_t* src = page_host(page_table[job.page]) + static_cast<long long>(job.ikv) * block_elems;
                    for (int row = 0; row < 2 * shape.page_size; ++row) {
                        const long long dst = job.slot * 2LL * shape.page_size * token + (row / shape.page_size) * shape.page_size * token +
                                              (row % shape.page_size) * token + static_cast<long long>(job.ikv) * shape.head_dim;
                        if (std::memcmp(&cache[dst], src + row * shape.head_dim, shape.head_dim * 2) != 0) ++failures;
                        std::fill(written.begin() + dst, written.begin() + dst + shape.head_dim, 1);
                    }
                }
                for (long long i = 0; i < cache_elems; ++i)
                    if (!written[i] && cache[i] != 0xABAB) { ++failures; break; }
                for (const auto& staged : {std::function<void(int, int)>(per_copy), std::function<void(int, int)>(dma)}) {
                    CHECK(cudaMemset(d_cache, 0xAB, cache_elems * 2));
                    staged(0, check_jobs);
                    scatter(0);
                    CHECK(cudaStreamSynchronize(stream));
                    std::vector<uint16_t> again(cache_elems);
                    CHECK(cudaMemcpy(again.data(), d_cache, cache_elems * 2, cudaMemcpyDeviceToHost));
                    if (again != cache) ++failures;
                }
                CHECK(cudaMemcpy(d_count, &n_jobs, sizeof(int32_t), cudaMemcpyHostToDevice));
            }

            auto time_it = [&](auto&& launch) {
                std::vector<double> us;
                launch(n_sets - 1);  // warm-up
                for (int r = 0; r < reps; ++r) {
                    CHECK(cudaEventRecord(t0, stream));
                    launch(r);
                    CHECK(cudaEventRecord(t1, stream));
                    CHECK(cudaEventSynchronize(t1));
                    float ms = 0;
                    CHECK(cudaEventElapsedTime(&ms, t0, t1));
                    us.push_back(ms * 1000.0);
                }
                return median(us);
            };
            const double peak_us = time_it([&](int r) {
                // contiguous bytes inside one chunk (64 MiB holds the 16 MiB of 1024 x 16 KiB blocks)
                CHECK(cudaMemcpyAsync(d_contig, store.host_chunk(r % store.n_chunks()), bytes, cudaMemcpyHostToDevice, stream));
            });
            const double peak = bytes / peak_us / 1e3;
            std::printf("| %lld KiB | %d | peak (contiguous copy) | - | %.1f | %.1f | 100%% |\n", block_bytes / 1024, n_jobs,
                        peak, peak_us);
            const double per_copy_us = time_it([&](int r) {
                per_copy(r, n_jobs);
                scatter(r);
            });
            std::printf("| %lld KiB | %d | per-copy (cudaMemcpyAsync per block + scatter) | - | %.1f | %.1f | %.0f%% |\n",
                        block_bytes / 1024, n_jobs, bytes / per_copy_us / 1e3, per_copy_us, 100.0 * peak_us / per_copy_us);
            const double dma_us = time_it([&](int r) {
                dma(r, n_jobs);
                scatter(r);
            });
            std::printf("| %lld KiB | %d | dma (cudaMemcpyBatchAsync per MiB + scatter) | - | %.1f | %.1f | %.0f%% |\n",
                        block_bytes / 1024, n_jobs, bytes / dma_us / 1e3, dma_us, 100.0 * peak_us / dma_us);
            for (const int ctas : {8, 16, 32, 64, 128, 256}) {
                a.ctas = ctas;
                const double us = time_it([&](int r) {
                    a.jobs = d_jobs + static_cast<long long>(r) * n_jobs;
                    const std::string err = freekv::cuda::gather_pages(a, stream);
                    if (!err.empty()) { std::fprintf(stderr, "launch: %s\n", err.c_str()); std::exit(2); }
                });
                std::printf("| %lld KiB | %d | gather | %d | %.1f | %.1f | %.0f%% |\n", block_bytes / 1024, n_jobs, ctas,
                            bytes / us / 1e3, us, 100.0 * peak_us / us);
            }
            CHECK(cudaFree(d_jobs));
            CHECK(cudaFree(d_count));
        }
        CHECK(cudaFree(d_chunks));
        CHECK(cudaFree(d_page_table));
        CHECK(cudaFree(d_cache));
        CHECK(cudaFree(d_staging));
        CHECK(cudaFree(d_contig));
        CHECK(cudaStreamDestroy(stream));
    }
    std::printf("\nvalidation: %s (%d mismatching rows)\n", failures == 0 ? "PASS" : "FAIL", failures);
    return failures == 0 ? 0 : 1;
}
