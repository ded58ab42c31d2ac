// The product-table M = 1 kernel over an AVX2 decode layout (DecodeLayoutKind::kAvx2,
// nf4_decode_layout.h): the per-call tables of x and the walk; and the AVX2 GEMM's W panels decoded
// from the same layout. Built with AVX2; called only where
// nf4_decode_kernel_available(DecodeLayoutKind::kAvx2).
//
// AVX2 has no 64-entry byte permute and no byte dot product, so the design differs from the VBMI
// kernel's: vpshufb looks 16 entries up per 128-bit lane, so a lane holds one column pair of 16
// rows (its high nibbles index one column's table, its low nibbles the next column's), and a row's
// products are summed down the lanes instead of across a dword.
//
// Products are u = q + 2^23 in [0, 2^24) (q as in the VBMI kernel: the same integers), looked up as
// four unsigned 6-bit digits. Per 64-byte chunk (16 rows x 4 column pairs, in two 32-byte halves),
// per digit: 4 lookups (high and low nibbles of both halves) summed with vpaddb, <= 4 x 63 = 252, then
// added into 16-bit lanes: acc_w += s as words (the even row's byte plus 256 x the odd row's, mod
// 2^16) and acc_h += s >> 8 (the odd row's). Over a 64-column segment acc_h <= 8 x 252, so the even
// rows' sums come back exactly as acc_w - 256 acc_h (mod 2^16). Per 128 weights: 2 loads, 6 index
// ops, 16 vpshufb, 12 vpaddb, 12 ops into the 16-bit lanes (the VBMI kernel: 16 512-bit ops), and
// every 64 columns the digit sums are combined into int32 (vpmaddwd pairs digits 0, 1 and 2, 3 with
// weights 1, 64), the two lanes (the even and odd column pairs) added, and the int32 sum scaled.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "quant/nf4_decode_layout.h"

namespace ecomllm::quant {
namespace {

constexpr int64_t kChunks = kDecodeRows / 16;  // 16-row chunks per supergroup
constexpr int64_t kOctetsPerSegment = 8;
constexpr int64_t kChunkBytes = 512;           // one chunk's 8 octets of a segment, contiguous
constexpr int kDigits = 4;                     // 6-bit digits of u
constexpr int64_t kDigitTableBytes = 128;      // per octet and digit: 4 tables of 2 lanes
constexpr int32_t kProductBias = 1 << 23;      // u = q + 2^23
constexpr int64_t kPrefetchBytes = kDecodePrefetchBytes;

// Byte offset, within an octet's 128-byte digit tables, of column jj's (< 8) 16-byte table: the 4
// tables are [col 0 | col 2], [col 1 | col 3], [col 4 | col 6], [col 5 | col 7] -- high and low
// nibbles of the first 32-byte half (column pairs 0 | 1), then of the second (pairs 2 | 3).
constexpr int64_t table_lane_offset(int64_t jj) { return ((jj / 4) * 2 + jj % 2) * 32 + ((jj % 4) / 2) * 16; }

float max_of_lanes(__m256 v) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, v);
  return *std::max_element(lanes, lanes + 8);
}

}  // namespace

bool nf4_product_tables_usable_avx2(const float* x, int64_t K) {
  // As nf4_product_tables_usable: finite, each 64-element segment's max |x| 0 or >= kMinSegmentMax.
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 finite_max = _mm256_set1_ps(std::numeric_limits<float>::max());
  for (int64_t s = 0; s < K; s += 64) {
    __m256 amax = _mm256_setzero_ps();
    for (int64_t i = 0; i < 8; ++i) {
      const __m256 a = _mm256_and_ps(_mm256_loadu_ps(x + s + 8 * i), abs_mask);
      if (_mm256_movemask_ps(_mm256_cmp_ps(a, finite_max, _CMP_LE_OQ)) != 0xFF) return false;  // inf or NaN
      amax = _mm256_max_ps(amax, a);
    }
    const float xmax = max_of_lanes(amax);
    if (xmax != 0.0f && xmax < kMinSegmentMax) return false;
  }
  return true;
}

