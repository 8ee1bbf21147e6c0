// gather_pages.cuh: the recall job record shared by the gather kernel's launcher and its callers
// (host and device), and the launcher's signature. Device-free: includes no CUDA headers.
// Invariants: a job names one (sequence, KV head, logical page, destination slot); the source is
// (in chunk cpu_page / pages_per_chunk of the pinned store) the HND block [2][page_size][head_dim]
// (native or 8-bit coded) of that (page, layer, head) in the CPU store; the
// destination is the KV head's slice of the slot in the NHD budget cache.
#pragma once

#include <cstdint>
#include <string>

namespace freekv::cuda {

struct GatherJob {
    int32_t seq, ikv, page, slot;
};

/// Shapes and pointers of one gather launch. Elements are elem_bytes wide (2: bf16, 4: fp32): with a
/// native store the kernel moves bytes and never converts; with an 8-bit store (store_code 1 int8,
/// 2 fp8; blocks of store_block_bytes as kv_block_code.cuh lays them out) it decodes each block
/// into the slot's element type.
struct GatherArgs {
    void* const* cpu_chunks = nullptr;     // device array of the store's mapped chunk addresses
    int32_t pages_per_chunk = 0;           // CPU pages per chunk (a page never straddles chunks)
    const int32_t* cpu_page_of = nullptr;  // [max_batch][max_pages] CPU page id of each logical page (device)
    void* budget_cache = nullptr;          // [L][max_batch][n_slots][2][page_size][n_head_kv][head_dim] (device)
    const GatherJob* jobs = nullptr;       // [n_jobs_capacity] (device)
    const int32_t* n_jobs = nullptr;       // job count, in device memory (R1: no host copy)
    int32_t il = 0, n_layer = 0, max_batch = 0, max_pages = 0, n_slots = 0;
    int32_t page_size = 32, n_head_kv = 8, head_dim = 128, elem_bytes = 2;
    int32_t ctas = 64;                 // thread blocks (an 8-bit store's kernel launches twice as many)
    int32_t store_code = 0;         // 0: native blocks of 2 * page_size * head_dim elements
    int64_t store_block_bytes = 0;  // 8-bit store: bytes of one coded block
    // Scatter mode (the per-copy recall): when set, job j's HND block was already copied to
    // staging + j * (block bytes) and the store is not read.
    const void* staging = nullptr;
    // Optional [n_head_kv] counters: each job adds one to its KV head's entry (recall statistics).
    unsigned long long* per_head = nullptr;
};

/// Launches the zero-copy gather on `stream` (a cudaStream_t passed as void*). Returns "" or the
/// CUDA error text.
std::string gather_pages(const GatherArgs& args, void* stream);

}  // namespace freekv::cuda
