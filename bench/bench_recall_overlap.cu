// bench_recall_overlap.cu: what a background recall takes from the model's kernels, and how fast
// it moves while they run (design doc 6.2: recall must hide behind compute, not slow it).
// The "model" is one decode step's weight GEMMs at the Llama-3.1-8B shape (per layer: qkv 6144 x
// 4096, o 4096 x 4096, gate+up 28672 x 4096, down 4096 x 14336; 32 layers cycling over 8 layers'
// distinct bf16 weights, 3.5 GiB, so nothing stays in L2) through ops_cuda's matmul_bf16 (our GEMV
// at batch 1, cuBLAS above), on a high-priority stream. Beside it, on low-priority streams and
// started first so that it covers the whole step, one recall method moves 16 KiB (page, head)
// blocks of a pinned host store into a device budget cache:
//   gather-host N   the zero-copy gather kernel with N thread blocks (reads host memory over PCIe);
//   gather-dev N    the same kernel reading a device buffer (HBM traffic and SMs, no PCIe);
//   dma S           cudaMemcpyBatchAsync of the blocks into device staging, split over S streams
//                   (each stream's copies may go to a different copy engine); no SM work.
// Each over three host stores: cudaHostAlloc'd 1 GiB, the same with the blocks drawn from 16 MiB of
// it (few address translations), and 1 GiB of transparent-huge-page memory cudaHostRegister'd.
// Prints, per batch size and method: the step's ms (and its slowdown over the step alone) and the
// recall's GB/s while it ran (and alone). Usage: bench_recall_overlap [batches=1,4] [rounds=24]
#include <cuda_runtime.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/gather_pages.cuh"
#include "backend/cuda/ops_cuda.cuh"
#include "backend/cuda/pinned_store.cuh"
#include "bench_cuda_check.h"

using freekv::cuda::GatherArgs;
using freekv::cuda::GatherJob;

namespace {

constexpr int kPage = 32, kHeadDim = 128, kHeadsKv = 8, kSlots = 64;
constexpr long long kBlockBytes = 2LL * kPage * kHeadDim * 2;  // K and V rows of one (page, head), bf16
constexpr int kJobsPerRound = 1024;                             // 16 MiB per round

__global__ void fill_kernel(uint16_t* p, long long n, uint32_t seed) {
    for (long long i = blockIdx.x * 256LL + threadIdx.x; i < n; i += 256LL * gridDim.x) {
        uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
        h ^= h >> 13;
        p[i] = static_cast<uint16_t>(0x3c00 | (h & 0x03ff));  // small positive bf16-ish values, never NaN
    }
}

struct Layer {
    uint16_t *qkv, *o, *gate_up, *down;
};

}  // namespace

