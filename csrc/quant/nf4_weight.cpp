#include "quant/nf4_weight.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "base/error.h"
#include "quant/nf4.h"

namespace ecomllm::quant {
namespace {

template <typename T>
AlignedBuffer copy_of(const T* src, int64_t n) {
  AlignedBuffer b(sizeof(T) * static_cast<size_t>(n));
  if (n > 0) std::memcpy(b.data(), src, sizeof(T) * static_cast<size_t>(n));
  return b;
}

void check_shape(int64_t rows, int64_t cols, int64_t blocksize) {
  ECOM_CHECK_ARG(rows > 0 && cols > 0, "NF4 weight: shape must be positive, got (", rows, ", ", cols, ")");
  ECOM_CHECK_ARG(rows <= (int64_t{1} << 62) / cols, "NF4 weight: shape (", rows, ", ", cols, ") is too large");
  ECOM_CHECK_ARG(nf4_blocksize_valid(blocksize), "NF4 weight: blocksize must be a power of two in [32, 4096], got ",
                 blocksize);
}

void check_finite(const float* p, int64_t n, const char* what) {
  for (int64_t i = 0; i < n; ++i)
    ECOM_CHECK_ARG(std::isfinite(p[i]), "NF4 weight: ", what, " value ", i, " is not finite (", p[i], ")");
}

int64_t nested_blocks(int64_t nblocks) { return (nblocks + kNestedBlocksize - 1) / kNestedBlocksize; }

}  // namespace

NF4Weight NF4Weight::quantize(const TensorView& w, int64_t blocksize, bool double_quant) {
  w.expect_ndim(2, "NF4 weight");
  w.expect_contiguous("NF4 weight");
  ECOM_CHECK_ARG(w.dtype == DType::F32 || w.dtype == DType::F16 || w.dtype == DType::BF16,
                 "NF4 weight: expected float32, float16 or bfloat16, got ", dtype_name(w.dtype));
  check_shape(w.shape[0], w.shape[1], blocksize);
  NF4Weight q;
  q.m_.rows = w.shape[0];
  q.m_.cols = w.shape[1];
  q.m_.blocksize = blocksize;
  const int64_t n = q.m_.numel(), nb = q.m_.num_blocks();
  q.packed_ = AlignedBuffer::with_huge_pages(static_cast<size_t>(nf4_packed_bytes(n)), false);  // streamed by the GEMV
  AlignedBuffer absmax(sizeof(float) * nb);
  nf4_quantize(w, blocksize, q.packed_.as<uint8_t>(), absmax.as<float>());
  q.code_ = copy_of(kNF4Codebook, 16);
  if (double_quant) {
    q.m_.offset = absmax_mean(absmax.as<float>(), nb);
    q.qabsmax_ = AlignedBuffer(static_cast<size_t>(nb));
    q.nested_absmax_ = AlignedBuffer(sizeof(float) * nested_blocks(nb));
    absmax_double_quantize(absmax.as<float>(), nb, q.m_.offset, dynamic_map_8bit(), q.qabsmax_.as<uint8_t>(),
                           q.nested_absmax_.as<float>());
    q.nested_code_ = copy_of(dynamic_map_8bit(), 256);
  } else {
    q.absmax_ = std::move(absmax);
  }
  q.m_.packed = q.packed_.as<uint8_t>();
  q.m_.code = q.code_.as<float>();
  q.m_.absmax = double_quant ? nullptr : q.absmax_.as<float>();
  q.m_.qabsmax = double_quant ? q.qabsmax_.as<uint8_t>() : nullptr;
  q.m_.nested_absmax = double_quant ? q.nested_absmax_.as<float>() : nullptr;
  q.m_.nested_code = double_quant ? q.nested_code_.as<float>() : nullptr;
  q.m_.validate();
  return q;
}

NF4Weight NF4Weight::from_bnb(int64_t rows, int64_t cols, int64_t blocksize, const uint8_t* packed, const float* code,
                              const float* absmax, const uint8_t* qabsmax, const float* nested_absmax,
                              const float* nested_code, float offset) {
  check_shape(rows, cols, blocksize);
  ECOM_CHECK_ARG(packed && code, "NF4 weight: packed codes and the code book are required");
  ECOM_CHECK_ARG((absmax != nullptr) != (qabsmax != nullptr), "NF4 weight: give exactly one of absmax or qabsmax");
  ECOM_CHECK_ARG(!qabsmax || (nested_absmax && nested_code),
                 "NF4 weight: double quantization needs nested_absmax and nested_code");
  const int64_t n = rows * cols, nb = nf4_num_blocks(n, blocksize);
  NF4Weight q;
  q.m_.rows = rows;
  q.m_.cols = cols;
  q.m_.blocksize = blocksize;
  q.packed_ = AlignedBuffer::with_huge_pages(static_cast<size_t>(nf4_packed_bytes(n)), false);
  std::memcpy(q.packed_.data(), packed, static_cast<size_t>(nf4_packed_bytes(n)));
  q.code_ = copy_of(code, 16);
  check_finite(code, 16, "code");
  q.m_.packed = q.packed_.as<uint8_t>();
  q.m_.code = q.code_.as<float>();
  if (absmax) {
    check_finite(absmax, nb, "absmax");
    q.absmax_ = copy_of(absmax, nb);
    q.m_.absmax = q.absmax_.as<float>();
  } else {
    check_finite(nested_absmax, nested_blocks(nb), "nested_absmax");
    check_finite(nested_code, 256, "nested_code");
    ECOM_CHECK_ARG(std::isfinite(offset), "NF4 weight: offset is not finite (", offset, ")");
    q.qabsmax_ = copy_of(qabsmax, nb);
    q.nested_absmax_ = copy_of(nested_absmax, nested_blocks(nb));
    q.nested_code_ = copy_of(nested_code, 256);
    q.m_.qabsmax = q.qabsmax_.as<uint8_t>();
    q.m_.nested_absmax = q.nested_absmax_.as<float>();
    q.m_.nested_code = q.nested_code_.as<float>();
    q.m_.offset = offset;
  }
  q.m_.validate();
  return q;
}

NF4Weight NF4Weight::from_bnb(int64_t rows, int64_t cols, int64_t blocksize, std::span<const uint8_t> packed,
                              std::span<const float> code, std::span<const float> absmax,
                              std::span<const uint8_t> qabsmax, std::span<const float> nested_absmax,
                              std::span<const float> nested_code, float offset) {
  check_shape(rows, cols, blocksize);
  const int64_t n = rows * cols, nb = nf4_num_blocks(n, blocksize);
  auto expect = [](size_t got, int64_t want, const char* what) {
    ECOM_CHECK_ARG(static_cast<int64_t>(got) == want, "NF4 weight: ", what, ": expected ", want, " values, got ", got);
  };
  expect(packed.size(), nf4_packed_bytes(n), "packed");
  expect(code.size(), 16, "code");
  const bool dq = !qabsmax.empty();
  ECOM_CHECK_ARG(absmax.empty() == dq, "NF4 weight: give exactly one of absmax or qabsmax");
  if (dq) {
    expect(qabsmax.size(), nb, "qabsmax");
    expect(nested_absmax.size(), nested_blocks(nb), "nested_absmax");
    expect(nested_code.size(), 256, "nested_code");
  } else {
    expect(absmax.size(), nb, "absmax");
  }
  return from_bnb(rows, cols, blocksize, packed.data(), code.data(), dq ? nullptr : absmax.data(),
                  dq ? qabsmax.data() : nullptr, dq ? nested_absmax.data() : nullptr,
                  dq ? nested_code.data() : nullptr, offset);
}

int64_t NF4Weight::nbytes() const {
  return static_cast<int64_t>(packed_.size() + code_.size() + absmax_.size() + qabsmax_.size() +
                              nested_absmax_.size() + nested_code_.size());
}

void NF4Weight::dequantize(float* out) const {
  AlignedBuffer restored;
  const uint8_t* packed = packed_codes(restored);
  std::vector<float> scales(static_cast<size_t>(m_.num_blocks()));
  m_.block_scales(0, m_.num_blocks(), scales.data());
  nf4_dequantize(packed, scales.data(), m_.code, m_.numel(), m_.blocksize, out);  // multi-threaded
}

const uint8_t* NF4Weight::packed_codes(AlignedBuffer& storage) const {
  return nf4_with_codes(m_, decode_.get(), storage).packed;
}

bool NF4Weight::prepare_decoding(bool enabled, bool keep_codes) {
  DecodeLayoutKind kind{};
  const bool keep_layout = enabled && nf4_decode_layout_useful(m_, &kind);
  const bool stale = keep_layout && decode_ && decode_->kind != kind;  // built for another SIMD level
  if (!holds_codes() && (!keep_layout || keep_codes || stale)) {  // the codes come back before the layout may go
    packed_ = AlignedBuffer::with_huge_pages(static_cast<size_t>(nf4_packed_bytes(m_.numel())), false);
    nf4_restore_packed(*decode_, packed_.as<uint8_t>());
    m_.packed = packed_.as<uint8_t>();
  }
  if (!keep_layout || stale) decode_.reset();
  if (!keep_layout) return false;
  if (!decode_) decode_ = std::make_shared<const NF4DecodeLayout>(nf4_build_decode_layout(m_, kind));
  if (!keep_codes && holds_codes()) {
    packed_ = AlignedBuffer();
    m_.packed = nullptr;
  }
  return true;
}

NF4Weight NF4Weight::clone() const {
  AlignedBuffer restored;
  NF4Weight c = from_bnb(m_.rows, m_.cols, m_.blocksize, packed_codes(restored), m_.code, m_.absmax, m_.qabsmax,
                         m_.nested_absmax, m_.nested_code, m_.offset);
  c.decode_ = decode_;
  if (!holds_codes()) {
    c.packed_ = AlignedBuffer();
    c.m_.packed = nullptr;
  }
  return c;
}

}  // namespace ecomllm::quant
