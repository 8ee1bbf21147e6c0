// gpu_tuning.cu: launch shapes derived from the GpuTuning options and the device (split-K of the
// decode attention, the SMs left to cuBLAS beside the background gather and beside a prefill's
// install).
#include "gpu/gpu_engine_impl.cuh"

namespace freekv::gpu {

// Token ranges per split-K block: about target_blocks blocks over all (row, KV head) pairs
// (--attn-split-blocks; by default one full wave of the kernel, cuda::attention_pages_wave: a second,
// partial wave measured 25-30% slower at 32K), at least min_tokens each (--attn-min-split-tokens),
// at most 256 splits (the combine kernel's limit).
int32_t split_for(int64_t n_rows_heads, int64_t max_tokens, int64_t min_tokens, int64_t target_blocks) {
    const int64_t want = std::max<int64_t>(1, target_blocks / std::max<int64_t>(1, n_rows_heads));
    return static_cast<int32_t>(std::clamp<int64_t>(std::min(want, (max_tokens + min_tokens - 1) / min_tokens), 1, 256));
}

// Multiprocessors left to cuBLAS while FreeKV's background gather runs: all but one per gather
// block, so that the scheduler can place a one-wave GEMM beside the gather instead of sharing SMs
// with it; 0 (every SM) when the reserve is off.
namespace {
int multiprocessors() {
    static const int count = [] {
        int dev = 0, n = 0;
        FREEKV_CUDA_CHECK(cudaGetDevice(&dev));
        FREEKV_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
        return n;
    }();
    return count;
}
}  // namespace

int gemm_sms_beside_gather(const GpuTuning& t) {
    if (!t.gemm_sm_reserve) return 0;
    return std::max(1, multiprocessors() - t.bg_gather_ctas);
}

// Multiprocessors left to cuBLAS while a prefilled layer's install runs beside it on a small grid
// (--prefill-install-ctas blocks per KV head, each on an SM of its own at worst); 0 (every SM) for
// the default one-block-per-page install, which shares every SM.
int gemm_sms_beside_install(const GpuTuning& t, int64_t n_head_kv) {
    if (!t.prefill_install_beside || t.prefill_install_ctas == 0) return 0;
    const int blocks = static_cast<int>(std::min<int64_t>(multiprocessors() - 1, t.prefill_install_ctas * n_head_kv));
    return multiprocessors() - blocks;
}

}  // namespace freekv::gpu
