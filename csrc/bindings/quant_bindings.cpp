// Bindings for csrc/quant: NF4 quantize / dequantize, double quantization, fused matmuls.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <memory>
#include <optional>

#include "base/buffer.h"
#include "base/half.h"
#include "bindings/numpy_views.h"
#include "quant/nf4.h"
#include "quant/nf4_decode_layout.h"
#include "quant/nf4_gemv_q16.h"
#include "quant/nf4_matmul.h"

namespace ecomllm::bindings {
namespace {

using quant::NF4Matrix;

void expect_finite(const float* p, int64_t n, const char* what) {
  for (int64_t i = 0; i < n; ++i)
    ECOM_CHECK_ARG(std::isfinite(p[i]), what, ": value ", i, " is not finite (", p[i], ")");
}

// The input of quantize as a view: float32, float16, ml_dtypes.bfloat16, or uint16 bf16 bits.
TensorView quantize_input(const py::array& x, bool bf16_bits) {
  if (bf16_bits) return bits16_view(x, DType::BF16, "x");
  TensorView v = view_of(x, "x");
  ECOM_CHECK_ARG(v.dtype == DType::F32 || v.dtype == DType::F16 || v.dtype == DType::BF16,
                 "x: expected float32, float16 or bfloat16, got ", dtype_name(v.dtype));
  return v;
}

// Owns references to the numpy arrays of one NF4 weight and a core view over them.
class PyNF4Matrix {
 public:
  PyNF4Matrix(py::array packed, int64_t rows, int64_t cols, int64_t blocksize, py::array code,
              std::optional<py::array> absmax, std::optional<py::array> qabsmax,
              std::optional<py::array> nested_absmax, std::optional<py::array> nested_code, double offset)
      : packed_(std::move(packed)), code_(std::move(code)) {
    ECOM_CHECK_ARG(rows > 0 && cols > 0, "shape must be positive, got (", rows, ", ", cols, ")");
    ECOM_CHECK_ARG(rows <= (int64_t{1} << 62) / cols, "shape (", rows, ", ", cols, ") is too large");
    ECOM_CHECK_ARG(quant::nf4_blocksize_valid(blocksize), "blocksize must be a power of two in [32, 4096], got ", blocksize);
    m_.rows = rows;
    m_.cols = cols;
    m_.blocksize = blocksize;
    const int64_t n = rows * cols, nb = m_.num_blocks();
    const TensorView pv = view_of(py::reinterpret_borrow<py::array>(packed_), "packed");
    pv.expect_dtype(DType::U8, "packed");
    ECOM_CHECK_ARG(pv.numel() == quant::nf4_packed_bytes(n), "packed: expected ", quant::nf4_packed_bytes(n),
                   " bytes for shape (", rows, ", ", cols, "), got ", pv.numel());
    m_.packed = pv.ptr<const uint8_t>();
    const TensorView cv = expect_array(code_, DType::F32, 1, "quant_map");
    ECOM_CHECK_ARG(cv.numel() == 16, "quant_map: expected 16 values, got ", cv.numel());
    expect_finite(cv.ptr<const float>(), 16, "quant_map");
    m_.code = cv.ptr<const float>();
    ECOM_CHECK_ARG(absmax.has_value() != qabsmax.has_value(), "give exactly one of absmax or qabsmax");
    if (absmax) {
      absmax_ = *absmax;
      const TensorView av = expect_array(absmax_, DType::F32, 1, "absmax");
      ECOM_CHECK_ARG(av.numel() == nb, "absmax: expected ", nb, " blocks, got ", av.numel());
      expect_finite(av.ptr<const float>(), nb, "absmax");
      m_.absmax = av.ptr<const float>();
    } else {
      ECOM_CHECK_ARG(nested_absmax && nested_code, "double quantization needs nested_absmax and nested_quant_map");
      qabsmax_ = *qabsmax;
      nested_absmax_ = *nested_absmax;
      nested_code_ = *nested_code;
      const TensorView qv = expect_array(qabsmax_, DType::U8, 1, "absmax (8-bit)");
      ECOM_CHECK_ARG(qv.numel() == nb, "absmax (8-bit): expected ", nb, " blocks, got ", qv.numel());
      const int64_t nn = (nb + quant::kNestedBlocksize - 1) / quant::kNestedBlocksize;
      const TensorView nv = expect_array(nested_absmax_, DType::F32, 1, "nested_absmax");
      ECOM_CHECK_ARG(nv.numel() == nn, "nested_absmax: expected ", nn, " values, got ", nv.numel());
      expect_finite(nv.ptr<const float>(), nn, "nested_absmax");
      const TensorView ncv = expect_array(nested_code_, DType::F32, 1, "nested_quant_map");
      ECOM_CHECK_ARG(ncv.numel() == 256, "nested_quant_map: expected 256 values, got ", ncv.numel());
      expect_finite(ncv.ptr<const float>(), 256, "nested_quant_map");
      ECOM_CHECK_ARG(std::isfinite(static_cast<float>(offset)), "nested_offset ", offset, " is not finite as a float32");
      m_.qabsmax = qv.ptr<const uint8_t>();
      m_.nested_absmax = nv.ptr<const float>();
      m_.nested_code = ncv.ptr<const float>();
      m_.offset = static_cast<float>(offset);
    }
    m_.validate();
  }

