// kv_kernels.cuh: the small device kernels of the GPU KV engine (src/gpu): appending a decode
// token's K/V to its slot, installing a prefilled history into the budget cache and the CPU store,
// the correction test, attention-mass recall, recall counters, and synthetic KV for benchmarks.
// Host API only (device pointers in, `stream` a cudaStream_t passed as void*); no CUDA types.
// Layouts are those of kv/kv_manager.h with elements of g.elem_bytes (2: bf16, 4: fp32):
//   budget cache [L][max_batch][n_slots][2][page_size][n_head_kv][head_dim]   (NHD slots)
//   CPU store    per CPU page [L][n_head_kv][2][page_size][head_dim]           (HND blocks)
//                (with an 8-bit store each block is codes plus scales: kv_block_code.cuh)
//   summaries    [L][max_batch][n_head_kv][max_pages][2][head_dim]
// Invariants: summaries and offloaded blocks are bit-identical to page_boundary.cu's (fp32 math,
// storage in the element type, bf16 rounded to nearest even); every launcher checks the launch and
// throws Error.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FREEKV_HOST_DEVICE __host__ __device__
#else
#define FREEKV_HOST_DEVICE
#endif

namespace freekv::cuda {

/// Shapes shared by the kernels; pointers are per layer where the comment says so.
struct KvGeometry {
    int32_t n_layer = 0, max_batch = 0, n_slots = 0, max_pages = 0, page_size = 0, n_head = 0, n_head_kv = 0,
            head_dim = 0;
    int32_t elem_bytes = 2;  // KV and summary elements: 2 (bf16) or 4 (fp32)
    // The CPU store's blocks: kStoreNative (elements of elem_bytes), kStoreInt8 or kStoreFp8
    // (kv_block_code.cuh) of stored_block bytes (backend/ops.h kv_coded_block_bytes); 0: native.
    int32_t store_code = 0;
    int32_t stored_block = 0;
    FREEKV_HOST_DEVICE int64_t store_block_bytes() const {
        return store_code == 0 ? block_elems() * elem_bytes : static_cast<int64_t>(stored_block);
    }
    FREEKV_HOST_DEVICE int64_t cpu_page_bytes() const { return static_cast<int64_t>(n_layer) * n_head_kv * store_block_bytes(); }
    FREEKV_HOST_DEVICE int64_t row() const { return static_cast<int64_t>(n_head_kv) * head_dim; }
    FREEKV_HOST_DEVICE int64_t slot_elems() const { return 2LL * page_size * row(); }
    FREEKV_HOST_DEVICE int64_t layer_cache_elems() const { return static_cast<int64_t>(max_batch) * n_slots * slot_elems(); }
    FREEKV_HOST_DEVICE int64_t block_elems() const { return 2LL * page_size * head_dim; }
    FREEKV_HOST_DEVICE int64_t cpu_page_elems() const { return static_cast<int64_t>(n_layer) * n_head_kv * block_elems(); }
    FREEKV_HOST_DEVICE int64_t layer_summary_elems() const { return static_cast<int64_t>(max_batch) * n_head_kv * max_pages * 2 * head_dim; }
};

/// A decode step's RoPE, append and query store in one launch: rotates q ([n_seq][n_head][head_dim])
/// and k ([n_seq][row]) in place as `rope` does, writes the rotated k and v (rounded to the element type), and
/// copies the rotated q to q_dst[s] (the query ring; nullptr: no copy). K and V land at element
/// dst_offset[s] (K) and dst_offset[s] + page_size * row (V) of one layer's budget cache; the
/// rotation is rope's, bit for bit.
struct RopeAppendArgs {
    float* q = nullptr;
    float* k = nullptr;
    const float* v = nullptr;
    // Optional: the rows of the fused q|k|v product ([n_seq][(n_head + 2 n_head_kv) head_dim]), read
    // instead of q, k and v; the rotated q and k are written to q and k all the same (v is unused).
    const float* qkv = nullptr;
    int32_t n_seq = 0;
    const int32_t* positions = nullptr;  // [n_seq]
    const float* inv_freq = nullptr;     // [head_dim / 2]
    bool neox = false;
    const int64_t* dst_offset = nullptr;  // [n_seq]: where row s's K goes
    void* layer_cache = nullptr;
    float* const* q_dst = nullptr;        // [n_seq] or nullptr
};
void rope_append(const RopeAppendArgs& a, const KvGeometry& g, void* stream);

/// Rounds x ([n] fp32) to bf16; with `rounded`, also writes the rounded values back as fp32.
void round_bf16(const float* x, int64_t n, uint16_t* out, void* stream, float* rounded = nullptr);
/// x ([n] fp32) as elements of `elem_bytes` into out (bf16: round_bf16; fp32: a copy); with
/// `rounded`, also the stored values as fp32.
void store_kv(const float* x, int64_t n, void* out, int elem_bytes, void* stream, float* rounded = nullptr);

/// Installs the history ([n_tokens][row] K and V in the element type) of batch entry `seq` into one layer:
/// pages 0 .. n_complete-1 get summaries (when summaries != nullptr) and are offloaded through the
/// chunk table (when cpu_chunks != nullptr); page j is copied into slot slot_of_page[j] when >= 0.
struct InstallArgs {
    const void* hist_k = nullptr;
    const void* hist_v = nullptr;
    int32_t n_tokens = 0, n_complete = 0, seq = 0, il = 0;
    const int32_t* slot_of_page = nullptr;    // [n_pages] (device)
    void* layer_cache = nullptr;              // this layer's budget cache
    void* layer_summaries = nullptr;          // this layer's summaries, or nullptr
    bool cuboid = false;
    void* const* cpu_chunks = nullptr;        // device array of chunk addresses, or nullptr
    int32_t pages_per_chunk = 0;
    const int32_t* cpu_page_of = nullptr;     // [max_batch][max_pages] (device)
};
/// page_blocks > 0: that many blocks per KV head walk the pages (a small grid, leaving the other
/// multiprocessors to what runs beside it); 0: one block per (page, KV head).
void install_pages(const InstallArgs& a, const KvGeometry& g, void* stream, int page_blocks = 0);

/// Correction test of one layer (design doc 3.7). mode[s]: 0 no selection for s (flag 2 on every
/// head), 1 select every head now (flag 1), 2 flag a head when the mean cosine similarity of its
/// query heads between q and q_prev is below tau, 3 take forced[s * n_head_kv + h]. Counts, for
/// modes 2 and 3, tested (step, seq) pairs and those with a flag (counters[0], [1]) and tested /
/// flagged heads (counters[2], [3]).
struct FlagArgs {
    const float* q = nullptr;            // [n_seq][n_head][head_dim]
    const float* const* q_prev = nullptr;  // [n_seq] pointers to each sequence's previous query
    const uint8_t* mode = nullptr;       // [n_seq]
    const uint8_t* forced = nullptr;     // [n_seq][n_head_kv]
    uint8_t* flags = nullptr;            // out [n_seq][n_head_kv]
    unsigned long long* counters = nullptr;  // [4] for this layer
    float tau = 0.9f;
    int32_t n_seq = 0;
};
void correction_flags(const FlagArgs& a, const KvGeometry& g, void* stream);

/// Attention-mass recall of one layer (design doc 6.1): for each sparse sequence s (list[s] =
/// batch index, n_tokens[s]) and query head, the share of full attention's softmax mass on pages
/// in the attended set (sink, recent window, or resident in a middle slot). Keys of completed pages
/// come from the CPU store, the current page from its slot. out: [n_list][n_head].
struct MassArgs {
    const float* q = nullptr;                // [n_list][n_head][head_dim] (rows of the step's q)
    const int32_t* seq = nullptr;            // [n_list] batch index
    const int32_t* n_tokens = nullptr;       // [n_list]
    const int32_t* slot_of_page = nullptr;   // this layer's [max_batch][n_head_kv][max_pages]
    const void* layer_cache = nullptr;
    void* const* cpu_chunks = nullptr;
    int32_t pages_per_chunk = 0;
    const int32_t* cpu_page_of = nullptr;
    int32_t il = 0, n_list = 0, n_sink_page = 0, n_recent_page = 0, current_slot = 0;
    float* scratch = nullptr;                // [n_list][n_head][max_pages * page_size]
    float* out = nullptr;
};
void mass_recall(const MassArgs& a, const KvGeometry& g, void* stream);

/// Dense-regime placement (design doc 3.10): for each item (seq, page, slot) of `items`
/// ([n_items][3], device), page becomes resident in slot for every layer and KV head.
void place_pages(const int32_t* items, int32_t n_items, const KvGeometry& g, int32_t* page_of_slot, int32_t* slot_of_page,
                 void* stream);

/// Deterministic pseudo-random values in [-1, 1) (a hash of seed and index), stored as elements of
/// `elem_bytes` (bf16 rounds them; the same seed gives the same values up to that rounding).
void fill_random_kv(void* out, int64_t n, uint64_t seed, int elem_bytes, void* stream);
/// Pseudo-random fp32 values in [-1, 1).
void fill_random_f32(float* out, int64_t n, uint64_t seed, void* stream);

}  // namespace freekv::cuda
