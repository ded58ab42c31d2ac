// The product-table M = 1 kernel over the decode layout (nf4_decode_layout.h): the per-call tables
// of x and the walk. Built with AVX-512 VBMI + VNNI; called only where
// nf4_decode_kernel_available(DecodeLayoutKind::kVbmi).
//
// Table layout, per octet o (columns 8 o .. 8 o + 7; D digits x 128 bytes, D = 3 exact or 2 for
// int16 activations), digit d (0: low byte) and nibble h (0: the high nibble of each code byte =
// the even column, 1: the low nibble = the odd column): 64 bytes, entry 16 i + c = digit d of
// q(code c, column 8 o + 2 i + h). A code byte at byte i of its row's dword thus indexes entry
// (nibble | i << 4), which one ternary-logic op builds for all 64 bytes. Per 64-byte chunk (16 rows
// x 8 columns): 1 load, a shift, 2 ternary-logic ops, 2 x D vpermb and 2 x D vpdpbusd (digit sums
// of each row's 4 bytes into int32); a supergroup's 4 chunks of an octet share the octet's 2 x D
// tables, held in registers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "base/error.h"
#include "quant/nf4_decode_layout.h"

namespace ecomllm::quant {
namespace {

constexpr int64_t kChunksPerOctet = kDecodeRows / 16;  // 4
constexpr int64_t kOctetsPerSegment = 8;               // 64 columns: one block scale
constexpr int64_t kPrefetchBytes = kDecodePrefetchBytes;

}  // namespace

bool nf4_product_tables_usable(const float* x, int64_t K) {
  // 16 lanes at a time (K % 64 == 0); a NaN fails the <= FLT_MAX test, an inf exceeds it.
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  const __m512 finite_max = _mm512_set1_ps(std::numeric_limits<float>::max());
  for (int64_t s = 0; s < K; s += 64) {
    __m512 amax = _mm512_setzero_ps();
    for (int64_t i = 0; i < 4; ++i) {
      const __m512 a = _mm512_and_ps(_mm512_loadu_ps(x + s + 16 * i), abs_mask);
      if (_mm512_cmp_ps_mask(a, finite_max, _CMP_LE_OQ) != 0xFFFF) return false;  // inf or NaN
      amax = _mm512_max_ps(amax, a);
    }
    const float xmax = _mm512_reduce_max_ps(amax);
    if (xmax != 0.0f && xmax < kMinSegmentMax) return false;
  }
  return true;
}

namespace {

template <int D>
void build_tables(const float* code, const float* x, int64_t K, int64_t s0, int64_t s1, int8_t* tables,
                  float* xscale) {
  constexpr float kQMax = table_qmax(D);
  constexpr int64_t kOctetBytes = D * 128;
  const __m512 codes = _mm512_loadu_ps(code);
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  // Signed digits q = d0 + 2^8 d1 (+ 2^16 d2), all but the top one in [-128, 127], are the bytes of
  // u = q + 0x80 (+ 0x8000) with the top bits of all but the top byte flipped. Byte p of the 4 x 16
  // values u[i][c] -> entry 16 i + c of a table: two two-source byte permutes (columns i = 0, 1 and
  // i = 2, 3) and a blend.
  alignas(64) static const auto kPlaneIndex = [] {
    struct { uint8_t idx[3][64]; } t{};
    for (int p = 0; p < 3; ++p)
      for (int j = 0; j < 64; ++j) t.idx[p][j] = static_cast<uint8_t>(((j / 16) % 2) * 64 + 4 * (j % 16) + p);
    return t;
  }();
  const __m512i bias = _mm512_set1_epi32(D == 3 ? 0x8080 : 0x80);
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t s = s0; s < s1 && s < K / 64; ++s) {
    const float* xs = x + 64 * s;
    __m512 amax = _mm512_setzero_ps();
    for (int i = 0; i < 4; ++i) amax = _mm512_max_ps(amax, _mm512_and_ps(_mm512_loadu_ps(xs + 16 * i), abs_mask));
    const float xmax = _mm512_reduce_max_ps(amax);
    xscale[s] = xmax / kQMax;
    const float to_q = xmax == 0.0f ? 0.0f : static_cast<float>(static_cast<double>(kQMax) / xmax);
    for (int64_t oo = 0; oo < 8; ++oo)
      for (int64_t nibble = 0; nibble < 2; ++nibble) {  // 0: even columns (high nibbles), 1: odd
        __m512i u[4];
        for (int64_t i = 0; i < 4; ++i) {
          // |code * x * to_q| <= kQMax (+ rounding): q fits 24 bits and its top digit an int8.
          const float xq = xs[8 * oo + 2 * i + nibble] * to_q;
          u[i] = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(codes, _mm512_set1_ps(xq))), bias);
        }
        int8_t* at = tables + (8 * s + oo) * kOctetBytes + nibble * 64;
        for (int p = 0; p < D; ++p) {
          const __m512i idx = _mm512_load_si512(kPlaneIndex.idx[p]);
          __m512i plane = _mm512_mask_blend_epi8(0xFFFFFFFF00000000ull, _mm512_permutex2var_epi8(u[0], idx, u[1]),
                                                 _mm512_permutex2var_epi8(u[2], idx, u[3]));
          if (p < D - 1) plane = _mm512_xor_si512(plane, flip);
          _mm512_store_si512(at + p * 128, plane);
        }
      }
  }
}

