// gpu_collectives.cu: see gpu_collectives.h.
#include "gpu/gpu_collectives.h"

#include <cuda_runtime.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nccl.h>

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>
#include <type_traits>

#include "backend/cuda/cuda_check.h"
#include "core/error.h"
#include "parallel/host_collective.h"

namespace freekv::gpu {

namespace {

// NCCL, opened when a group of distinct GPUs is made: a build (and a one-GPU run) needs no NCCL.
struct Nccl {
    decltype(&ncclCommInitAll) comm_init_all = nullptr;
    decltype(&ncclAllReduce) all_reduce = nullptr;
    decltype(&ncclCommAbort) comm_abort = nullptr;
    decltype(&ncclCommDestroy) comm_destroy = nullptr;
    decltype(&ncclGetErrorString) error_string = nullptr;

    static const Nccl& get() {
        static const Nccl nccl = open();
        return nccl;
    }
    void check(ncclResult_t r, const char* what) const {
        if (r != ncclSuccess) FREEKV_FAIL("tensor parallelism: {} failed: {}", what, error_string(r));
    }

private:
    static Nccl open() {
        void* lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
        if (lib == nullptr)
            FREEKV_FAIL("tensor parallelism over several GPUs needs NCCL (libnccl.so.2), which could not be loaded ({}); "
                        "install NCCL or add its folder to LD_LIBRARY_PATH",
                        dlerror());
        Nccl n;
        auto sym = [&](auto& fn, const char* name) {
            fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
            if (fn == nullptr) FREEKV_FAIL("libnccl.so.2 has no {}: NCCL 2.x is needed", name);
        };
        sym(n.comm_init_all, "ncclCommInitAll");
        sym(n.all_reduce, "ncclAllReduce");
        sym(n.comm_abort, "ncclCommAbort");
        sym(n.comm_destroy, "ncclCommDestroy");
        sym(n.error_string, "ncclGetErrorString");
        return n;
    }
};

class NcclGroup final : public DeviceCollectiveGroup {
public:
    explicit NcclGroup(std::vector<int> devices) : devices_(std::move(devices)) {
        setenv("NCCL_NVLS_ENABLE", "0", 1);  // NVLink multicast can take a shared host's GPUs down
        init();
    }
    ~NcclGroup() override { destroy(); }
    DeviceCollective& rank(int r) override { return *members_.at(static_cast<size_t>(r)); }
    void fail(const std::string& why) override {
        std::lock_guard lock(mutex_);
        if (aborted_) return;
        why_ = why;
        aborted_ = true;
        for (ncclComm_t c : comms_) (void)Nccl::get().comm_abort(c);  // ranks blocked in a sum return with an error
        comms_.assign(comms_.size(), nullptr);
    }
    void reset() override {
        std::lock_guard lock(mutex_);
        if (!aborted_) return;
        aborted_ = false;
        why_.clear();
        init();
    }
    const char* kind() const override { return "nccl"; }

private:
    class Member final : public DeviceCollective {
    public:
        Member(NcclGroup& g, int r) : group_(g), rank_(r) {}
        void all_reduce_sum(float* data, int64_t n, void* stream) override {
            ncclComm_t comm = nullptr;
            {
                std::lock_guard lock(group_.mutex_);
                if (group_.aborted_) FREEKV_FAIL("{}", group_.why_);
                comm = group_.comms_[static_cast<size_t>(rank_)];
            }
            const ncclResult_t r = Nccl::get().all_reduce(data, data, static_cast<size_t>(n), ncclFloat32, ncclSum, comm,
                                                 static_cast<cudaStream_t>(stream));
            if (r != ncclSuccess) {
                std::lock_guard lock(group_.mutex_);
                if (group_.aborted_) FREEKV_FAIL("{}", group_.why_);
            }
            Nccl::get().check(r, "ncclAllReduce");
        }
        bool capturable() const override { return true; }

    private:
        NcclGroup& group_;
        int rank_;
    };