int main(int argc, char** argv) {
    std::vector<int> batches{1, 4};
    if (argc > 1) {
        batches.clear();
        for (const char* s = argv[1]; *s;) {
            batches.push_back(std::atoi(s));
            while (*s && *s != ',') ++s;
            if (*s == ',') ++s;
        }
    }
    const int rounds = argc > 2 ? std::max(1, std::atoi(argv[2])) : 24;
    cudaDeviceProp prop{};
    CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, %d SMs, %d async copy engines\n\n", prop.name, prop.multiProcessorCount, prop.asyncEngineCount);

    // ---- the model's weights and activations
    const long long hidden = 4096, ffn = 14336, qkv_rows = 6144;
    const int distinct_layers = 8, n_layer = 32;
    std::vector<Layer> layers(distinct_layers);
    auto alloc_fill = [](long long elems, uint32_t seed) {
        uint16_t* p = nullptr;
        CHECK(cudaMalloc(&p, elems * 2));
        fill_kernel<<<1024, 256>>>(p, elems, seed);
        CHECK(cudaGetLastError());
        return p;
    };
    for (int i = 0; i < distinct_layers; ++i)
        layers[i] = {alloc_fill(qkv_rows * hidden, 4 * i), alloc_fill(hidden * hidden, 4 * i + 1),
                     alloc_fill(2 * ffn * hidden, 4 * i + 2), alloc_fill(hidden * ffn, 4 * i + 3)};
    float *x = nullptr, *y = nullptr;
    uint16_t* x_bf16 = nullptr;
    const int max_batch = *std::max_element(batches.begin(), batches.end());
    CHECK(cudaMalloc(&x, max_batch * ffn * sizeof(float)));
    CHECK(cudaMalloc(&y, max_batch * 2 * ffn * sizeof(float)));
    CHECK(cudaMalloc(&x_bf16, max_batch * ffn * 2));
    CHECK(cudaMemset(x, 0, max_batch * ffn * sizeof(float)));

    int least = 0, greatest = 0;
    CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    cudaStream_t model;
    CHECK(cudaStreamCreateWithPriority(&model, cudaStreamNonBlocking, greatest));
    constexpr int kMaxStreams = 4;
    cudaStream_t recall[kMaxStreams];
    for (auto& s : recall) CHECK(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, least));

    auto model_step = [&](int m) {
        for (int il = 0; il < n_layer; ++il) {
            const Layer& w = layers[il % distinct_layers];
            freekv::cuda::matmul_bf16(x, m, w.qkv, qkv_rows, hidden, y, nullptr, x_bf16, model);
            freekv::cuda::matmul_bf16(x, m, w.o, hidden, hidden, y, nullptr, x_bf16, model);
            freekv::cuda::matmul_bf16(x, m, w.gate_up, 2 * ffn, hidden, y, nullptr, x_bf16, model);
            freekv::cuda::matmul_bf16(x, m, w.down, hidden, ffn, y, nullptr, x_bf16, model);
        }
    };

    // ---- the recall's stores (one layer per CPU page; 1 GiB, scattered pages): cudaHostAlloc'd, or
    // anonymous memory with transparent huge pages asked for, then cudaHostRegister'd (fewer, larger
    // translations for the GPU, if the system grants huge pages and the driver maps them so).
    const int n_pages = 8192;
    const long long page_bytes = kHeadsKv * kBlockBytes;
    const long long store_bytes = n_pages * page_bytes;
    freekv::cuda::PinnedStore store(store_bytes, page_bytes, store_bytes);
    std::memset(store.host_chunk(0), 1, store_bytes);
    void* thp_host = mmap(nullptr, store_bytes + (2 << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (thp_host == MAP_FAILED) { std::perror("mmap"); return 2; }
    thp_host = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(thp_host) + (2 << 20) - 1) & ~uintptr_t{(2 << 20) - 1});
    const int advised = madvise(thp_host, store_bytes, MADV_HUGEPAGE);
    std::memset(thp_host, 1, store_bytes);
    CHECK(cudaHostRegister(thp_host, store_bytes, cudaHostRegisterMapped | cudaHostRegisterPortable));
    void* thp_dev = nullptr;
    CHECK(cudaHostGetDevicePointer(&thp_dev, thp_host, 0));
    {
        std::ifstream meminfo("/proc/meminfo");
        std::string line;
        while (std::getline(meminfo, line))
            if (line.rfind("AnonHugePages", 0) == 0) std::printf("madvise(MADV_HUGEPAGE): %s; %s\n", advised == 0 ? "ok" : "failed", line.c_str());
    }
    void** d_chunks = nullptr;  // the one chunk of the store in use
    CHECK(cudaMalloc(&d_chunks, sizeof(void*)));
    std::mt19937 rng(7);
    std::vector<int32_t> page_of(n_pages);
    for (int i = 0; i < n_pages; ++i) page_of[i] = i;
    std::shuffle(page_of.begin(), page_of.end(), rng);
    std::vector<int32_t> window_pages;  // logical pages whose CPU page is among the first 128 (16 MiB)
    for (int i = 0; i < n_pages; ++i)
        if (page_of[i] < 128) window_pages.push_back(i);
    int32_t* d_page_of = nullptr;
    CHECK(cudaMalloc(&d_page_of, n_pages * sizeof(int32_t)));
    CHECK(cudaMemcpy(d_page_of, page_of.data(), n_pages * sizeof(int32_t), cudaMemcpyHostToDevice));
    // Job rounds over the whole store [0, rounds) and over the 16 MiB window [rounds, 2 * rounds).
    std::vector<std::vector<GatherJob>> job_rounds(2 * rounds);
    for (int r = 0; r < 2 * rounds; ++r)
        for (int j = 0; j < kJobsPerRound; ++j) {
            const int32_t page = r < rounds ? static_cast<int32_t>(rng() % n_pages) : window_pages[rng() % window_pages.size()];
            job_rounds[r].push_back({0, j % kHeadsKv, page, (j / kHeadsKv) % kSlots});
        }
    GatherJob* d_jobs = nullptr;
    CHECK(cudaMalloc(&d_jobs, 2 * rounds * kJobsPerRound * sizeof(GatherJob)));
    for (int r = 0; r < 2 * rounds; ++r)
        CHECK(cudaMemcpy(d_jobs + r * kJobsPerRound, job_rounds[r].data(), kJobsPerRound * sizeof(GatherJob), cudaMemcpyHostToDevice));
    const char* host_base = static_cast<const char*>(store.host_chunk(0));
    int round_base = 0;  // 0: whole store, rounds: the window
    int32_t* d_count = nullptr;
    CHECK(cudaMalloc(&d_count, sizeof(int32_t)));
    CHECK(cudaMemcpy(d_count, &kJobsPerRound, sizeof(int32_t), cudaMemcpyHostToDevice));
    void* d_cache = nullptr;
    CHECK(cudaMalloc(&d_cache, kSlots * kHeadsKv * kBlockBytes));
    char* d_staging = nullptr;  // one round's blocks per stream, also the gather-dev source
    CHECK(cudaMalloc(&d_staging, kMaxStreams * kJobsPerRound * kBlockBytes));
    CHECK(cudaMemset(d_staging, 1, kMaxStreams * kJobsPerRound * kBlockBytes));

    GatherArgs ga;
    ga.cpu_chunks = d_chunks;
    ga.pages_per_chunk = n_pages;
    ga.cpu_page_of = d_page_of;
    ga.budget_cache = d_cache;
    ga.n_jobs = d_count;
    ga.il = 0, ga.n_layer = 1, ga.max_batch = 1, ga.max_pages = n_pages, ga.n_slots = kSlots;
    ga.page_size = kPage, ga.n_head_kv = kHeadsKv, ga.head_dim = kHeadDim, ga.elem_bytes = 2;

    std::vector<void*> dsts(kJobsPerRound);
    std::vector<const void*> srcs(kJobsPerRound);
    std::vector<size_t> sizes(kJobsPerRound, static_cast<size_t>(kBlockBytes));
    auto host_block = [&](const GatherJob& job) {
        return host_base + static_cast<long long>(page_of[job.page]) * page_bytes + job.ikv * kBlockBytes;
    };
    // Enqueues every round of one method; rounds are spread over the method's streams.
    struct Method {
        std::string name;
        int kind;  // 0 gather-host, 1 gather-dev, 2 dma
        int param;  // CTAs or streams
    };
    // gather-dev runs each round 10 times: from HBM it is fast enough to finish before the step.
    auto repeats_of = [](const Method& m) { return m.kind == 1 ? 10 : 1; };
    auto enqueue = [&](const Method& m, int from, int to) {
        for (int r = from; r < to; ++r) {
            if (m.kind == 2) {
                const int si = r % m.param;
                for (int j = 0; j < kJobsPerRound; ++j) {
                    dsts[j] = d_staging + (si * kJobsPerRound + j) * kBlockBytes;
                    srcs[j] = host_block(job_rounds[round_base + r][j]);
                }
                cudaMemcpyAttributes attr{};
                attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
                size_t attr_index = 0;
                CHECK(cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), kJobsPerRound, &attr, &attr_index, 1, recall[si]));
            } else {
                GatherArgs a = ga;
                a.jobs = d_jobs + (round_base + r) * kJobsPerRound;
                a.ctas = m.param;
                if (m.kind == 1) a.staging = d_staging;
                for (int k = 0; k < repeats_of(m); ++k) {
                    const std::string err = freekv::cuda::gather_pages(a, recall[0]);
                    if (!err.empty()) { std::fprintf(stderr, "gather: %s\n", err.c_str()); std::exit(2); }
                }
            }
        }
    };
    cudaEvent_t m0, m1, r0[kMaxStreams], r1[kMaxStreams];
    CHECK(cudaEventCreate(&m0));
    CHECK(cudaEventCreate(&m1));
    for (int i = 0; i < kMaxStreams; ++i) {
        CHECK(cudaEventCreate(&r0[i]));
        CHECK(cudaEventCreate(&r1[i]));
    }
    auto n_streams = [](const Method& m) { return m.kind == 2 ? m.param : 1; };
    // Runs the method alone (model_batch 0) or beside one model step at that batch; returns
    // {model ms, recall GB/s}. The recall's first rounds are queued first, then the step, then the
    // rest (so that the host's time to queue copies cannot leave the step uncovered); its GB/s
    // counts all its rounds, from its first start to its last end.
    auto run = [&](const Method* m, int model_batch) {
        CHECK(cudaDeviceSynchronize());
        const int head = std::min(2, rounds);
        if (m != nullptr) {
            CHECK(cudaEventRecord(r0[0], recall[0]));
            for (int i = 1; i < n_streams(*m); ++i) CHECK(cudaStreamWaitEvent(recall[i], r0[0]));
            enqueue(*m, 0, head);
        }
        float model_ms = 0;
        if (model_batch > 0) {
            CHECK(cudaEventRecord(m0, model));
            model_step(model_batch);
            CHECK(cudaEventRecord(m1, model));
        }
        if (m != nullptr) {
            enqueue(*m, head, rounds);
            for (int i = 0; i < n_streams(*m); ++i) CHECK(cudaEventRecord(r1[i], recall[i]));
        }
        CHECK(cudaDeviceSynchronize());
        if (model_batch > 0) CHECK(cudaEventElapsedTime(&model_ms, m0, m1));
        double gbps = 0;
        if (m != nullptr) {
            float longest = 0;
            for (int i = 0; i < n_streams(*m); ++i) {
                float ms = 0;
                CHECK(cudaEventElapsedTime(&ms, r0[0], r1[i]));
                longest = std::max(longest, ms);
            }
            gbps = static_cast<double>(rounds) * repeats_of(*m) * kJobsPerRound * kBlockBytes / (longest * 1e6);
        }
        return std::pair<double, double>{model_ms, gbps};
    };
    std::vector<Method> methods;
    for (const int ctas : {2, 4, 6, 8, 10, 12, 16, 24, 32}) methods.push_back({"gather-host", 0, ctas});
    methods.push_back({"gather-dev", 1, 16});
    for (const int streams : {1, 2}) methods.push_back({"dma", 2, streams});
    auto median_of = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
    };
    std::printf("recall: %d rounds of %d blocks of %lld KiB (%.0f MiB) per measurement, begun before the step\n\n",
                rounds, kJobsPerRound, kBlockBytes / 1024, rounds * kJobsPerRound * kBlockBytes / 1048576.0);
    std::printf("| store | batch | recall beside the step | N | step ms | vs alone | recall GB/s beside | recall GB/s alone |\n");
    std::printf("|---|---|---|---|---|---|---|---|\n");
    struct Store {
        const char* name;
        const void* host;
        void* dev;
        int round_base;
        bool all_methods;
    };
    const Store stores[] = {{"cudaHostAlloc, 1 GiB", store.host_chunk(0), store.device_chunks()[0], 0, true},
                            {"cudaHostAlloc, 16 MiB of it", store.host_chunk(0), store.device_chunks()[0], rounds, false},
                            {"THP + cudaHostRegister, 1 GiB", thp_host, thp_dev, 0, false}};
    for (const int b : batches) {
        run(nullptr, b);  // warm-up (cuBLAS heuristics, clocks)
        std::vector<double> alone;
        for (int i = 0; i < 5; ++i) alone.push_back(run(nullptr, b).first);
        const double step_alone = median_of(alone);
        std::printf("| - | %d | none | - | %.2f | 1.00 | - | - |\n", b, step_alone);
        for (const Store& st : stores) {
            host_base = static_cast<const char*>(st.host);
            round_base = st.round_base;
            CHECK(cudaMemcpy(d_chunks, &st.dev, sizeof(void*), cudaMemcpyHostToDevice));
            for (const Method& m : methods) {
                if (!st.all_methods && !(m.kind == 0 && (m.param == 4 || m.param == 12 || m.param == 16)) && !(m.kind == 2 && m.param == 1))
                    continue;
                std::vector<double> solo, step, beside;
                for (int i = 0; i < 3; ++i) solo.push_back(run(&m, 0).second);
                for (int i = 0; i < 3; ++i) {
                    const auto [ms, gbps] = run(&m, b);
                    step.push_back(ms);
                    beside.push_back(gbps);
                }
                const double s = median_of(step);
                std::printf("| %s | %d | %s | %d | %.2f | %.2f | %.1f | %.1f |\n", st.name, b, m.name.c_str(), m.param, s,
                            s / step_alone, median_of(beside), median_of(solo));
            }
        }
    }
    CHECK(cudaHostUnregister(thp_host));
    return 0;
}