  // x [..., K] float32 or bfloat16 -> y [..., N] float32.
  // int16_activations: nf4_matmul_int16 (quant/nf4_gemv_q16.h: the decode layout's two-digit
  // tables where there is one, else the q16 GEMV) instead of the exact fp32 kernels.
  py::array_t<float> matmul(const py::array& x, std::optional<py::array> bias, bool bf16_bits,
                            bool int16_activations) const {
    if (int16_activations)
      ECOM_CHECK_ARG(quant::nf4_gemv_q16_supported(m_), "int16 activations need in_features and blocksize to be ",
                     "multiples of ", quant::kQ16Chunk, "; this weight has in_features ", m_.cols, ", blocksize ",
                     m_.blocksize);
    const float* bias_ptr = nullptr;
    if (bias) {
      const TensorView bv = expect_array(*bias, DType::F32, 1, "bias");
      ECOM_CHECK_ARG(bv.numel() == m_.rows, "bias: expected ", m_.rows, " values, got ", bv.numel());
      bias_ptr = bv.ptr<const float>();
    }
    // References taken under the GIL keep the decode layout and the packed codes alive through
    // the kernel, even if another thread drops or releases them meanwhile (prepare_decoding).
    const Codes codes = current_codes();
    return product(x, bf16_bits, "x", m_.cols, m_.rows, [&](const float* in, int64_t M, float* out) {
      if (int16_activations) {
        quant::nf4_matmul_int16(in, M, codes.W, bias_ptr, out, codes.decode.get());
      } else {
        quant::nf4_matmul(in, M, codes.W, bias_ptr, out, nullptr, codes.decode.get());
      }
    });
  }

  // Builds the decode layout (quant/nf4_decode_layout.h) when this weight and CPU support it;
  // returns whether matmul now uses it for up to 16 rows of x. keep_codes=false then releases
  // the packed codes (the layout holds them too); keep_codes=true brings released codes back.
  // enabled=false drops the layout (restoring released codes first).
  bool prepare_decoding(bool enabled, bool keep_codes) {
    quant::DecodeLayoutKind kind{};
    const bool keep_layout = enabled && quant::nf4_decode_layout_useful(m_, &kind);
    // A layout built for another SIMD level (set_simd_level) is rebuilt for this one.
    const bool stale = keep_layout && decode_ && decode_->kind != kind;
    if (!holds_codes() && (!keep_layout || keep_codes || stale)) {
      py::array packed = restored_codes();
      m_.packed = static_cast<const uint8_t*>(packed.data());
      packed_ = std::move(packed);  // under the GIL, like every change below: matmul copies them under it
    }
    if (!keep_layout || stale) decode_.reset();
    if (!keep_layout) return false;
    if (!decode_) {
      std::shared_ptr<quant::NF4DecodeLayout> built;
      const Codes codes = current_codes();  // keeps the packed codes alive if another thread releases them
      {
        py::gil_scoped_release release;
        built = std::make_shared<quant::NF4DecodeLayout>(quant::nf4_build_decode_layout(codes.W, kind));
      }
      if (!decode_) decode_ = std::move(built);  // another thread may have built one meanwhile
    }
    if (!keep_codes && holds_codes()) {
      packed_ = py::none();
      m_.packed = nullptr;
    }
    return true;
  }
  int64_t decoding_nbytes() const { return decode_ ? decode_->nbytes() : 0; }
  bool holds_codes() const { return m_.packed != nullptr; }

