// The int16-activation NF4 GEMV (nf4_gemv_q16.h) for AVX-512 with VNNI, over the same 64-byte
// groups of 128 weights as the exact grouped kernel (nf4_gemv_avx512.cpp).
//
// Word lane w of a group holds weights 4w .. 4w+3; shifting the vector right by 0 / 4 / 8 / 12
// bits brings weight 4w + 1 / 4w / 4w + 3 / 4w + 2 to the low nibble of every word, and vpermw
// (which reads the low 5 bits) looks all 32 up at once in the int16 code table, written twice.
// vpdpwssd then multiplies them with x (pre-permuted to match, q16_group_position) and adds word
// pairs into dword lanes: lane d collects weights 8d .. 8d+7, so lanes 0-7 hold the group's first
// 64-element chunk and lanes 8-15 the second, each scaled by its x scale and then its absmax.
// Per group: 1 load, 3 shifts, 4 permutes, 4 x loads, 4 vpdpwssd, a convert, a multiply and two
// masked FMAs.
// Integer sums stay exact: 8 products of |code| <= 2^14 and |x| <= 16383 per lane and group.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "base/buffer.h"
#include "quant/nf4_gemv_q16.h"
#include "quant/nf4_group_scales_avx512.h"
#include "quant/nf4_matmul.h"

namespace ecomllm::quant {

void gemv_q16_rows_avx512vnni(const NF4Matrix& W, const int16_t* table, const int16_t* xq, const float* xscale,
                              const float* bias, int64_t n0, int64_t n1, float* y) {
  alignas(64) int16_t table32[32];
  for (int i = 0; i < 32; ++i) table32[i] = table[i % 16];
  const __m512i codes = _mm512_load_si512(table32);
  // xs[16 g + i]: the x scale of lane i of group g (lanes 0-7: chunk 2 g, 8-15: chunk 2 g + 1).
  const int64_t groups = W.cols / kGroup;
  AlignedBuffer lane_xscale(sizeof(float) * 16 * groups);
  float* xs = lane_xscale.as<float>();
  for (int64_t g = 0; g < groups; ++g)
    _mm512_store_ps(xs + 16 * g,
                    _mm512_insertf32x8(_mm512_set1_ps(xscale[2 * g]), _mm256_set1_ps(xscale[2 * g + 1]), 1));
  walk_grouped_rows(W, bias, n0, n1, y, [&](const uint8_t* p, int64_t g) {
    const int16_t* xv = xq + g * kGroup;
    const __m512i v = _mm512_loadu_si512(p);
    __m512i acc =
        _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_permutexvar_epi16(v, codes), _mm512_loadu_si512(xv));
    acc = _mm512_dpwssd_epi32(acc, _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), codes),
                              _mm512_loadu_si512(xv + 32));
    acc = _mm512_dpwssd_epi32(acc, _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 8), codes),
                              _mm512_loadu_si512(xv + 64));
    acc = _mm512_dpwssd_epi32(acc, _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 12), codes),
                              _mm512_loadu_si512(xv + 96));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_load_ps(xs + 16 * g));
  });
}

}  // namespace ecomllm::quant
