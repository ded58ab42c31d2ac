// Scalar reference kernels for NF4 matmul: plain loops, no intrinsics. Every SIMD level is
// tested against these. Also home of the shared NF4Matrix helpers and the generic tile decoder.
#include <algorithm>
#include <cstring>

#include "base/error.h"
#include "quant/nf4.h"
#include "quant/nf4_kernels_common.h"
#include "quant/nf4_matmul.h"

namespace ecomllm::quant {

void NF4Matrix::block_scales(int64_t b0, int64_t b1, float* out) const {
  if (absmax) {
    std::memcpy(out, absmax + b0, sizeof(float) * (b1 - b0));
    return;
  }
  for (int64_t b = b0; b < b1; ++b) out[b - b0] = absmax_double_dequantize_one(qabsmax, nested_absmax, nested_code, offset, b);
}

void NF4Matrix::validate(bool need_packed) const {
  ECOM_CHECK_ARG(rows > 0 && cols > 0, "NF4 matrix: rows and cols must be positive, got ", rows, "x", cols);
  ECOM_CHECK_ARG(nf4_blocksize_valid(blocksize), "NF4 matrix: invalid blocksize ", blocksize);
  ECOM_CHECK_ARG((packed || !need_packed) && code, "NF4 matrix: missing packed codes or code book");
  ECOM_CHECK_ARG((absmax != nullptr) != (qabsmax != nullptr), "NF4 matrix: exactly one of absmax / qabsmax must be set");
  ECOM_CHECK_ARG(absmax || (nested_absmax && nested_code), "NF4 matrix: double quantization needs nested_absmax and nested_code");
}

void nf4_dequant_tile_generic(const NF4Matrix& W, int64_t n0, int64_t n1, int64_t k0, int64_t k1, float* out,
                              int64_t ldo) {
  const int64_t K = W.cols, bs = W.blocksize;
  float scale = 0.0f;
  for (int64_t n = n0; n < n1; ++n) {
    float* dst = out + (n - n0) * ldo - k0;
    const int64_t row_start = n * K;
    for (int64_t k = k0; k < k1;) {  // one block segment at a time
      const int64_t b = (row_start + k) / bs;
      const int64_t seg_end = std::min(k1, (b + 1) * bs - row_start);
      W.block_scales(b, b + 1, &scale);
      for (; k < seg_end; ++k) {
        const int64_t i = row_start + k;
        const uint8_t byte = W.packed[i >> 1];
        dst[k] = W.code[(i & 1) ? (byte & 0x0f) : (byte >> 4)] * scale;
      }
    }
  }
}

namespace {

constexpr int kMR = 4, kNR = 4, kTMR = 4, kTKR = 8;

// Needs K % 32 == 0 (see NF4Matrix::rows_group_aligned), so every row starts on a byte.
void gemv_rows(const NF4Matrix& W, const float* x_even, const float* x_odd, const float* bias, int64_t n0, int64_t n1,
               float* y) {
  const int64_t K = W.cols, bs = W.blocksize;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = W.packed + n * (K / 2);
    const int64_t row_start = n * K;
    float acc = 0.0f;
    for (int64_t k = 0; k < K;) {
      const int64_t b = (row_start + k) / bs;
      const int64_t seg_end = std::min(K, (b + 1) * bs - row_start);
      float scale;
      W.block_scales(b, b + 1, &scale);
      for (int64_t j = k / 2; j < seg_end / 2; ++j)
        acc += W.code[row[j] >> 4] * scale * x_even[j] + W.code[row[j] & 0x0f] * scale * x_odd[j];
      k = seg_end;
    }
    y[n] = acc + (bias ? bias[n] : 0.0f);
  }
}

void gemm_tile(int64_t kc, const float* xp, const float* wp, float* y, int64_t ldy, int mv, int nv, bool accumulate) {
  for (int i = 0; i < mv; ++i)
    for (int j = 0; j < nv; ++j) {
      float s = 0.0f;
      for (int64_t k = 0; k < kc; ++k) s += xp[k * kMR + i] * wp[k * kNR + j];
      y[i * ldy + j] = accumulate ? y[i * ldy + j] + s : s;
    }
}

void pack_panel(const float* rows, int64_t ld, int64_t kc, float* panel) {
  for (int64_t k = 0; k < kc; ++k)
    for (int j = 0; j < kNR; ++j) panel[k * kNR + j] = rows[j * ld + k];
}

void pack_x_panel(const float* x, int64_t K, int mv, float* panel) {
  for (int64_t k = 0; k < K; ++k)
    for (int i = 0; i < kMR; ++i) panel[k * kMR + i] = i < mv ? x[i * K + k] : 0.0f;
}

void gemm_t_tile(int64_t nc, const float* dyp, const float* w, int64_t ldw, float* dx, int64_t ldx, int mv, int kv,
                 bool accumulate) {
  for (int i = 0; i < mv; ++i)
    for (int k = 0; k < kv; ++k) {
      float s = 0.0f;
      for (int64_t n = 0; n < nc; ++n) s += dyp[n * kTMR + i] * w[n * ldw + k];
      dx[i * ldx + k] = accumulate ? dx[i * ldx + k] + s : s;
    }
}

}  // namespace

const NF4Kernels& nf4_kernels_scalar() {
  static const NF4Kernels k{SimdLevel::Scalar, kMR, kNR, kTMR, kTKR, gemv_rows, nf4_dequant_tile_generic, gemm_tile, gemm_t_tile, pack_panel, pack_x_panel, nullptr};
  return k;
}

}  // namespace ecomllm::quant
