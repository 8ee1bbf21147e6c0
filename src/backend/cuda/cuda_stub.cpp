// cuda_stub.cpp: the probe in a build without CUDA (FREEKV_CUDA=OFF or no nvcc).
#include "backend/cuda/cuda_device.h"

namespace freekv::cuda {

CudaProbe probe_cuda() {
    CudaProbe p;
    p.reason = "this build has no CUDA backend (FREEKV_CUDA=OFF or nvcc was not found)";
    return p;
}

bool convert_bf16_on_device(const uint16_t*, float*, int, std::string& error) {
    error = probe_cuda().reason;
    return false;
}

double measure_hbm_read_gbps() { return 0.0; }

}  // namespace freekv::cuda