  // bitsandbytes' packed codes: the held array itself, or a copy restored from the decode layout.
  py::array packed_codes() const {
    return holds_codes() ? py::reinterpret_borrow<py::array>(packed_) : restored_codes();
  }

  // dy [..., N] float32 or bfloat16 -> dx [..., K] float32.
  py::array_t<float> matmul_t(const py::array& dy, bool bf16_bits) const {
    const Codes codes = current_codes();
    return product(dy, bf16_bits, "dy", m_.rows, m_.cols, [&](const float* in, int64_t M, float* out) {
      quant::nf4_matmul_t(in, M, codes.W, out, false, nullptr, codes.decode.get());
    });
  }

  py::array_t<float> dequantize() const {
    const Codes codes = current_codes();
    auto out = new_array<float>({m_.rows, m_.cols});
    float* dst = out.mutable_data();
    py::gil_scoped_release release;
    AlignedBuffer restored;
    const NF4Matrix W = quant::nf4_with_codes(codes.W, codes.decode.get(), restored);
    std::vector<float> scales(W.num_blocks());
    W.block_scales(0, W.num_blocks(), scales.data());
    quant::nf4_dequantize(W.packed, scales.data(), W.code, W.numel(), W.blocksize, dst);
    return out;
  }

  py::array_t<float> block_scales() const {
    auto out = new_array<float>({m_.num_blocks()});
    m_.block_scales(0, m_.num_blocks(), out.mutable_data());
    return out;
  }

  const quant::NF4Matrix& matrix() const { return m_; }
  int64_t rows() const { return m_.rows; }
  int64_t cols() const { return m_.cols; }

 private:
  std::shared_ptr<const quant::NF4DecodeLayout> decode_;  // the optional repacked copy for decoding
  static TensorView activation_view(const py::array& a, bool bf16_bits, int64_t last_dim, const char* what) {
    TensorView v;
    if (bf16_bits) {
      v = bits16_view(a, DType::BF16, what);
    } else {
      v = view_of(a, what);
      ECOM_CHECK_ARG(v.dtype == DType::F32 || v.dtype == DType::BF16, what, ": expected float32 or bfloat16, got ",
                     dtype_name(v.dtype));
    }
    ECOM_CHECK_ARG(v.ndim >= 1 && v.shape[v.ndim - 1] == last_dim, what, ": expected shape (..., ", last_dim,
                   "), got ", v.shape_str());
    ECOM_CHECK_ARG(v.numel() > 0, what, ": is empty");
    return v;
  }

  // Validates input [..., in_dim], allocates output [..., out_dim] and runs
  // kernel(input_f32, rows, output) without the GIL (bf16 input is widened to fp32 first).
  template <typename Kernel>
  static py::array_t<float> product(const py::array& input, bool bf16_bits, const char* what, int64_t in_dim,
                                    int64_t out_dim, Kernel&& kernel) {
    const TensorView v = activation_view(input, bf16_bits, in_dim, what);
    std::vector<int64_t> out_shape(v.shape.begin(), v.shape.begin() + v.ndim);
    out_shape.back() = out_dim;
    auto out = new_array<float>(out_shape);
    float* out_ptr = out.mutable_data();
    {
      py::gil_scoped_release release;
      AlignedBuffer converted;
      kernel(as_f32(v, converted), v.numel() / in_dim, out_ptr);
    }
    return out;
  }

  // fp32 pointer to the activations; bf16 input is widened into `storage` (exact).
  static const float* as_f32(const TensorView& v, AlignedBuffer& storage) {
    if (v.dtype == DType::F32) return v.ptr<const float>();
    storage = AlignedBuffer(sizeof(float) * v.numel());
    const uint16_t* src = v.ptr<const uint16_t>();
    float* dst = storage.as<float>();
    for (int64_t i = 0; i < v.numel(); ++i) dst[i] = bf16_to_f32(src[i]);
    return dst;
  }