void nf4_build_product_tables_avx2(const float* code, const float* x, int64_t K, int64_t s0, int64_t s1,
                                   uint8_t* tables, float* xscale) {
  constexpr float kQMax = table_qmax(kTableDigitsExact);
  // Codes in the order [0-3, 8-11 | 4-7, 12-15]: after the in-lane byte grouping below, digit d's
  // 16 entries are dword d of four 128-bit lanes that one unpack and one qword permute put in order.
  const __m256 codes_a = _mm256_setr_ps(code[0], code[1], code[2], code[3], code[8], code[9], code[10], code[11]);
  const __m256 codes_b = _mm256_setr_ps(code[4], code[5], code[6], code[7], code[12], code[13], code[14], code[15]);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i bias = _mm256_set1_epi32(kProductBias);
  const __m256i six = _mm256_set1_epi32(0x3f);
  // Byte d of each dword of the 4 x 4 within a lane -> dword d: [digit 0 of 4 codes, digit 1, ...].
  const __m256i group = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,  //
                                         0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  // u's four 6-bit digits, one per byte of its dword.
  auto spread = [&](__m256i u) {
    const __m256i d01 = _mm256_or_si256(_mm256_and_si256(u, six),
                                        _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u, 6), six), 8));
    const __m256i d23 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u, 12), six),
                                        _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u, 18), six), 8));
    return _mm256_shuffle_epi8(_mm256_or_si256(d01, _mm256_slli_epi32(d23, 16)), group);
  };
  for (int64_t s = s0; s < s1 && s < K / 64; ++s) {
    const float* xs = x + 64 * s;
    __m256 amax = _mm256_setzero_ps();
    for (int i = 0; i < 8; ++i) amax = _mm256_max_ps(amax, _mm256_and_ps(_mm256_loadu_ps(xs + 8 * i), abs_mask));
    const float xmax = max_of_lanes(amax);
    xscale[s] = xmax / kQMax;  // as the VBMI tables: the same q, the same scale
    const float to_q = xmax == 0.0f ? 0.0f : static_cast<float>(static_cast<double>(kQMax) / xmax);
    for (int64_t j = 0; j < 64; ++j) {
      const __m256 xq = _mm256_set1_ps(xs[j] * to_q);
      // |code * x * to_q| <= kQMax (+ rounding) < 2^23: u fits 24 bits.
      const __m256i a = spread(_mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(codes_a, xq)), bias));
      const __m256i b = spread(_mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(codes_b, xq)), bias));
      // a: lanes codes 0-3 | 8-11, b: 4-7 | 12-15, dword d = digit d. Unpacked: [0-3 d0, 4-7 d0, 0-3
      // d1, 4-7 d1 | 8-11 d0, 12-15 d0, ...]; qwords 0, 2, 1, 3 then give digit 0's 16 entries, digit 1's.
      const __m256i d01 = _mm256_permute4x64_epi64(_mm256_unpacklo_epi32(a, b), 0xD8);
      const __m256i d23 = _mm256_permute4x64_epi64(_mm256_unpackhi_epi32(a, b), 0xD8);
      uint8_t* at = tables + (8 * s + j / 8) * kDigits * kDigitTableBytes + table_lane_offset(j % 8);
      _mm_store_si128(reinterpret_cast<__m128i*>(at), _mm256_castsi256_si128(d01));
      _mm_store_si128(reinterpret_cast<__m128i*>(at + kDigitTableBytes), _mm256_extracti128_si256(d01, 1));
      _mm_store_si128(reinterpret_cast<__m128i*>(at + 2 * kDigitTableBytes), _mm256_castsi256_si128(d23));
      _mm_store_si128(reinterpret_cast<__m128i*>(at + 3 * kDigitTableBytes), _mm256_extracti128_si256(d23, 1));
    }
  }
}

