// gpu_tuning.h: the GPU engine's launch shapes and measurement switches as named options (bench
// and serve flags), printed in the start-up plan and recorded in bench rows. The defaults are the
// measured best on the H100/H200 (bench/results); the diagnostic switch is for measurements only.
// Invariant: validate() accepts exactly the ranges the kernels support and names the flag otherwise.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <string>

#include "core/error.h"

namespace freekv::gpu {

/// What FreeKV's background recall does: everything (off), the selection without the gather
/// (select: the maps then name pages never copied), or nothing (none). Outputs are wrong unless off.
enum class DiagBackground { kOff, kSelectOnly, kNone };

inline DiagBackground parse_diag_background(const std::string& s) {
    if (s == "off") return DiagBackground::kOff;
    if (s == "select") return DiagBackground::kSelectOnly;
    if (s == "none") return DiagBackground::kNone;
    FREEKV_FAIL("--diag-background '{}' must be off, select or none", s);
}
inline const char* diag_background_name(DiagBackground d) {
    return d == DiagBackground::kOff ? "off" : d == DiagBackground::kSelectOnly ? "select" : "none";
}

struct GpuTuning {
    int32_t attn_min_split_tokens = 32;  // decode attention: least tokens per split-K block
    int32_t attn_split_blocks = 0;       // decode attention: blocks the split-K rule aims at (0: one full wave)
    bool cuda_graphs = true;             // replay the decode step's launches from CUDA graphs where its shape repeats
    bool pdl = true;                     // decode GEMVs as programmatic dependent launches (weights streamed early)
    bool attn_fused_combine = false;     // decode attention's last blocks merge the split-K partials (no combine kernel)
    bool attn_pdl = false;               // decode attention and its combine as programmatic dependent launches
    bool attn_v_registers = false;       // decode attention (staged) keeps V rows in registers: half the shared memory
    int32_t sync_gather_ctas = 32;       // thread blocks of the critical-path gather
    int32_t bg_gather_ctas = 12;         // thread blocks of FreeKV's background gather
    bool gemm_sm_reserve = true;         // cuBLAS leaves the background gather its SMs
    bool prefill_install_beside = true;  // a prefilled layer's install runs on the side stream beside the next layer
    int32_t prefill_install_ctas = 0;    // beside: install blocks per KV head (0: one per page), their SMs kept from cuBLAS
    DiagBackground diag_background = DiagBackground::kOff;

    void validate() const {
        FREEKV_CHECK(attn_min_split_tokens >= 16 && attn_min_split_tokens <= 4096,
                     "--attn-min-split-tokens {} must be in [16, 4096]", attn_min_split_tokens);
        FREEKV_CHECK(attn_split_blocks >= 0 && attn_split_blocks <= 8192, "--attn-split-blocks {} must be in [0, 8192]",
                     attn_split_blocks);
        FREEKV_CHECK(sync_gather_ctas >= 1 && sync_gather_ctas <= 528, "--sync-gather-ctas {} must be in [1, 528]",
                     sync_gather_ctas);
        FREEKV_CHECK(bg_gather_ctas >= 1 && bg_gather_ctas <= 132, "--bg-gather-ctas {} must be in [1, 132]", bg_gather_ctas);
        FREEKV_CHECK(prefill_install_ctas >= 0 && prefill_install_ctas <= 64, "--prefill-install-ctas {} must be in [0, 64]",
                     prefill_install_ctas);
    }
    std::string describe() const {
        return fmt::format("gpu tuning: attn-min-split-tokens {} | attn-split-blocks {} | attn-fused-combine {} | attn-pdl {} | attn-v-registers {} | cuda-graphs {} | pdl {} | sync-gather-ctas {} | bg-gather-ctas {} | gemm-sm-reserve {} "
                           "| prefill-install {} ({} ctas per KV head) | diag-background {}",
                           attn_min_split_tokens, attn_split_blocks > 0 ? std::to_string(attn_split_blocks) : std::string("one wave"), attn_fused_combine ? "on" : "off", attn_pdl ? "on" : "off", attn_v_registers ? "on" : "off", cuda_graphs ? "on" : "off", pdl ? "on" : "off", sync_gather_ctas, bg_gather_ctas, gemm_sm_reserve ? "on" : "off",
                           prefill_install_beside ? "beside" : "inline", prefill_install_ctas, diag_background_name(diag_background));
    }
};

}  // namespace freekv::gpu