  // A consistent snapshot for one kernel call, taken under the GIL: the view, and references
  // that keep its packed codes (None once released) and decode layout alive without the GIL.
  struct Codes {
    NF4Matrix W;
    py::object packed;
    std::shared_ptr<const quant::NF4DecodeLayout> decode;
  };
  Codes current_codes() const { return Codes{m_, packed_, decode_}; }

  // A new numpy array of the packed codes restored from the decode layout (which must exist),
  // filled without the GIL.
  py::array restored_codes() const {
    auto packed = new_array<uint8_t>({quant::nf4_packed_bytes(m_.numel())});
    uint8_t* dst = packed.mutable_data();
    const std::shared_ptr<const quant::NF4DecodeLayout> decode = decode_;
    {
      py::gil_scoped_release release;
      quant::nf4_restore_packed(*decode, dst);
    }
    return packed;
  }

  NF4Matrix m_;
  py::object packed_;  // numpy uint8 array, or None once prepare_decoding(keep_codes=false) released it
  py::array code_, absmax_, qabsmax_, nested_absmax_, nested_code_;
};

}  // namespace

void bind_quant(py::module_& m) {
  m.def("nf4_codebook", [] {
    auto out = new_array<float>({16});
    std::copy(quant::kNF4Codebook, quant::kNF4Codebook + 16, out.mutable_data());
    return out;
  }, "The 16 NF4 code values (bitsandbytes quant_map).");
  m.def("dynamic_map_8bit", [] {
    auto out = new_array<float>({256});
    std::copy(quant::dynamic_map_8bit(), quant::dynamic_map_8bit() + 256, out.mutable_data());
    return out;
  }, "bitsandbytes' signed 8-bit dynamic map (create_dynamic_map()), used for double quantization.");

  m.def("nf4_quantize", [](const py::array& x, int64_t blocksize, bool bf16_bits) {
    const TensorView v = quantize_input(x, bf16_bits);
    const int64_t n = v.numel();
    ECOM_CHECK_ARG(n > 0, "x: is empty");
    ECOM_CHECK_ARG(quant::nf4_blocksize_valid(blocksize), "blocksize must be a power of two in [32, 4096], got ", blocksize);
    auto packed = new_array<uint8_t>({quant::nf4_packed_bytes(n)});
    auto absmax = new_array<float>({quant::nf4_num_blocks(n, blocksize)});
    uint8_t* p = packed.mutable_data();
    float* a = absmax.mutable_data();
    {
      py::gil_scoped_release release;
      quant::nf4_quantize(v, blocksize, p, a);
    }
    return py::make_tuple(packed, absmax);
  }, py::arg("x"), py::arg("blocksize") = 64, py::arg("bf16_bits") = false,
     "Blockwise NF4 quantization (bitsandbytes rules). Returns (packed uint8[(n+1)//2], absmax float32[nblocks]).");

  m.def("absmax_mean", [](const py::array& absmax) {
    const TensorView v = expect_array(absmax, DType::F32, 1, "absmax");
    return quant::absmax_mean(v.ptr<const float>(), v.numel());
  }, py::arg("absmax"), "Double-quantization offset: mean of absmax (exact mean rounded to float32).");

  m.def("quantize_blockwise_8bit", [](const py::array& x, int64_t blocksize, const py::array& code) {
    const TensorView xv = expect_array(x, DType::F32, 1, "x");
    const TensorView cv = expect_array(code, DType::F32, 1, "code");
    ECOM_CHECK_ARG(cv.numel() == 256, "code: expected 256 values, got ", cv.numel());
    ECOM_CHECK_ARG(blocksize > 0, "blocksize must be positive");
    auto q = new_array<uint8_t>({xv.numel()});
    auto absmax = new_array<float>({quant::nf4_num_blocks(xv.numel(), blocksize)});
    uint8_t* qp = q.mutable_data();
    float* ap = absmax.mutable_data();
    {
      py::gil_scoped_release release;
      quant::quantize_blockwise_8bit(xv.ptr<const float>(), xv.numel(), blocksize, cv.ptr<const float>(), qp, ap);
    }
    return py::make_tuple(q, absmax);
  }, py::arg("x"), py::arg("blocksize"), py::arg("code"),
     "bitsandbytes' 8-bit blockwise quantization (CPU rules). Returns (codes uint8[n], absmax float32[nblocks]).");

  m.def("absmax_double_quantize", [](const py::array& absmax, double offset) {
    const TensorView av = expect_array(absmax, DType::F32, 1, "absmax");
    const int64_t nb = av.numel();
    ECOM_CHECK_ARG(nb > 0, "absmax: is empty");
    ECOM_CHECK_ARG(std::isfinite(static_cast<float>(offset)), "offset ", offset, " is not finite as a float32");
    auto q = new_array<uint8_t>({nb});
    auto nested = new_array<float>({(nb + quant::kNestedBlocksize - 1) / quant::kNestedBlocksize});
    uint8_t* qp = q.mutable_data();
    float* np_ = nested.mutable_data();
    {
      py::gil_scoped_release release;
      quant::absmax_double_quantize(av.ptr<const float>(), nb, static_cast<float>(offset), quant::dynamic_map_8bit(), qp, np_);
    }
    return py::make_tuple(q, nested);
  }, py::arg("absmax"), py::arg("offset"),
     "8-bit double quantization of absmax - offset (blocksize 256, dynamic map). Returns (qabsmax, nested_absmax).");

  py::class_<PyNF4Matrix>(m, "NF4Matrix", "A 4-bit NF4 weight W[rows, cols] with fused matmul kernels.")
      .def(py::init<py::array, int64_t, int64_t, int64_t, py::array, std::optional<py::array>, std::optional<py::array>,
                    std::optional<py::array>, std::optional<py::array>, double>(),
           py::arg("packed"), py::arg("rows"), py::arg("cols"), py::arg("blocksize"), py::arg("code"),
           py::arg("absmax") = py::none(), py::arg("qabsmax") = py::none(), py::arg("nested_absmax") = py::none(),
           py::arg("nested_code") = py::none(), py::arg("offset") = 0.0)
      .def("matmul", &PyNF4Matrix::matmul, py::arg("x"), py::arg("bias") = py::none(), py::arg("bf16_bits") = false,
           py::arg("int16_activations") = false,
           "y[..., N] = x[..., K] @ dequant(W)^T (+ bias). GIL released. int16_activations: the int16-activation "
           "GEMV (x rounded per 64 elements; ~1e-4 relative difference; for a few rows of x).")
      .def("prepare_decoding", &PyNF4Matrix::prepare_decoding, py::arg("enabled") = true,
           py::arg("keep_codes") = true,
           "Build (or with enabled=False drop) the decode layout that the product-table kernel (1-16 rows of x) "
           "and the forward GEMM read; returns whether matmul uses it (needs in_features and blocksize multiples "
           "of 64, and AVX-512 VBMI + VNNI at the avx512 level). keep_codes=False releases the packed codes (the "
           "layout holds them).")
      .def_property_readonly("holds_codes", &PyNF4Matrix::holds_codes,
                             "Whether the packed codes are held (False after prepare_decoding(keep_codes=False)).")
      .def("packed_codes", &PyNF4Matrix::packed_codes,
           "bitsandbytes' packed codes: the held array, or a copy restored from the decode layout.")
      .def_property_readonly("decoding_nbytes", &PyNF4Matrix::decoding_nbytes,
                             "Bytes held by the decode layout (0 when none).")
      .def_property_readonly("supports_int16_activations",
                             [](const PyNF4Matrix& self) { return quant::nf4_gemv_q16_supported(self.matrix()); })
      .def("matmul_t", &PyNF4Matrix::matmul_t, py::arg("dy"), py::arg("bf16_bits") = false,
           "dx[..., K] = dy[..., N] @ dequant(W). GIL released.")
      .def("dequantize", &PyNF4Matrix::dequantize, "The fp32 weight [rows, cols].")
      .def("block_scales", &PyNF4Matrix::block_scales, "The fp32 scale of every block (double quantization undone).")
      .def_property_readonly("rows", &PyNF4Matrix::rows)
      .def_property_readonly("cols", &PyNF4Matrix::cols);
}

}  // namespace ecomllm::bindings