void nf4_decode_rows_avx2(const NF4DecodeLayout& L, const uint8_t* tables, const float* xscale, const float* bias,
                          int64_t g0, int64_t g1, float* y) {
  const int64_t K = L.cols, segments = K / 64;
  const __m256i low_nibble = _mm256_set1_epi8(0x0f);
  const __m256i digit_weights = _mm256_set1_epi32(0x00400001);  // int16 pairs (1, 64)
  const __m256i u_bias = _mm256_set1_epi32(64 * kProductBias);  // 64 columns of u = q + 2^23
  for (int64_t g = g0; g < g1; ++g) {
    __m256 total[kChunks][2];  // rows in avx2_scale_slot order
    for (auto& t : total) t[0] = t[1] = _mm256_setzero_ps();
    for (int64_t s = 0; s < segments; ++s) {
      const uint8_t* segment = L.segment(g, s);
      const uint8_t* segment_tables = tables + s * kOctetsPerSegment * kDigits * kDigitTableBytes;
      const float* scales = reinterpret_cast<const float*>(segment + kSegmentCodeBytes);
      const __m256 xs = _mm256_set1_ps(xscale[s]);
      for (int64_t r = 0; r < kChunks; ++r) {
        const uint8_t* chunk = segment + r * kChunkBytes;
        __m256i acc_w[kDigits], acc_h[kDigits];
        for (int d = 0; d < kDigits; ++d) acc_w[d] = acc_h[d] = _mm256_setzero_si256();
        for (int64_t oo = 0; oo < kOctetsPerSegment; ++oo) {
          const uint8_t* line = chunk + oo * 64;
          _mm_prefetch(reinterpret_cast<const char*>(line) + kPrefetchBytes, _MM_HINT_T1);
          if (r == kChunks - 1 && oo >= kOctetsPerSegment - 4)  // the segment's 4 scale lines
            _mm_prefetch(reinterpret_cast<const char*>(line) + 256 + kPrefetchBytes, _MM_HINT_T1);
          const __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(line));
          const __m256i c1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(line + 32));
          const __m256i lo0 = _mm256_and_si256(c0, low_nibble);
          const __m256i hi0 = _mm256_and_si256(_mm256_srli_epi16(c0, 4), low_nibble);
          const __m256i lo1 = _mm256_and_si256(c1, low_nibble);
          const __m256i hi1 = _mm256_and_si256(_mm256_srli_epi16(c1, 4), low_nibble);
          const uint8_t* t = segment_tables + oo * kDigits * kDigitTableBytes;
#pragma GCC unroll 4
          for (int d = 0; d < kDigits; ++d) {
            const __m256i* td = reinterpret_cast<const __m256i*>(t + d * kDigitTableBytes);
            const __m256i s0 = _mm256_add_epi8(_mm256_shuffle_epi8(_mm256_load_si256(td), hi0),
                                               _mm256_shuffle_epi8(_mm256_load_si256(td + 1), lo0));
            const __m256i s1 = _mm256_add_epi8(_mm256_shuffle_epi8(_mm256_load_si256(td + 2), hi1),
                                               _mm256_shuffle_epi8(_mm256_load_si256(td + 3), lo1));
            const __m256i sum = _mm256_add_epi8(s0, s1);  // <= 252 per byte
            acc_w[d] = _mm256_add_epi16(acc_w[d], sum);
            acc_h[d] = _mm256_add_epi16(acc_h[d], _mm256_srli_epi16(sum, 8));
          }
        }
        // Word i of a lane: rows 2 i (even) and 2 i + 1 (odd) of the chunk, <= 2016 each.
        __m256i even[kDigits], odd[kDigits];
        for (int d = 0; d < kDigits; ++d) {
          even[d] = _mm256_sub_epi16(acc_w[d], _mm256_slli_epi16(acc_h[d], 8));
          odd[d] = acc_h[d];
        }
        // Sum of u over the lane's 32 columns, int32 (< 2^29), for words 0-3 (high: 4-7) of the lane.
        auto combine = [&](const __m256i* v, bool high) {
          const __m256i p01 = high ? _mm256_unpackhi_epi16(v[0], v[1]) : _mm256_unpacklo_epi16(v[0], v[1]);
          const __m256i p23 = high ? _mm256_unpackhi_epi16(v[2], v[3]) : _mm256_unpacklo_epi16(v[2], v[3]);
          return _mm256_add_epi32(_mm256_madd_epi16(p01, digit_weights),
                                  _mm256_slli_epi32(_mm256_madd_epi16(p23, digit_weights), 12));
        };
        const __m256i e_lo = combine(even, false), e_hi = combine(even, true);  // rows 0, 2, 4, 6 / 8 .. 14
        const __m256i o_lo = combine(odd, false), o_hi = combine(odd, true);    // rows 1, 3, 5, 7 / 9 .. 15
        // Both lanes' columns added: rows [0, 2, 4, 6, 1, 3, 5, 7] and [8, 10, 12, 14, 9, 11, 13, 15];
        // the sum of 64 u is that of q plus 64 x 2^23, |sum q| <= 2^29: exact in int32.
        const __m256i q_a = _mm256_sub_epi32(_mm256_add_epi32(_mm256_permute2x128_si256(e_lo, o_lo, 0x20),
                                                              _mm256_permute2x128_si256(e_lo, o_lo, 0x31)),
                                             u_bias);
        const __m256i q_b = _mm256_sub_epi32(_mm256_add_epi32(_mm256_permute2x128_si256(e_hi, o_hi, 0x20),
                                                              _mm256_permute2x128_si256(e_hi, o_hi, 0x31)),
                                             u_bias);
        total[r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q_a), _mm256_mul_ps(_mm256_load_ps(scales + 16 * r), xs),
                                      total[r][0]);
        total[r][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q_b),
                                      _mm256_mul_ps(_mm256_load_ps(scales + 16 * r + 8), xs), total[r][1]);
      }
    }
    for (int64_t r = 0; r < kChunks; ++r) {
      const int64_t first = g * kDecodeRows + r * 16;
      if (first >= L.rows) break;
      alignas(32) float out[16];
      _mm256_store_ps(out, total[r][0]);
      _mm256_store_ps(out + 8, total[r][1]);
      for (int64_t j = 0; j < 16 && first + j < L.rows; ++j) {
        const float v = out[avx2_scale_slot(j)];
        y[first + j] = bias ? v + bias[first + j] : v;
      }
    }
  }
}

