// gpu_tuning.cu: launch shapes of the decode attention and the gathers, and the measurement
// switches read once from the environment (FREEKV_*; for measurements, never for real use).
#include "gpu/gpu_engine_impl.cuh"

namespace freekv::gpu {

// Token ranges per split-K block: about eight blocks of four warps per multiprocessor of the H100
// (132), so that enough K/V loads are in flight to cover HBM latency, at least
// FREEKV_ATTN_MIN_SPLIT_TOKENS tokens each (default 32 = 4 warps x 4 tokens in flight x 2 rounds:
// a budget-sized list of 2048 tokens then makes 64 splits; 32 measured best of 16, 32 and 64 for the
// budget-only floor, 1.19 -> 1.08 ms of attention per step at batch 1, and equal for full KV), at
// most 256 splits (the combine kernel's limit).
int32_t split_for(int64_t n_rows_heads, int64_t max_tokens) {
    static const int64_t min_tokens = [] {
        const char* env = std::getenv("FREEKV_ATTN_MIN_SPLIT_TOKENS");
        return env != nullptr ? std::clamp<int64_t>(std::atoll(env), 16, 4096) : int64_t{32};
    }();
    const int64_t want = std::max<int64_t>(1, 1056 / std::max<int64_t>(1, n_rows_heads));
    return static_cast<int32_t>(std::clamp<int64_t>(std::min(want, (max_tokens + min_tokens - 1) / min_tokens), 1, 256));
}

// Thread blocks of the synchronous gather (corrective and non-speculative recall, on the critical
// path): 32 by default; FREEKV_SYNC_GATHER_CTAS (1..528) overrides it, for measurement.
int32_t sync_gather_ctas() {
    static const int32_t ctas = [] {
        const char* env = std::getenv("FREEKV_SYNC_GATHER_CTAS");
        return env != nullptr ? static_cast<int32_t>(std::clamp(std::atoi(env), 1, 528)) : 32;
    }();
    return ctas;
}

// Thread blocks of the background gather: 12 by default (bench_recall_overlap, session 7: each
// block keeps ~16 KiB of host reads in flight, 10-12 blocks reach ~50 GB/s alone, and more only
// slow the model's GEMMs beside them); FREEKV_BG_GATHER_CTAS (1..132) overrides it.
int32_t background_gather_ctas() {
    static const int32_t ctas = [] {
        const char* env = std::getenv("FREEKV_BG_GATHER_CTAS");
        return env != nullptr ? static_cast<int32_t>(std::clamp(std::atoi(env), 1, 132)) : 12;
    }();
    return ctas;
}

// A measurement switch, never for real use: FREEKV_DIAG_BACKGROUND=select runs FreeKV's background
// selection but not its gather (the maps then name pages that were never copied), =none skips
// the background work altogether. Attention reads wrong pages either way; only the timing of
// what is left means anything. Returns 0 (off), 1 (select only) or 2 (none).
int diag_background() {
    static const int diag = [] {
        const char* env = std::getenv("FREEKV_DIAG_BACKGROUND");
        if (env == nullptr) return 0;
        const std::string v(env);
        FREEKV_CHECK(v == "select" || v == "none", "FREEKV_DIAG_BACKGROUND={}: use select or none, or unset it", v);
        const int d = v == "select" ? 1 : 2;
        FREEKV_LOG_WARN("FREEKV_DIAG_BACKGROUND={}: FreeKV's background recall is cut short; outputs are wrong, timings are diagnostic", env);
        return d;
    }();
    return diag;
}

// Multiprocessors left to cuBLAS while FreeKV's background gather runs: all but one per gather
// block, so that the scheduler can place a one-wave GEMM beside the gather instead of sharing SMs
// with it. FREEKV_GEMM_SM_RESERVE=0 gives cuBLAS every SM (for measuring the difference).
int gemm_sms_beside_gather() {
    static const int sms = [] {
        const char* env = std::getenv("FREEKV_GEMM_SM_RESERVE");
        if (env != nullptr && std::atoi(env) == 0) return 0;
        int dev = 0, count = 0;
        FREEKV_CUDA_CHECK(cudaGetDevice(&dev));
        FREEKV_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev));
        return std::max(1, count - background_gather_ctas());
    }();
    return sms;
}

}  // namespace freekv::gpu
