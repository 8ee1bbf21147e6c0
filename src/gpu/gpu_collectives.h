// gpu_collectives.h: the DeviceCollective (gpu_rank.h) of every rank of a tensor-parallel group on
// GPUs. Ranks on distinct GPUs sum with NCCL's all-reduce (one communicator per rank, made together
// by this process; NVLink multicast stays off: NCCL_NVLS_ENABLE=0). Ranks that share one GPU (tests
// of the split on a one-GPU machine) sum through host memory with HostCollective: correct, slow, and
// not capturable into CUDA graphs.
// Invariants: rank(r) lives as long as the group; after fail() every rank's pending and later sums
// fail (NCCL: the communicators are aborted) until reset() makes the group anew, called while no
// rank is inside a sum.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "gpu/gpu_rank.h"

namespace freekv::gpu {

class DeviceCollectiveGroup {
public:
    virtual ~DeviceCollectiveGroup() = default;
    virtual DeviceCollective& rank(int r) = 0;
    /// Stops every rank's sum (a rank failed alone); each then throws or returns an error.
    virtual void fail(const std::string& why) = 0;
    virtual void reset() = 0;
    /// "nccl" or "host-staged", for logs.
    virtual const char* kind() const = 0;
};

/// The group of ranks on devices[r]: NCCL when they are distinct GPUs, host-staged when all are the
/// same GPU; Error (saying what would work) for a mix, or without CUDA.
std::unique_ptr<DeviceCollectiveGroup> make_device_collectives(const std::vector<int>& devices);

/// The calling thread's CUDA device becomes `device` (every CUDA call of a rank runs on its thread).
void set_device(int device);
/// CUDA devices this process sees (0 without CUDA).
int device_count();
/// A device's PCI bus id ("0000:3B:00.0"), for its NUMA node (core/numa_node.h); empty if unknown.
std::string pci_bus_id(int device);

}  // namespace freekv::gpu
