// NF4 GEMV with int16 activations ("q16") for token-by-token decoding.
//
// The exact M = 1 kernel (nf4_matmul) looks every weight up as an fp32 value: on AVX2 that is
// two 8-entry permutes and a blend per 8 weights, which caps it near 3 weights per cycle per core
// -- below what DRAM delivers. Here the lookup is a byte shuffle of 32 codes at once: the 16 code
// values become int16 (code * 2^14, exact to 3e-5 of a block's absmax), x is rounded to int16 per
// 64 elements (to 3e-5 of the chunk's largest |x|), and products are summed exactly in int32
// with vpmaddwd. One fp32 multiply-add per 64 weights applies absmax * x-scale. Results differ
// from the fp32 kernel by ~1e-4 relative (see tests/python/test_nf4_gemv_q16.py), an order below
// NF4's own rounding of the weights; the exact kernel remains the default everywhere.
//
// Overflow bound: a chunk adds 8 products per int32 lane, |code| <= 2^14 and |x| <= 16383, so
// |sum| <= 8 * 2^14 * 16383 < 2^31.
#pragma once

#include <cstdint>

#include "quant/nf4_matmul.h"

namespace ecomllm::quant {

constexpr int64_t kQ16Chunk = 64;         // x elements per int16 scale; also weights per kernel step
constexpr int32_t kQ16CodeScale = 16384;  // code value c in [-1, 1] -> round(c * 2^14)
constexpr int32_t kQ16XMax = 16383;       // x -> round(x / max|x_chunk| * 16383)

// W qualifies when every 64-element chunk of a row lies in one absmax block and one packed run:
// cols % 64 == 0, blocksize % 64 == 0, and every code value in [-1, 1].
bool nf4_gemv_q16_supported(const NF4Matrix& W);

// y[M, N] = x[M, K] @ dequant(W)^T (+ bias) with int16 activations (M small: one pass over W per
// row of x). Throws ValueError when !nf4_gemv_q16_supported(W); a row of x holding inf or NaN
// runs through the exact kernel instead (so non-finite values propagate as they would there), as
// does a row with a 64-element chunk whose max |x| is below 2^-90 but not 0.
void nf4_gemv_q16(const float* x, int64_t M, const NF4Matrix& W, const float* bias, float* y);

// The int16-activation product of a weight that may have a decode layout (quant/nf4_decode_layout.h;
// W.packed may then be null): where the layout's kernel runs, its tables with 16-bit products
// (two digits: each code * x rounded to 2^-15 of its 64-column segment's largest |x|, ~6e-5 of
// max |y| as here; 4 lookups and 4 dot products per 64 bytes instead of 6 and 6, 1.25-1.4x the
// exact table kernel cache-hot on Zen 4); else nf4_gemv_q16 over
// W's codes (restored from the layout for the call when released). Same preconditions as
// nf4_gemv_q16.
void nf4_matmul_int16(const float* x, int64_t M, const NF4Matrix& W, const float* bias, float* y,
                      const NF4DecodeLayout* decode);

// Position of element e (0..63) of a chunk in the kernels' x order: the AVX2 decode unpacks the
// even elements (high nibbles) of bytes j = 0..31 as words in the order j = 0-7, 16-23, 8-15,
// 24-31, then the odd elements (low nibbles) the same way.
constexpr int64_t q16_position(int64_t e) {
  const int64_t j = e / 2;
  return (e % 2) * 32 + (j & 7) + ((j >> 4) & 1) * 8 + ((j >> 3) & 1) * 16;
}

// Leaf kernel: y[n] = sum over chunks c of scale(n, c) * sum_e table[code(n, e)] * xq[e] (+ bias[n])
// for n in [n0, n1), where scale(n, c) = absmax(block of n, c) * xscale[c]. xq is [K] in
// q16_position order per chunk, xscale [K / 64], table the 16 int16 code values.
using Q16RowsKernel = void (*)(const NF4Matrix& W, const int16_t* table, const int16_t* xq, const float* xscale,
                               const float* bias, int64_t n0, int64_t n1, float* y);
void gemv_q16_rows_scalar(const NF4Matrix& W, const int16_t* table, const int16_t* xq, const float* xscale,
                          const float* bias, int64_t n0, int64_t n1, float* y);
void gemv_q16_rows_avx2(const NF4Matrix& W, const int16_t* table, const int16_t* xq, const float* xscale,
                        const float* bias, int64_t n0, int64_t n1, float* y);

// The AVX-512 VNNI kernel reads 128-element groups (needs in_features % 128 == 0) with x in this
// order per group: word lane e / 4 of x vector (e % 4) ^ 1 (see nf4_gemv_q16_avx512vnni.cpp).
constexpr int64_t q16_group_position(int64_t e) { return 32 * ((e % 4) ^ 1) + e / 4; }
void gemv_q16_rows_avx512vnni(const NF4Matrix& W, const int16_t* table, const int16_t* xq, const float* xscale,
                              const float* bias, int64_t n0, int64_t n1, float* y);

}  // namespace ecomllm::quant
