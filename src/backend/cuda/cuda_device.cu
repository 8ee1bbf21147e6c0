// cuda_device.cu: the CUDA probe and a first sm_90 kernel (bf16 -> fp32), linked against the
// static CUDA runtime so that only the driver is needed at run time.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "backend/cuda/cuda_device.h"

namespace freekv::cuda {

namespace {

__global__ void bf16_to_f32_kernel(const __nv_bfloat16* src, float* dst, int n) {
    const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n) dst[i] = __bfloat162float(src[i]);
}

}  // namespace

CudaProbe probe_cuda() {
    CudaProbe p;
    const cudaError_t err = cudaGetDeviceCount(&p.device_count);
    if (err != cudaSuccess) {
        p.reason = cudaGetErrorString(err);
        p.device_count = 0;
        return p;
    }
    if (p.device_count == 0) {
        p.reason = "no CUDA device found";
        return p;
    }
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) p.device_name = prop.name;
    p.available = true;
    return p;
}

bool convert_bf16_on_device(const uint16_t* src, float* dst, int n, std::string& error) {
    __nv_bfloat16* d_src = nullptr;
    float* d_dst = nullptr;
    auto fail = [&](cudaError_t e) {
        error = cudaGetErrorString(e);
        cudaFree(d_src);
        cudaFree(d_dst);
        return false;
    };
    cudaError_t e = cudaMalloc(&d_src, sizeof(uint16_t) * static_cast<size_t>(n));
    if (e != cudaSuccess) return fail(e);
    e = cudaMalloc(&d_dst, sizeof(float) * static_cast<size_t>(n));
    if (e != cudaSuccess) return fail(e);
    e = cudaMemcpy(d_src, src, sizeof(uint16_t) * static_cast<size_t>(n), cudaMemcpyHostToDevice);
    if (e != cudaSuccess) return fail(e);
    bf16_to_f32_kernel<<<(n + 255) / 256, 256>>>(d_src, d_dst, n);
    e = cudaGetLastError();
    if (e != cudaSuccess) return fail(e);
    e = cudaMemcpy(dst, d_dst, sizeof(float) * static_cast<size_t>(n), cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) return fail(e);
    cudaFree(d_src);
    cudaFree(d_dst);
    return true;
}

}  // namespace freekv::cuda
