// gpu_engine_stub.cpp: the GPU engine in a build without CUDA: gpu_available() says why and every
// constructor throws Error pointing at --device cpu.
#include "core/error.h"
#include "gpu/gpu_collectives.h"
#include "gpu/gpu_engine.h"

namespace freekv::gpu {

namespace {
constexpr const char* kNoCuda = "this build has no CUDA backend (FREEKV_CUDA=OFF or nvcc was not found)";
}

struct GpuWeights::Impl {};
struct GpuEngine::Impl {};

bool gpu_available(std::string* why) {
    if (why) *why = kNoCuda;
    return false;
}

DeviceMemory device_memory() { return {}; }

void profiler_range(bool) {}

std::unique_ptr<DeviceCollectiveGroup> make_device_collectives(const std::vector<int>&) { FREEKV_FAIL("{}; use --device cpu", kNoCuda); }
void set_device(int) { FREEKV_FAIL("{}; use --device cpu", kNoCuda); }
int device_count() { return 0; }
std::string pci_bus_id(int) { return {}; }

GpuWeights::GpuWeights(const ModelConfig& config, const LlamaWeights&, GpuDtype) : config_(config) {
    FREEKV_FAIL("{}; use --device cpu", kNoCuda);
}
GpuWeights::~GpuWeights() = default;
std::string GpuWeights::gemv_summary() const { return {}; }

GpuEngine::GpuEngine(std::shared_ptr<const GpuWeights>, const KvModeConfig&, int64_t, int64_t, const GpuTuning&) {
    FREEKV_FAIL("{}; use --device cpu", kNoCuda);
}
GpuEngine::~GpuEngine() = default;
int32_t GpuEngine::add_sequence() { FREEKV_FAIL("{}", kNoCuda); }
void GpuEngine::remove_sequence(int32_t) { FREEKV_FAIL("{}", kNoCuda); }
int64_t GpuEngine::n_tokens(int32_t) const { FREEKV_FAIL("{}", kNoCuda); }
bool GpuEngine::chunked_prefill() const { FREEKV_FAIL("{}", kNoCuda); }
void GpuEngine::begin_prompt(int32_t, int64_t) { FREEKV_FAIL("{}", kNoCuda); }
void GpuEngine::fail_next_prefill_allocation() { FREEKV_FAIL("{}", kNoCuda); }
std::vector<RowPlan> GpuEngine::last_decode_plan() const { FREEKV_FAIL("{}", kNoCuda); }
void GpuEngine::forward(std::span<const int32_t>, std::span<const SequenceSpan>, std::span<const int64_t>, std::vector<float>&) {
    FREEKV_FAIL("{}", kNoCuda);
}
void GpuEngine::forward_top(std::span<const int32_t>, std::span<const SequenceSpan>, std::span<const int64_t>, int32_t,
                            std::vector<int32_t>&, std::vector<float>&) {
    FREEKV_FAIL("{}", kNoCuda);
}
void GpuEngine::fill_synthetic(int32_t, int64_t, uint64_t) { FREEKV_FAIL("{}", kNoCuda); }
void GpuEngine::set_tensor_parallel(const GpuRank&) { FREEKV_FAIL("{}", kNoCuda); }
void GpuEngine::set_timing(bool) {}
KvStats GpuEngine::stats() { return {}; }
int64_t GpuEngine::device_bytes() const { return 0; }
int64_t GpuEngine::host_bytes() const { return 0; }

}  // namespace freekv::gpu
