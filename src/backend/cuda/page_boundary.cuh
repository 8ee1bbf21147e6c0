// page_boundary.cuh: the page-boundary work of one decode step (design doc 3.10, R6) for every
// layer and boundary sequence in one launch: summaries of the completed page (minmax or cuboid,
// fp32 math, stored in the KV element type), the rotation copy of the page into its ring slot, and the offload of
// the page (NHD slot -> HND block, or its 8-bit codes and scales) into the mapped pinned CPU store
// through its chunk table.
// Invariants: summaries and blocks are bit-identical to the CPU path's (fp32 math, rounded to the
// element type); the source slot is read before the ring slot is written within a (layer, sequence).
#pragma once

#include <cstdint>

namespace freekv::cuda {

struct BoundaryJob {
    int32_t seq;          // batch index
    int32_t page;         // the page that just completed
    int32_t src_slot;     // slot holding it now
    int32_t dst_slot;     // ring slot to copy it to, or -1 for no rotation
    int32_t cpu_page;     // CPU page id of its offload target
};

struct BoundaryArgs {
    const BoundaryJob* jobs = nullptr;       // [n_jobs] (device)
    int32_t n_jobs = 0;
    void* budget_cache = nullptr;            // [L][max_batch][n_slots][2][page_size][n_head_kv][head_dim]
    void* summaries = nullptr;               // [L][max_batch][n_head_kv][max_pages][2][head_dim]
    void* const* cpu_chunks = nullptr;       // mapped chunk addresses of the CPU store (device array)
    int32_t pages_per_chunk = 0;
    int32_t n_layer = 0, max_batch = 0, n_slots = 0, max_pages = 0, page_size = 0, n_head_kv = 0, head_dim = 0;
    int32_t elem_bytes = 2;                  // 2: bf16, 4: fp32
    bool cuboid = false;
    int32_t store_code = 0;                  // kStoreNative, or kStoreInt8 / kStoreFp8 (kv_block_code.cuh)
    int64_t store_block_bytes = 0;           // bytes of one block in the store (native: 2 * page_size * head_dim elements)
};

void page_boundary(const BoundaryArgs& args, void* stream);

}  // namespace freekv::cuda
