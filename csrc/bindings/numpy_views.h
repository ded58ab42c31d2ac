// numpy <-> core helpers for the bindings: validate an array (dtype, shape, contiguity) with a
// message that says what was expected, then view it without copying.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "base/error.h"
#include "base/tensor.h"

namespace ecomllm::bindings {

namespace py = pybind11;

// The core dtype of a numpy array; "bfloat16" arrays (ml_dtypes) map to BF16.
inline DType dtype_of(const py::array& a) {
  const py::dtype dt = a.dtype();
  // Built-in dtypes by identity first: the name lookup below costs a Python attribute access.
  if (dt.is(py::dtype::of<float>())) return DType::F32;
  if (dt.is(py::dtype::of<int64_t>())) return DType::I64;
  if (dt.is(py::dtype::of<int32_t>())) return DType::I32;
  if (dt.is(py::dtype::of<uint8_t>())) return DType::U8;
  const std::string name = py::str(dt.attr("name"));
  if (name == "bfloat16" && dt.itemsize() == 2) return DType::BF16;
  if (name == "float16") return DType::F16;
  throw ValueError("unsupported array dtype '" + name + "'");
}

// A view of a C-contiguous array of the given core dtype, whatever numpy dtype it carries (the
// caller checked it): shape and contiguity validated, element strides filled in.
inline TensorView raw_view(const py::array& a, DType dtype, const char* what) {
  ECOM_CHECK_ARG(a.flags() & py::array::c_style, what, ": expected a C-contiguous array (use numpy.ascontiguousarray)");
  ECOM_CHECK_ARG(a.ndim() <= TensorView::kMaxDims, what, ": at most ", TensorView::kMaxDims, " dimensions, got ",
                 a.ndim());
  TensorView v;
  v.data = const_cast<void*>(a.data());
  v.dtype = dtype;
  v.ndim = static_cast<int>(a.ndim());
  int64_t stride = 1;
  for (int i = v.ndim - 1; i >= 0; --i) {
    v.shape[i] = a.shape(i);
    v.strides[i] = stride;
    stride *= a.shape(i);
  }
  return v;
}

// A view of a C-contiguous array; `what` names the argument in error messages.
inline TensorView view_of(const py::array& a, const char* what) {
  DType dtype;
  try {
    dtype = dtype_of(a);
  } catch (const ValueError& e) {
    throw ValueError(std::string(what) + ": " + e.what());
  }
  return raw_view(a, dtype, what);
}

// A 16-bit float array given as its uint16 bit patterns (numpy has no bfloat16 dtype).
inline TensorView bits16_view(const py::array& a, DType dtype, const char* what) {
  ECOM_CHECK_ARG(a.dtype().is(py::dtype::of<uint16_t>()), what, ": expected uint16 bit patterns, got dtype ",
                 std::string(py::str(a.dtype())));
  return raw_view(a, dtype, what);
}

// A view of a contiguous array of the given dtype and (when ndim >= 0) number of dimensions.
inline TensorView expect_array(const py::array& a, DType dtype, int ndim, const char* what) {
  TensorView v = view_of(a, what);
  v.expect_dtype(dtype, what);
  if (ndim >= 0) v.expect_ndim(ndim, what);
  return v;
}

// A new uninitialised numpy array of T with the given shape.
template <typename T>
py::array_t<T> new_array(const std::vector<int64_t>& shape) {
  std::vector<py::ssize_t> dims(shape.begin(), shape.end());
  return py::array_t<T>(dims);
}

}  // namespace ecomllm::bindings
