// weight.h: a non-owning view of one stored tensor (weights used in place, from a file map).
// Invariants: `data` points at dtype_row_bytes(dtype, shape.back()) * rows bytes of valid memory
// for as long as the TensorSource that produced it lives; shape is outermost dimension first
// (PyTorch order), so a linear weight is [n_out, n_in] and row r is contiguous.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace freekv {

struct WeightView {
    std::string name;
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;  // outermost first
    const void* data = nullptr;

    int64_t numel() const {
        int64_t n = 1;
        for (int64_t d : shape) n *= d;
        return n;
    }
    int64_t rows() const { return shape.size() <= 1 ? 1 : numel() / shape.back(); }
    int64_t cols() const { return shape.empty() ? 1 : shape.back(); }
    int64_t row_bytes() const { return dtype_row_bytes(dtype, cols()); }
    const uint8_t* row(int64_t r) const { return static_cast<const uint8_t*>(data) + r * row_bytes(); }
};

}  // namespace freekv
