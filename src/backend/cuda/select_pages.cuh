// select_pages.cuh: the retrieval kernels' host API (design doc 4.6 score + select): scores of the
// candidate pages for the query heads of every (sequence, KV head), group aggregation, top-k with
// ties to the smaller page, the recall plan against the resident set, and the map updates, all on
// the device: the job list and its count never visit the host.
// Invariants: identical semantics to retrieval/selection.h (scores in fp32); a (sequence, KV head)
// is processed only when its flag equals `want_flag` (or always when flags == nullptr); jobs are
// appended at *n_jobs with atomics, ordered within one (sequence, KV head) as 3.5 pairs them.
#pragma once

#include <cstdint>

#include "backend/cuda/gather_pages.cuh"

namespace freekv::cuda {

struct SelectArgs {
    // Rows: blockIdx.y indexes q, n_pages and flags; batch_of[row] (or the row itself when
    // batch_of == nullptr) indexes summaries, maps and the jobs' seq.
    const int32_t* batch_of = nullptr;
    const float* q = nullptr;          // [n_seq][n_head][head_dim] post-RoPE queries
    const void* summaries = nullptr;   // [n_seq][n_head_kv][max_pages][2][head_dim] of elem_bytes
    const int32_t* n_pages = nullptr;  // [n_seq] pages of each sequence (candidates [ns, n_pages - nw))
    const uint8_t* flags = nullptr;    // [n_seq][n_head_kv] correction flags, or nullptr
    uint8_t want_flag = 1;
    int32_t* page_of_slot = nullptr;   // [n_seq][n_head_kv][n_slots]
    int32_t* slot_of_page = nullptr;   // [n_seq][n_head_kv][max_pages]
    GatherJob* jobs = nullptr;         // out: recall jobs
    int32_t* n_jobs = nullptr;         // out: count (zeroed by the score kernel, appended atomically)
    float* scores = nullptr;           // scratch [n_seq][n_head_kv][group][max_pages]
    int32_t n_seq = 0, n_head = 0, n_head_kv = 0, head_dim = 0, max_pages = 0;
    int32_t n_sink_page = 0, n_recent_page = 0, n_select = 0, n_slots = 0;
    int32_t elem_bytes = 2;            // summaries: 2 (bf16) or 4 (fp32)
    int32_t agg = 0;                   // 0 softmax-mean, 1 mean, 2 max (GroupAgg order)
};

/// Launches score + select on `stream`; throws Error on a launch failure or unsupported shape.
void select_pages(const SelectArgs& args, void* stream);

}  // namespace freekv::cuda