template <int D>
void decode_rows(const NF4DecodeLayout& L, const int8_t* tables, const float* xscale, const float* bias, int64_t g0,
                 int64_t g1, float* y) {
  constexpr int64_t kOctetBytes = D * 128;
  const int64_t K = L.cols, segments = K / 64;
  const __m512i ones = _mm512_set1_epi8(1);
  const __m512i low_nibble = _mm512_set1_epi8(0x0f);
  const __m512i byte_in_dword = _mm512_set1_epi32(0x30201000);  // (byte index i) << 4
  // Block by block (the layout's segment order): segment s of each of the block's supergroups in
  // [g0, g1) in turn, so that the codes stream in order and segment s's tables (3 KiB) come from
  // L1 for all of them. Each supergroup's fp32 sums wait in `totals` meanwhile.
  ECOM_CHECK(L.block >= 1 && L.block <= kVbmiSegmentBlock, "nf4 decode layout: block ", L.block);
  alignas(64) float totals[kVbmiSegmentBlock][kDecodeRows];
  for (int64_t b0 = g0; b0 < g1;) {
    const int64_t b1 = std::min(g1, (b0 / L.block + 1) * L.block);
    std::fill(&totals[0][0], &totals[0][0] + (b1 - b0) * kDecodeRows, 0.0f);
    for (int64_t s = 0; s < segments; ++s) {
      const __m512 xs = _mm512_set1_ps(xscale[s]);
      for (int64_t g = b0; g < b1; ++g) {
        const uint8_t* segment = L.segment(g, s);
        __m512i acc[kChunksPerOctet][D];
        for (auto& a : acc)
          for (auto& d : a) d = _mm512_setzero_si512();
        for (int64_t oo = 0; oo < kOctetsPerSegment; ++oo) {
          const int8_t* t = tables + (s * kOctetsPerSegment + oo) * kOctetBytes;
          __m512i tab[D][2];
          for (int d = 0; d < D; ++d)
            for (int h = 0; h < 2; ++h) tab[d][h] = _mm512_load_si512(t + d * 128 + h * 64);
          const uint8_t* chunk = segment + oo * 256;
          // One line ahead per line read; the last octet also covers the segment's scale lines.
          for (int l = 0; l < kChunksPerOctet; ++l)
            _mm_prefetch(reinterpret_cast<const char*>(chunk) + kPrefetchBytes + 64 * l, _MM_HINT_T1);
          if (oo == kOctetsPerSegment - 1)
            for (int l = 0; l < kChunksPerOctet; ++l)
              _mm_prefetch(reinterpret_cast<const char*>(chunk) + 256 + kPrefetchBytes + 64 * l, _MM_HINT_T1);
#pragma GCC unroll 4
          for (int64_t r = 0; r < kChunksPerOctet; ++r) {
            const __m512i c = _mm512_load_si512(chunk + r * 64);
            const __m512i lo = _mm512_ternarylogic_epi32(c, low_nibble, byte_in_dword, 0xEA);  // (c & 15) | i << 4
            const __m512i hi = _mm512_ternarylogic_epi32(_mm512_srli_epi16(c, 4), low_nibble, byte_in_dword, 0xEA);
#pragma GCC unroll 3
            for (int d = 0; d < D; ++d) {
              acc[r][d] = _mm512_dpbusd_epi32(acc[r][d], ones, _mm512_permutexvar_epi8(hi, tab[d][0]));
              acc[r][d] = _mm512_dpbusd_epi32(acc[r][d], ones, _mm512_permutexvar_epi8(lo, tab[d][1]));
            }
          }
        }
        const float* absmax = reinterpret_cast<const float*>(segment + kSegmentCodeBytes);
        float* total = totals[g - b0];
        for (int64_t r = 0; r < kChunksPerOctet; ++r) {
          // Digit sums of 64 columns: |sum q| <= 64 x 2^23, exact in int32.
          __m512i q = _mm512_add_epi32(_mm512_slli_epi32(acc[r][1], 8), acc[r][0]);
          if constexpr (D == 3) q = _mm512_add_epi32(_mm512_slli_epi32(acc[r][2], 16), q);
          const __m512 scale = _mm512_mul_ps(_mm512_load_ps(absmax + r * 16), xs);
          _mm512_store_ps(total + r * 16,
                          _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), scale, _mm512_load_ps(total + r * 16)));
        }
      }
    }
    for (int64_t g = b0; g < b1; ++g)
      for (int64_t r = 0; r < kChunksPerOctet; ++r) {
        const int64_t first = g * kDecodeRows + r * 16;
        if (first >= L.rows) break;
        const int64_t live_rows = std::min<int64_t>(16, L.rows - first);
        const __mmask16 live = static_cast<__mmask16>(live_rows == 16 ? 0xffff : (1u << live_rows) - 1u);
        __m512 out = _mm512_load_ps(totals[g - b0] + r * 16);
        if (bias) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(live, bias + first));
        _mm512_mask_storeu_ps(y + first, live, out);
      }
    b0 = b1;
  }
}

}  // namespace

