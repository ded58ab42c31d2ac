// Driver and scalar reference of the int16-activation NF4 GEMV (see nf4_gemv_q16.h).
#include "quant/nf4_gemv_q16.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "base/buffer.h"
#include "base/cpu_features.h"
#include "base/error.h"
#include "base/parallel.h"
#include "quant/nf4_decode_layout.h"

namespace ecomllm::quant {

bool nf4_gemv_q16_supported(const NF4Matrix& W) {
  return W.cols % kQ16Chunk == 0 && W.blocksize % kQ16Chunk == 0 && W.code_within_unit();
}

namespace {

// Smallest non-zero chunk max |x| taken: above it 16383 / max is finite and the chunk's scale
// max / 2^28 a normal float (below, 16383 / max overflowed to inf: ~3x errors at 1e-35).
constexpr float kQ16MinChunkMax = 0x1p-90f;

// x[K] -> xq[K] (in the kernel's order: q16_position within each 64-chunk, or with `grouped`
// q16_group_position within each 128-group) and xscale[K / 64] such that x ~= xq * xscale * 2^14
// (the 2^14 undoes the code scale). False when x holds inf or NaN or a chunk whose max |x| is
// non-zero but below kQ16MinChunkMax (the caller then runs the row through the exact kernel).
bool quantize_activations(const float* x, int64_t K, int16_t* xq, float* xscale, bool grouped) {
  for (int64_t c0 = 0; c0 < K; c0 += kQ16Chunk) {
    float amax = 0.0f;
    bool finite = true;
    for (int64_t e = 0; e < kQ16Chunk; ++e) {
      const float a = std::fabs(x[c0 + e]);
      finite &= a <= std::numeric_limits<float>::max();  // false for inf and NaN (which std::max would skip)
      amax = std::max(amax, a);
    }
    if (!finite || (amax != 0.0f && amax < kQ16MinChunkMax)) return false;
    const float inv = amax > 0.0f ? static_cast<float>(kQ16XMax) / amax : 0.0f;
    for (int64_t e = 0; e < kQ16Chunk; ++e) {
      const long q = std::lrint(x[c0 + e] * inv);
      const int64_t k = c0 + e;
      const int64_t at = grouped ? k - k % 128 + q16_group_position(k % 128) : c0 + q16_position(e);
      xq[at] = static_cast<int16_t>(std::clamp<long>(q, -kQ16XMax, kQ16XMax));
    }
    xscale[c0 / kQ16Chunk] = amax / (static_cast<float>(kQ16XMax) * static_cast<float>(kQ16CodeScale));
  }
  return true;
}

}  // namespace

void gemv_q16_rows_scalar(const NF4Matrix& W, const int16_t* table, const int16_t* xq, const float* xscale,
                          const float* bias, int64_t n0, int64_t n1, float* y) {
  const int64_t K = W.cols, bs = W.blocksize;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = W.packed + n * (K / 2);
    float acc = 0.0f, scale = 0.0f;
    for (int64_t c0 = 0; c0 < K; c0 += kQ16Chunk) {
      const int64_t b = (n * K + c0) / bs;
      W.block_scales(b, b + 1, &scale);
      int64_t sum = 0;
      for (int64_t e = 0; e < kQ16Chunk; ++e) {
        const uint8_t byte = row[(c0 + e) / 2];
        const int code = (e % 2) ? (byte & 0x0f) : (byte >> 4);
        sum += static_cast<int64_t>(table[code]) * xq[c0 + q16_position(e)];
      }
      acc += static_cast<float>(sum) * (scale * xscale[c0 / kQ16Chunk]);
    }
    y[n] = acc + (bias ? bias[n] : 0.0f);
  }
}

void nf4_gemv_q16(const float* x, int64_t M, const NF4Matrix& W, const float* bias, float* y) {
  W.validate();
  ECOM_CHECK_ARG(M > 0, "nf4 gemv_q16: x has no rows");
  ECOM_CHECK_ARG(nf4_gemv_q16_supported(W), "nf4 gemv_q16: needs in_features and blocksize to be multiples of ",
                 kQ16Chunk, " and code values in [-1, 1]; got in_features ", W.cols, ", blocksize ", W.blocksize);
  const int64_t K = W.cols, N = W.rows;
  int16_t table[16];
  for (int c = 0; c < 16; ++c) table[c] = static_cast<int16_t>(std::lrint(W.code[c] * kQ16CodeScale));
  // AVX-512 with VNNI on 128-element groups; else AVX2 (64-element chunks); else the scalar reference.
  const bool grouped = simd_level() >= SimdLevel::AVX512 && cpu_features().avx512_vnni && K % 128 == 0;
  const Q16RowsKernel kernel = grouped                             ? gemv_q16_rows_avx512vnni
                               : simd_level() >= SimdLevel::AVX2 ? gemv_q16_rows_avx2
                                                                 : gemv_q16_rows_scalar;
  AlignedBuffer xq(sizeof(int16_t) * K), xscale(sizeof(float) * (K / kQ16Chunk));
  for (int64_t m = 0; m < M; ++m) {
    if (!quantize_activations(x + m * K, K, xq.as<int16_t>(), xscale.as<float>(), grouped)) {
      nf4_matmul(x + m * K, 1, W, bias, y + m * N);
      continue;
    }
    parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
      kernel(W, table, xq.as<int16_t>(), xscale.as<float>(), bias, n0, n1, y + m * N);
    });
  }
}

void nf4_matmul_int16(const float* x, int64_t M, const NF4Matrix& W, const float* bias, float* y,
                      const NF4DecodeLayout* decode) {
  W.validate(/*need_packed=*/!decode);
  ECOM_CHECK_ARG(M > 0, "nf4 matmul_int16: x has no rows");
  ECOM_CHECK_ARG(nf4_gemv_q16_supported(W), "nf4 matmul_int16: needs in_features and blocksize to be multiples of ",
                 kQ16Chunk, " and code values in [-1, 1]; got in_features ", W.cols, ", blocksize ", W.blocksize);
  if (decode) ECOM_CHECK_ARG(decode->rows == W.rows && decode->cols == W.cols, "nf4 matmul_int16: decode layout is of ",
                             "another shape");
  if (decode && nf4_decode_matmul(*decode, W.code, x, M, bias, y, kTableDigitsInt16)) return;
  AlignedBuffer restored;  // W's codes restored from `decode` when its owner released them
  nf4_gemv_q16(x, M, nf4_with_codes(W, decode, restored), bias, y);
}

}  // namespace ecomllm::quant
