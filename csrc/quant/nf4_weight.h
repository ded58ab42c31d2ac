// An owning NF4 matrix W[rows, cols] in bitsandbytes layout (see nf4.h). NF4Matrix (nf4_matmul.h) is
// the non-owning view the kernels take; NF4Weight keeps the arrays alive and hands out that view.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "base/buffer.h"
#include "base/tensor.h"
#include "quant/nf4_decode_layout.h"
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

  // The kernels' view. Its `packed` is null after prepare_decoding(true, false) (pass
  // decode_layout() along: nf4_matmul / nf4_matmul_t restore what they need from it).
  NF4Matrix view() const { return m_; }
  // Token-by-token decoding (quant/nf4_decode_layout.h). enabled: builds the decode layout where
  // this shape and CPU support it and returns whether it exists; keep_codes = false then releases
  // the packed codes, which the layout also holds (-4 bits per weight held: the layout's ~4.13
  // (VBMI, double-quantized; 4.5 otherwise) + the scale state instead of 8.6), at the cost of a transient restore of them in the paths that read
  // bitsandbytes' layout (backward, dequantize, clone, state, AMX products; the FMA forward GEMM
  // reads its panels from the layout). keep_codes = true on a weight whose codes were released
  // restores them. enabled = false restores released codes and drops the layout.
  bool prepare_decoding(bool enabled, bool keep_codes = true);
  const NF4DecodeLayout* decode_layout() const { return decode_.get(); }
  int64_t decoding_nbytes() const { return decode_ ? decode_->nbytes() : 0; }
  bool holds_codes() const { return m_.packed != nullptr; }
  // bitsandbytes' packed codes [rows * cols / 2]: the held ones (storage untouched), or restored
  // from the decode layout into storage.
  const uint8_t* packed_codes(AlignedBuffer& storage) const;
  int64_t rows() const { return m_.rows; }
  int64_t cols() const { return m_.cols; }
  int64_t blocksize() const { return m_.blocksize; }
  bool double_quant() const { return m_.qabsmax != nullptr; }
  int64_t num_blocks() const { return m_.num_blocks(); }
  // Bytes of storage: packed codes (0 once released) + code book + scales (+ nested scales and
  // nested code book); the decode layout is counted apart (decoding_nbytes).
  int64_t nbytes() const;
  // out [rows, cols] fp32 = code[q] * absmax (multi-threaded over blocks).
  void dequantize(float* out) const;
  // Deep copy (the class is move-only so that copies are explicit).
  NF4Weight clone() const;

 private:
  NF4Matrix m_;  // points into the buffers below (packed: null once released)
  AlignedBuffer packed_, code_, absmax_, qabsmax_, nested_absmax_, nested_code_;
  std::shared_ptr<const NF4DecodeLayout> decode_;  // immutable once built: clones share it
};

}  // namespace ecomllm::quant
