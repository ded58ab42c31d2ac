// The product-table M = 1 kernel over the decode layout (nf4_decode_layout.h): the per-call tables
// of x and the walk. Built with AVX-512 VBMI + VNNI; called only where nf4_decode_kernel_available().
//
// Table layout, per octet o (columns 8 o .. 8 o + 7), digit d (0: low byte) and nibble h (0: the
// high nibble of each code byte = the even column, 1: the low nibble = the odd column): 64 bytes,
// entry 16 i + c = digit d of q(code c, column 8 o + 2 i + h). A code byte at byte i of its row's
// dword thus indexes entry (nibble | i << 4), which one ternary-logic op builds for all 64 bytes.
// Per 64-byte chunk (16 rows x 8 columns): 1 load, a shift, 2 ternary-logic ops, 6 vpermb and 6
// vpdpbusd (digit sums of each row's 4 bytes into int32); a supergroup's 4 chunks of an octet
// share the octet's 6 tables, held in registers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "quant/nf4_decode_layout.h"

namespace ecomllm::quant {
namespace {

constexpr int64_t kChunksPerOctet = kDecodeRows / 16;  // 4
constexpr int64_t kOctetsPerSegment = 8;               // 64 columns: one block scale
// Software prefetch distance in the code stream (to L2), one line per chunk. Measured on Zen 4
// streaming 1 GiB of 4096 x 4096 weights with 2 threads (benchmarks/probes/nf4_lut_gemv.cpp).
constexpr int64_t kPrefetchBytes = 16384;

}  // namespace

void nf4_build_product_tables(const float* code, const float* x, int64_t K, int64_t s0, int64_t s1, int8_t* tables,
                              float* xscale) {
  const __m512 codes = _mm512_loadu_ps(code);
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  for (int64_t s = s0; s < s1 && s < K / 64; ++s) {
    const float* xs = x + 64 * s;
    __m512 amax = _mm512_setzero_ps();
    for (int i = 0; i < 4; ++i) amax = _mm512_max_ps(amax, _mm512_and_ps(_mm512_loadu_ps(xs + 16 * i), abs_mask));
    const float xmax = _mm512_reduce_max_ps(amax);
    xscale[s] = xmax / kTableQMax;
    const float to_q = xmax == 0.0f ? 0.0f : static_cast<float>(static_cast<double>(kTableQMax) / xmax);
    for (int64_t e = 0; e < 64; ++e) {
      const int64_t k = 64 * s + e;
      // |code * x * to_q| <= kQMax (+ rounding): q fits 24 bits and its top digit an int8.
      const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(codes, _mm512_set1_ps(xs[e] * to_q)));
      const __m512i d0 = _mm512_srai_epi32(_mm512_slli_epi32(q, 24), 24);  // signed low byte
      const __m512i q1 = _mm512_srai_epi32(_mm512_sub_epi32(q, d0), 8);
      const __m512i d1 = _mm512_srai_epi32(_mm512_slli_epi32(q1, 24), 24);
      const __m512i d2 = _mm512_srai_epi32(_mm512_sub_epi32(q1, d1), 8);
      const int64_t octet = k / 8, i = (k % 8) / 2, nibble = k % 2;
      int8_t* at = tables + octet * kTableBytesPerOctet + nibble * 64 + i * 16;
      _mm_store_si128(reinterpret_cast<__m128i*>(at), _mm512_cvtepi32_epi8(d0));
      _mm_store_si128(reinterpret_cast<__m128i*>(at + 128), _mm512_cvtepi32_epi8(d1));
      _mm_store_si128(reinterpret_cast<__m128i*>(at + 256), _mm512_cvtepi32_epi8(d2));
    }
  }
}

void nf4_decode_rows(const NF4DecodeLayout& L, const int8_t* tables, const float* xscale, const float* bias,
                     int64_t g0, int64_t g1, float* y) {
  const int64_t K = L.cols, octets = K / 8, segments = K / 64;
  const __m512i ones = _mm512_set1_epi8(1);
  const __m512i low_nibble = _mm512_set1_epi8(0x0f);
  const __m512i byte_in_dword = _mm512_set1_epi32(0x30201000);  // (byte index i) << 4
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* group = L.codes.as<uint8_t>() + g * octets * 256;
    const float* absmax = L.absmax_t.as<float>() + g * segments * kDecodeRows;
    __m512 total[kChunksPerOctet];
    for (auto& t : total) t = _mm512_setzero_ps();
    for (int64_t s = 0; s < segments; ++s) {
      __m512i acc[kChunksPerOctet][3];
      for (auto& a : acc) a[0] = a[1] = a[2] = _mm512_setzero_si512();
      for (int64_t o = s * kOctetsPerSegment; o < (s + 1) * kOctetsPerSegment; ++o) {
        const int8_t* t = tables + o * kTableBytesPerOctet;
        __m512i tab[3][2];
        for (int d = 0; d < 3; ++d)
          for (int h = 0; h < 2; ++h) tab[d][h] = _mm512_load_si512(t + d * 128 + h * 64);
        const uint8_t* chunk = group + o * 256;
        for (int l = 0; l < kChunksPerOctet; ++l)
          _mm_prefetch(reinterpret_cast<const char*>(chunk) + kPrefetchBytes + 64 * l, _MM_HINT_T2);
#pragma GCC unroll 4
        for (int64_t r = 0; r < kChunksPerOctet; ++r) {
          const __m512i c = _mm512_load_si512(chunk + r * 64);
          const __m512i lo = _mm512_ternarylogic_epi32(c, low_nibble, byte_in_dword, 0xEA);  // (c & 15) | i << 4
          const __m512i hi = _mm512_ternarylogic_epi32(_mm512_srli_epi16(c, 4), low_nibble, byte_in_dword, 0xEA);
#pragma GCC unroll 3
          for (int d = 0; d < 3; ++d) {
            acc[r][d] = _mm512_dpbusd_epi32(acc[r][d], ones, _mm512_permutexvar_epi8(hi, tab[d][0]));
            acc[r][d] = _mm512_dpbusd_epi32(acc[r][d], ones, _mm512_permutexvar_epi8(lo, tab[d][1]));
          }
        }
      }
      const __m512 xs = _mm512_set1_ps(xscale[s]);
      for (int64_t r = 0; r < kChunksPerOctet; ++r) {
        // Digit sums of 64 columns: |sum q| <= 64 x 2^23, exact in int32.
        const __m512i q = _mm512_add_epi32(
            _mm512_add_epi32(_mm512_slli_epi32(acc[r][2], 16), _mm512_slli_epi32(acc[r][1], 8)), acc[r][0]);
        total[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q),
                                   _mm512_mul_ps(_mm512_load_ps(absmax + s * kDecodeRows + r * 16), xs), total[r]);
      }
    }
    for (int64_t r = 0; r < kChunksPerOctet; ++r) {
      const int64_t first = g * kDecodeRows + r * 16;
      if (first >= L.rows) break;
      const int64_t live_rows = std::min<int64_t>(16, L.rows - first);
      const __mmask16 live = static_cast<__mmask16>(live_rows == 16 ? 0xffff : (1u << live_rows) - 1u);
      __m512 out = total[r];
      if (bias) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(live, bias + first));
      _mm512_mask_storeu_ps(y + first, live, out);
    }
  }
}

}  // namespace ecomllm::quant
