// Non-owning tensor views: pointer + dtype + shape + strides (in elements, row-major order).
// Views are how arrays cross module boundaries inside the core (the bindings build them from
// numpy buffers without copying). Nothing here allocates.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "base/error.h"

namespace ecomllm {

enum class DType : uint8_t { F32, F16, BF16, U8, I32, I64 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::U8: return 1;
    case DType::I32: return 4;
    case DType::I64: return 8;
  }
  return 0;
}

constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::U8: return "uint8";
    case DType::I32: return "int32";
    case DType::I64: return "int64";
  }
  return "?";
}

struct TensorView {
  static constexpr int kMaxDims = 8;

  void* data = nullptr;
  DType dtype = DType::F32;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};    // [ndim]
  std::array<int64_t, kMaxDims> strides{};  // [ndim], in elements

  // A contiguous view over `data` with the given shape.
  static TensorView contiguous(void* data, DType dtype, std::initializer_list<int64_t> dims) {
    TensorView v;
    v.data = data;
    v.dtype = dtype;
    ECOM_CHECK_ARG(dims.size() <= kMaxDims, "at most ", kMaxDims, " dimensions are supported");
    for (int64_t d : dims) v.shape[v.ndim++] = d;
    int64_t s = 1;
    for (int i = v.ndim - 1; i >= 0; --i) {
      v.strides[i] = s;
      s *= v.shape[i];
    }
    return v;
  }

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  int64_t nbytes() const { return numel() * static_cast<int64_t>(dtype_size(dtype)); }

  bool is_contiguous() const {
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != s) return false;
      s *= shape[i];
    }
    return true;
  }

  std::string shape_str() const {
    std::string out = "(";
    for (int i = 0; i < ndim; ++i) out += std::to_string(shape[i]) + (i + 1 < ndim || ndim == 1 ? "," : "");
    return out + ")";
  }

  template <typename T> T* ptr() const { return static_cast<T*>(data); }

  // Precondition helpers: throw ValueError naming `what` and what was expected.
  void expect_dtype(DType want, const char* what) const {
    ECOM_CHECK_ARG(dtype == want, what, ": expected dtype ", dtype_name(want), ", got ", dtype_name(dtype));
  }
  void expect_ndim(int want, const char* what) const {
    ECOM_CHECK_ARG(ndim == want, what, ": expected ", want, " dimensions, got shape ", shape_str());
  }
  void expect_contiguous(const char* what) const {
    ECOM_CHECK_ARG(is_contiguous(), what, ": expected a C-contiguous array (use numpy.ascontiguousarray)");
  }
};

}  // namespace ecomllm
