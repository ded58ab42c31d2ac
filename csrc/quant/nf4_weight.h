// An owning NF4 matrix W[rows, cols] in bitsandbytes layout (see nf4.h). NF4Matrix (nf4_matmul.h) is
// the non-owning view the kernels take; NF4Weight keeps the arrays alive and hands out that view.
#pragma once

#include <cstdint>
#include <span>

#include "base/buffer.h"
#include "base/tensor.h"
#include "quant/nf4_matmul.h"

namespace ecomllm::quant {

class NF4Weight {
 public:
  NF4Weight() = default;
  NF4Weight(NF4Weight&&) noexcept = default;
  NF4Weight& operator=(NF4Weight&&) noexcept = default;

  // w: [rows, cols] F32/F16/BF16 contiguous, finite. Same rules and bytes as ecomllm.quant
  // NF4Tensor.quantize: first-level absmax, then (double_quant) offset = absmax_mean and 8-bit codes
  // of absmax - offset with bitsandbytes' dynamic map. ValueError on a bad shape, dtype or blocksize.
  static NF4Weight quantize(const TensorView& w, int64_t blocksize = 64, bool double_quant = true);

  // From bitsandbytes state arrays (copied): packed [(rows*cols+1)/2], code [16]; plain absmax [nblocks]
  // OR (qabsmax [nblocks], nested_absmax [ceil(nblocks/256)], nested_code [256], offset). The span
  // overload checks every size; the pointer overload trusts the caller for sizes (it still checks the
  // shape, blocksize, which scale form is given and that the fp32 values are finite). ValueError.
  static NF4Weight from_bnb(int64_t rows, int64_t cols, int64_t blocksize, std::span<const uint8_t> packed,
                            std::span<const float> code, std::span<const float> absmax,
                            std::span<const uint8_t> qabsmax, std::span<const float> nested_absmax,
                            std::span<const float> nested_code, float offset);
  static NF4Weight from_bnb(int64_t rows, int64_t cols, int64_t blocksize, const uint8_t* packed, const float* code,
                            const float* absmax, const uint8_t* qabsmax, const float* nested_absmax,
                            const float* nested_code, float offset);

  NF4Matrix view() const { return m_; }
  int64_t rows() const { return m_.rows; }
  int64_t cols() const { return m_.cols; }
  int64_t blocksize() const { return m_.blocksize; }
  bool double_quant() const { return m_.qabsmax != nullptr; }
  int64_t num_blocks() const { return m_.num_blocks(); }
  // Bytes of storage: packed codes + code book + scales (+ nested scales and nested code book),
  // counted like NF4Tensor.nbytes.
  int64_t nbytes() const;
  // out [rows, cols] fp32 = code[q] * absmax (multi-threaded over blocks).
  void dequantize(float* out) const;
  // Deep copy (the class is move-only so that copies are explicit).
  NF4Weight clone() const;

 private:
  NF4Matrix m_;  // points into the buffers below
  AlignedBuffer packed_, code_, absmax_, qabsmax_, nested_absmax_, nested_code_;
};

}  // namespace ecomllm::quant
