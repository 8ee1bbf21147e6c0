// bf16_device.cuh: bf16 <-> fp32 bit conversions for device code (bf16 stored as uint16_t) and the
// page summary built on them.
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

/// Summary of one KV head's keys of a page (design doc 3.3), computed by the block's threads over
/// the head dimension: keys[r * row_stride + i] for rows r < page_size; writes upper bounds to
/// summary[0, head_dim) and lower bounds to summary[head_dim, 2 head_dim). minmax, or cuboid
/// (centre +- mean absolute deviation). fp32 math, bf16 storage, as retrieval/selection.cpp.
__device__ inline void summarize_keys(const uint16_t* keys, int64_t row_stride, int page_size, int head_dim, bool cuboid,
                                      uint16_t* summary) {
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float mx = -INFINITY, mn = INFINITY;
        for (int r = 0; r < page_size; ++r) {
            const float x = bf16_to_float(keys[r * row_stride + i]);
            mx = fmaxf(mx, x);
            mn = fminf(mn, x);
        }
        float upper = mx, lower = mn;
        if (cuboid) {
            const float centre = (mx + mn) / 2.0f;
            float deviation = 0.0f;
            for (int r = 0; r < page_size; ++r) deviation += fabsf(bf16_to_float(keys[r * row_stride + i]) - centre);
            deviation /= static_cast<float>(page_size);
            upper = centre + deviation;
            lower = centre - deviation;
        }
        summary[i] = float_to_bf16(upper);
        summary[head_dim + i] = float_to_bf16(lower);
    }
}

}  // namespace freekv::cuda
