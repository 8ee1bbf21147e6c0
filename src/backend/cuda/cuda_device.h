// cuda_device.h: CUDA availability probe for --device auto|cpu|cuda. Host-only declarations, no
// CUDA types, so the engine can include it in a CPU-only build through the stub in cuda_stub.cpp.
// Invariant: probe_cuda() never throws and never aborts when no driver or GPU exists.
#pragma once

#include <cstdint>
#include <string>

namespace freekv::cuda {

struct CudaProbe {
    bool available = false;
    int device_count = 0;
    std::string device_name;  // of device 0
    std::string reason;       // why CUDA is unavailable
};

CudaProbe probe_cuda();

/// Converts n bf16 values to fp32 on device 0 and back to the host (a self-test of the kernel
/// path); returns false with `error` set on failure.
bool convert_bf16_on_device(const uint16_t* src, float* dst, int n, std::string& error);

/// The current device's HBM read rate in GB/s (1e9 bytes per second): a 2 GiB streaming read
/// (hbm_probe.cu); 0 when the device cannot hold the buffer or the build has no CUDA.
double measure_hbm_read_gbps();

}  // namespace freekv::cuda