void nf4_build_product_tables(const float* code, const float* x, int64_t K, int64_t s0, int64_t s1, int8_t* tables,
                              float* xscale, int digits) {
  if (digits == kTableDigitsExact)
    build_tables<kTableDigitsExact>(code, x, K, s0, s1, tables, xscale);
  else
    build_tables<kTableDigitsInt16>(code, x, K, s0, s1, tables, xscale);
}

void nf4_decode_rows(const NF4DecodeLayout& L, const int8_t* tables, const float* xscale, const float* bias,
                     int64_t g0, int64_t g1, float* y, int digits) {
  if (digits == kTableDigitsExact)
    decode_rows<kTableDigitsExact>(L, tables, xscale, bias, g0, g1, y);
  else
    decode_rows<kTableDigitsInt16>(L, tables, xscale, bias, g0, g1, y);
}

void nf4_decode_panel(const NF4DecodeLayout& L, const float* code, int64_t n0, int64_t k0, int64_t kc, float* panel) {
  const int64_t g = n0 / kDecodeRows, first_chunk = (n0 % kDecodeRows) / 16;
  const __m512 codes = _mm512_loadu_ps(code);
  for (int64_t k = 0; k < kc; k += 64) {
    const uint8_t* segment = L.segment(g, (k0 + k) / 64);
    const float* absmax = reinterpret_cast<const float*>(segment + kSegmentCodeBytes);
    for (int64_t h = 0; h < 2; ++h) {  // rows n0 + 16 h .. + 15: chunk first_chunk + h of each octet
      const __m512 scales = _mm512_load_ps(absmax + (first_chunk + h) * 16);
      float* out = panel + k * kDecodePanelRows + 16 * h;
      for (int64_t oo = 0; oo < kOctetsPerSegment; ++oo) {
        const __m512i c = _mm512_load_si512(segment + oo * 256 + (first_chunk + h) * 64);
        // Column 8 oo + j: byte j / 2 of each row's dword, its high nibble for even j.
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) {
          const __m512i idx = _mm512_srli_epi32(c, 8 * (j / 2) + (j % 2 == 0 ? 4 : 0));
          _mm512_store_ps(out + (8 * oo + j) * kDecodePanelRows,
                          _mm512_mul_ps(_mm512_permutexvar_ps(idx, codes), scales));
        }
      }
    }
  }
}

}  // namespace ecomllm::quant