void nf4_decode_panel_avx2(const NF4DecodeLayout& L, const float* code, int64_t n0, int64_t k0, int64_t kc,
                           float* panel) {
  const int64_t g = n0 / kDecodeRows, r = (n0 % kDecodeRows) / 16;
  const __m256 code_lo = _mm256_loadu_ps(code), code_hi = _mm256_loadu_ps(code + 8);
  const __m256i seven = _mm256_set1_epi32(7);
  const __m128i low_nibble = _mm_set1_epi8(0x0f);
  // Scale slot of row j is 4 (j % 2) + j / 2 within each half of 8 (avx2_scale_slot): back to row order.
  const __m256i to_rows = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t k = 0; k < kc; k += 64) {
    const uint8_t* segment = L.segment(g, (k0 + k) / 64);
    const float* slots = reinterpret_cast<const float*>(segment + kSegmentCodeBytes) + 16 * r;
    const __m256 scales[2] = {_mm256_permutevar8x32_ps(_mm256_load_ps(slots), to_rows),
                              _mm256_permutevar8x32_ps(_mm256_load_ps(slots + 8), to_rows)};
    const uint8_t* chunk = segment + r * kChunkBytes;
    for (int64_t oo = 0; oo < kOctetsPerSegment; ++oo)
      for (int64_t i = 0; i < 4; ++i) {  // column pair i of the octet: columns 8 oo + 2 i (high nibbles), + 1
        const __m128i b = _mm_load_si128(reinterpret_cast<const __m128i*>(chunk + oo * 64 + 16 * i));
        const __m128i nibbles[2] = {_mm_and_si128(_mm_srli_epi16(b, 4), low_nibble), _mm_and_si128(b, low_nibble)};
        for (int h = 0; h < 2; ++h)
          for (int half = 0; half < 2; ++half) {  // rows 0-7, 8-15
            const __m256i c = _mm256_cvtepu8_epi32(half ? _mm_srli_si128(nibbles[h], 8) : nibbles[h]);
            const __m256 v =
                _mm256_blendv_ps(_mm256_permutevar8x32_ps(code_lo, c), _mm256_permutevar8x32_ps(code_hi, c),
                                 _mm256_castsi256_ps(_mm256_cmpgt_epi32(c, seven)));
            _mm256_store_ps(panel + (k + 8 * oo + 2 * i + h) * kAvx2DecodePanelRows + 8 * half,
                            _mm256_mul_ps(v, scales[half]));
          }
      }
  }
}

}  // namespace ecomllm::quant
