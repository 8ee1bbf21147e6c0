// bf16_device.cuh: element conversions for device code: bf16 (stored as uint16_t) <-> fp32, the
// same calls for fp32 elements (the engine's `--gpu-dtype f32` stores KV, summaries and weights as
// fp32), and the page summary built on them. Kernels that touch KV are templates over the element
// type T (uint16_t = bf16, or float) and use to_f32 / from_f32<T> / load_x4 only.
// Invariant: float_to_bf16 rounds to nearest even exactly as f32_to_bf16 in core/dtype.h, and keeps
// NaNs quiet, so device-made summaries and blocks are bit-identical to the CPU path's.
#pragma once

#include <cstdint>

namespace freekv::cuda {

__device__ inline float bf16_to_float(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }

__device__ inline uint16_t float_to_bf16(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}

/// `dims` (<= 4) consecutive bf16 at p, widened into out[0, 4) (zeros past dims): one 8- or 4-byte
/// load for 4 or 2 elements, so p must be aligned to that (rows start at multiples of head_dim).
__device__ __forceinline__ void load_bf16x4(const uint16_t* p, int dims, float out[4]) {
    if (dims == 4) {
        const uint2 w = *reinterpret_cast<const uint2*>(p);
        out[0] = __uint_as_float(w.x << 16), out[1] = __uint_as_float(w.x & 0xffff0000u);
        out[2] = __uint_as_float(w.y << 16), out[3] = __uint_as_float(w.y & 0xffff0000u);
    } else if (dims == 2) {
        const uint32_t w = *reinterpret_cast<const uint32_t*>(p);
        out[0] = __uint_as_float(w << 16), out[1] = __uint_as_float(w & 0xffff0000u);
        out[2] = out[3] = 0.0f;
    } else {
        for (int d = 0; d < 4; ++d) out[d] = d < dims ? bf16_to_float(p[d]) : 0.0f;
    }
}

/// The 8 bf16 of a 16-byte load, widened to fp32 in order.
__device__ __forceinline__ void unpack_bf16x8(uint4 w, float out[8]) {
    const uint32_t u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        out[2 * i] = __uint_as_float(u[i] << 16);
        out[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    }
}

__device__ __forceinline__ float to_f32(uint16_t b) { return bf16_to_float(b); }
__device__ __forceinline__ float to_f32(float f) { return f; }
template <class T>
__device__ __forceinline__ T from_f32(float f);
template <>
__device__ __forceinline__ uint16_t from_f32<uint16_t>(float f) { return float_to_bf16(f); }
template <>
__device__ __forceinline__ float from_f32<float>(float f) { return f; }

/// `dims` (<= 4) consecutive elements at p widened into out[0, 4): load_bf16x4, or for fp32 one
/// 16- or 8-byte load (p aligned to it).
__device__ __forceinline__ void load_x4(const uint16_t* p, int dims, float out[4]) { load_bf16x4(p, dims, out); }
__device__ __forceinline__ void load_x4(const float* p, int dims, float out[4]) {
    if (dims == 4) {
        const float4 w = *reinterpret_cast<const float4*>(p);
        out[0] = w.x, out[1] = w.y, out[2] = w.z, out[3] = w.w;
    } else if (dims == 2) {
        const float2 w = *reinterpret_cast<const float2*>(p);
        out[0] = w.x, out[1] = w.y, out[2] = out[3] = 0.0f;
    } else {
        for (int d = 0; d < 4; ++d) out[d] = d < dims ? p[d] : 0.0f;
    }
}

/// Summary of one KV head's keys of a page (design doc 3.3), computed by the block's threads over
/// the head dimension: keys[r * row_stride + i] for rows r < page_size; writes upper bounds to
/// summary[0, head_dim) and lower bounds to summary[head_dim, 2 head_dim). minmax, or cuboid
/// (centre +- mean absolute deviation). fp32 math, T storage, as retrieval/selection.cpp.
template <class T>
__device__ inline void summarize_keys(const T* keys, int64_t row_stride, int page_size, int head_dim, bool cuboid,
                                      T* summary) {
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float mx = -INFINITY, mn = INFINITY;
        for (int r = 0; r < page_size; ++r) {
            const float x = to_f32(keys[r * row_stride + i]);
            mx = fmaxf(mx, x);
            mn = fminf(mn, x);
        }
        float upper = mx, lower = mn;
        if (cuboid) {
            const float centre = (mx + mn) / 2.0f;
            float deviation = 0.0f;
            for (int r = 0; r < page_size; ++r) deviation += fabsf(to_f32(keys[r * row_stride + i]) - centre);
            deviation /= static_cast<float>(page_size);
            upper = centre + deviation;
            lower = centre - deviation;
        }
        summary[i] = from_f32<T>(upper);
        summary[head_dim + i] = from_f32<T>(lower);
    }
}

/// Calls f(T{}) with T the KV element type of `elem_bytes` (2: bf16 as uint16_t, 4: float), so that
/// a launcher instantiates its kernel for the element type chosen at run time.
template <class F>
inline void by_elem(int elem_bytes, F&& f) {
    if (elem_bytes == 4) f(float{});
    else f(uint16_t{});
}

}  // namespace freekv::cuda
