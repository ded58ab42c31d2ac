// The int16-activation NF4 GEMV (nf4_gemv_q16.h) for AVX-512 with VNNI, over the same 64-byte
// groups of 128 weights as the exact grouped kernel (nf4_gemv_avx512.cpp).
//
// Word lane w of a group holds weights 4w .. 4w+3; shifting the vector right by 0 / 4 / 8 / 12
// bits brings weight 4w + 1 / 4w / 4w + 3 / 4w + 2 to the low nibble of every word, and vpermw
// (which reads the low 5 bits) looks all 32 up at once in the int16 code table, written twice.
// vpdpwssd then multiplies them with x (pre-permuted to match, q16_group_position) and adds word
// pairs into dword lanes: lane d collects weights 8d .. 8d+7, so lanes 0-7 hold the group's first
// 64-element chunk and lanes 8-15 the second, each scaled by absmax x x-scale at the end.
// Per group: 1 load, 3 shifts, 4 permutes, 4 x loads, 4 vpdpwssd, a convert and an FMA.
// Integer sums stay exact: 8 products of |code| <= 2^14 and |x| <= 16383 per lane and group.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "quant/nf4_gemv_q16.h"
#include "quant/nf4_group_scales_avx512.h"
#include "quant/nf4_matmul.h"

namespace ecomllm::quant {

void gemv_q16_rows_avx512vnni(const NF4Matrix& W, const int16_t* table, const int16_t* xq, const float* xscale,
                              const float* bias, int64_t n0, int64_t n1, float* y) {
  alignas(64) int16_t table32[32];
  for (int i = 0; i < 32; ++i) table32[i] = table[i % 16];
  const __m512i codes = _mm512_load_si512(table32);
  walk_grouped_rows(
      W, bias, n0, n1, y,
      [&](int64_t g0, int64_t count, __m512 scales) {  // absmax x x-scale of chunks 2 g0 + i
        const __mmask16 live = static_cast<__mmask16>((1u << (2 * count)) - 1u);
        return _mm512_mul_ps(scales, _mm512_maskz_loadu_ps(live, xscale + 2 * g0));
      },
      [&](const uint8_t* p, int64_t g) {
        const int16_t* xv = xq + g * kGroup;
        const __m512i v = _mm512_loadu_si512(p);
        __m512i acc = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_permutexvar_epi16(v, codes),
                                          _mm512_loadu_si512(xv));
        acc = _mm512_dpwssd_epi32(acc, _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), codes),
                                  _mm512_loadu_si512(xv + 32));
        acc = _mm512_dpwssd_epi32(acc, _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 8), codes),
                                  _mm512_loadu_si512(xv + 64));
        acc = _mm512_dpwssd_epi32(acc, _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 12), codes),
                                  _mm512_loadu_si512(xv + 96));
        return _mm512_cvtepi32_ps(acc);
      });
}

}  // namespace ecomllm::quant