    void init() {
        comms_.assign(devices_.size(), nullptr);
        const Nccl& nccl = Nccl::get();
        nccl.check(nccl.comm_init_all(comms_.data(), static_cast<int>(devices_.size()), devices_.data()), "ncclCommInitAll");
        if (members_.empty())
            for (size_t r = 0; r < devices_.size(); ++r) members_.push_back(std::make_unique<Member>(*this, static_cast<int>(r)));
    }
    void destroy() {
        for (ncclComm_t c : comms_)
            if (c != nullptr) (void)Nccl::get().comm_destroy(c);
        comms_.clear();
    }

    std::vector<int> devices_;
    std::vector<ncclComm_t> comms_;
    std::vector<std::unique_ptr<Member>> members_;
    std::mutex mutex_;
    bool aborted_ = false;
    std::string why_;
};

// Ranks sharing one GPU: each rank's stream is drained, its data copied to the host, summed there
// in rank order (HostCollective) and copied back.
class HostStagedGroup final : public DeviceCollectiveGroup {
public:
    explicit HostStagedGroup(int n) : host_(n) {
        for (int r = 0; r < n; ++r) members_.push_back(std::make_unique<Member>(host_.rank(r)));
    }
    DeviceCollective& rank(int r) override { return *members_.at(static_cast<size_t>(r)); }
    void fail(const std::string& why) override { host_.fail(why); }
    void reset() override { host_.reset(); }
    const char* kind() const override { return "host-staged"; }

private:
    class Member final : public DeviceCollective {
    public:
        explicit Member(RankCollective& host) : host_(host) {}
        void all_reduce_sum(float* data, int64_t n, void* stream) override {
            buffer_.resize(static_cast<size_t>(n));
            const auto s = static_cast<cudaStream_t>(stream);
            FREEKV_CUDA_CHECK(cudaMemcpyAsync(buffer_.data(), data, static_cast<size_t>(n) * 4, cudaMemcpyDeviceToHost, s));
            FREEKV_CUDA_CHECK(cudaStreamSynchronize(s));
            host_.all_reduce_sum(buffer_.data(), n);
            FREEKV_CUDA_CHECK(cudaMemcpyAsync(data, buffer_.data(), static_cast<size_t>(n) * 4, cudaMemcpyHostToDevice, s));
            FREEKV_CUDA_CHECK(cudaStreamSynchronize(s));  // buffer_ is reused by the next sum
        }
        bool capturable() const override { return false; }

    private:
        RankCollective& host_;
        std::vector<float> buffer_;
    };

    HostCollective host_;
    std::vector<std::unique_ptr<Member>> members_;
};

}  // namespace

std::unique_ptr<DeviceCollectiveGroup> make_device_collectives(const std::vector<int>& devices) {
    FREEKV_CHECK(!devices.empty(), "a tensor-parallel group needs at least one rank");
    const int n_devices = device_count();
    for (int d : devices)
        FREEKV_CHECK(d >= 0 && d < n_devices, "tensor parallelism: GPU {} does not exist (this process sees {})", d, n_devices);
    std::vector<int> sorted = devices;
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end()) return std::make_unique<NcclGroup>(devices);
    if (sorted.front() == sorted.back()) return std::make_unique<HostStagedGroup>(static_cast<int>(devices.size()));
    FREEKV_FAIL("tensor parallelism over {} ranks on GPUs {}: the ranks need a GPU each (or, to test the split, all the same one)",
                devices.size(), fmt::join(devices, ", "));
}

void set_device(int device) { FREEKV_CUDA_CHECK(cudaSetDevice(device)); }

std::string pci_bus_id(int device) {
    char id[32] = {};
    if (cudaDeviceGetPCIBusId(id, static_cast<int>(sizeof(id)), device) != cudaSuccess) {
        (void)cudaGetLastError();
        return {};
    }
    return id;
}

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

}  // namespace freekv::gpu
