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

#define ECOM_SIMD_AVX512
#include "base/error.h"
#include "base/simd_vec.h"
#include "quant/nf4_decode_layout.h"

namespace ecomllm::quant {
namespace {

constexpr int64_t kChunksPerOctet = kDecodeRows / 16;  // 4
constexpr int64_t kOctetsPerSegment = 8;               // 64 columns: one block scale
constexpr int64_t kPrefetchBytes = kDecodePrefetchBytes;

// The fp32 block scales of a segment's 64 rows (rows 16 r .. 16 r + 15 in out[r]), from either
// form of a layout's scales (DecodeScales). kU8: map[code] from the map's byte planes (two two-table
// byte permutes per plane, blended on the code's top bit), the planes interleaved into fp32 by
// unpacks (the codes' slot order makes vector r rows 16 r ..), then * nested + offset in two
// roundings as dequantize() does: ~30 512-bit ops per 64 rows, against ~500 for the segment's
// codes. A row's nested scale changes only where the row crosses a nested block (every 256
// blocks; for 4096 columns at blocksize 64, never within a row), so the walk keeps each
// supergroup's 64 in a NestedCache and looks them up again only at the next such segment.
class SegmentScales {
 public:
  struct NestedCache {
    __m512 nested[kVbmiSegmentBlock][kChunksPerOctet];
    int64_t until[kVbmiSegmentBlock];  // first segment at which slot i's vectors go stale
    void clear() { std::fill(until, until + kVbmiSegmentBlock, int64_t{0}); }
  };

  explicit SegmentScales(const NF4DecodeLayout& L)
      : L_(L),
        u8_(L.scales == DecodeScales::kU8),
        row_elements_(_mm512_mullo_epi32(_mm512_set1_epi32(static_cast<int32_t>(L.cols)),
                                         _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15))),
        offset_(_mm512_set1_ps(L.offset)),
        shift_(_mm_cvtsi32_si128(L.nested_shift)) {}

  // out[r]: the scales of rows 64 g + 16 r .. + 15 at segment s of supergroup g (at `segment`).
  // cache (kU8; may be null): slot `slot` holds supergroup g's nested scales, for segments s and
  // up of a walk.
  void get(const uint8_t* segment, int64_t g, int64_t s, __m512 out[kChunksPerOctet], NestedCache* cache = nullptr,
           int64_t slot = 0) const {
    const uint8_t* stored = segment + kSegmentCodeBytes;
    if (!u8_) {
      for (int64_t r = 0; r < kChunksPerOctet; ++r)
        out[r] = _mm512_load_ps(reinterpret_cast<const float*>(stored) + 16 * r);
      return;
    }
    const __m512i q = _mm512_load_si512(stored);
    const __mmask64 high = _mm512_movepi8_mask(q);  // codes 128-255
    const uint8_t* planes = L_.map_planes.as<uint8_t>();
    __m512i b[4];
    for (int p = 0; p < 4; ++p) {
      const uint8_t* t = planes + 256 * p;
      const __m512i low = _mm512_permutex2var_epi8(_mm512_load_si512(t), q, _mm512_load_si512(t + 64));
      const __m512i top = _mm512_permutex2var_epi8(_mm512_load_si512(t + 128), q, _mm512_load_si512(t + 192));
      b[p] = _mm512_mask_blend_epi8(high, low, top);
    }
    // Per 128-bit lane: bytes 0-7 / 8-15 of planes 0, 1 and 2, 3 into words, then into dwords:
    // vector r, lane l, element t = the code at byte 16 l + 4 r + t = row 16 r + 4 l + t.
    const __m512i w01_lo = _mm512_unpacklo_epi8(b[0], b[1]), w01_hi = _mm512_unpackhi_epi8(b[0], b[1]);
    const __m512i w23_lo = _mm512_unpacklo_epi8(b[2], b[3]), w23_hi = _mm512_unpackhi_epi8(b[2], b[3]);
    const __m512i code[kChunksPerOctet] = {
        _mm512_unpacklo_epi16(w01_lo, w23_lo), _mm512_unpackhi_epi16(w01_lo, w23_lo),
        _mm512_unpacklo_epi16(w01_hi, w23_hi), _mm512_unpackhi_epi16(w01_hi, w23_hi)};
    __m512 fresh[kChunksPerOctet];
    const __m512* nested = fresh;
    if (!cache) {
      nested_scales(g, s, fresh);
    } else {
      if (s >= cache->until[slot]) cache->until[slot] = nested_scales(g, s, cache->nested[slot]);
      nested = cache->nested[slot];
    }
    for (int64_t r = 0; r < kChunksPerOctet; ++r)
      out[r] = _mm512_add_ps(_mm512_mul_ps(_mm512_castsi512_ps(code[r]), nested[r]), offset_);
  }

 private:
  // out[r]: the nested scales of rows 64 g + 16 r .. + 15 at segment s; returns the first segment
  // at which one of the 64 changes (a row's elements cross a multiple of 2^nested_shift there).
  int64_t nested_scales(int64_t g, int64_t s, __m512 out[kChunksPerOctet]) const {
    const float* nested = L_.nested.as<float>();
    const int64_t block = int64_t{1} << L_.nested_shift;
    const __m512i mask = _mm512_set1_epi32(static_cast<int32_t>(block - 1));
    __m512i left = _mm512_set1_epi32(static_cast<int32_t>(block));
    for (int64_t r = 0; r < kChunksPerOctet; ++r) {
      // Element of the chunk's first row at the segment; its rows' nested scales lie in the
      // window of kNestedWindow entries from that element's (nf4_decode_scales_u8_supported).
      const int64_t e0 = (g * kDecodeRows + 16 * r) * L_.cols + 64 * s;
      const float* window = nested + (e0 >> L_.nested_shift);
      const __m512i v = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(e0 & (block - 1))), row_elements_);
      out[r] = _mm512_permutex2var_ps(_mm512_loadu_ps(window), _mm512_srl_epi32(v, shift_), _mm512_loadu_ps(window + 16));
      // Elements each row has left in its nested block (multiples of 64: whole segments).
      left = _mm512_min_epi32(left, _mm512_sub_epi32(_mm512_set1_epi32(static_cast<int32_t>(block)),
                                                     _mm512_and_si512(v, mask)));
    }
    return s + _mm512_reduce_min_epi32(left) / 64;
  }

  const NF4DecodeLayout& L_;
  bool u8_;
  __m512i row_elements_;  // j * cols for j < 16
  __m512 offset_;
  __m128i shift_;
};

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

// A 64-byte chunk's lookup indices: byte i of each dword gets (nibble | i << 4), so that it
// indexes entry 16 i + c of a 64-entry table (one ternary-logic op per nibble), and the ones the
// digit sums multiply by.
struct ChunkIndex {
  const __m512i ones = _mm512_set1_epi8(1);
  const __m512i low_nibble = _mm512_set1_epi8(0x0f);
  const __m512i byte_in_dword = _mm512_set1_epi32(0x30201000);  // (byte index i) << 4
  __m512i low(__m512i c) const { return _mm512_ternarylogic_epi32(c, low_nibble, byte_in_dword, 0xEA); }
  __m512i high(__m512i c) const {
    return _mm512_ternarylogic_epi32(_mm512_srli_epi16(c, 4), low_nibble, byte_in_dword, 0xEA);
  }
};

// total[0 .. 16) += float(q) * (absmax * xs) for the 16 rows of one chunk, q their digit sums of
// a segment's 64 columns (|q| <= 64 x 2^23: exact in int32).
template <int D>
inline void add_segment_sums(const __m512i (&acc)[D], __m512 absmax, __m512 xs, float* total) {
  __m512i q = _mm512_add_epi32(_mm512_slli_epi32(acc[1], 8), acc[0]);
  if constexpr (D == 3) q = _mm512_add_epi32(_mm512_slli_epi32(acc[2], 16), q);
  _mm512_store_ps(total, _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), _mm512_mul_ps(absmax, xs), _mm512_load_ps(total)));
}

// y[64 g + j] = totals[g - b0][j] (+ bias) for the supergroups [b0, b1) of a block; rows past
// L.rows are not written.
void store_block(const NF4DecodeLayout& L, const float (*totals)[kDecodeRows], int64_t b0, int64_t b1,
                 const float* bias, float* y) {
  for (int64_t g = b0; g < b1; ++g)
    for (int64_t r = 0; r < kChunksPerOctet; ++r) {
      const int64_t first = g * kDecodeRows + r * 16;
      if (first >= L.rows) break;
      const __mmask16 live = simd::lanes(L.rows - first);
      __m512 out = _mm512_load_ps(totals[g - b0] + r * 16);
      if (bias) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(live, bias + first));
      _mm512_mask_storeu_ps(y + first, live, out);
    }
}

template <int D>
void decode_rows(const NF4DecodeLayout& L, const int8_t* tables, const float* xscale, const float* bias, int64_t g0,
                 int64_t g1, float* y) {
  constexpr int64_t kOctetBytes = D * 128;
  const int64_t segments = L.cols / 64;
  const ChunkIndex index;
  // Block by block (the layout's segment order): segment s of each of the block's supergroups in
  // [g0, g1) in turn, so that the codes stream in order and segment s's tables (3 KiB) come from
  // L1 for all of them. Each supergroup's fp32 sums wait in `totals` meanwhile.
  ECOM_CHECK(L.block >= 1 && L.block <= kVbmiSegmentBlock, "nf4 decode layout: block ", L.block);
  alignas(64) float totals[kVbmiSegmentBlock][kDecodeRows];
  const SegmentScales segment_scales(L);
  SegmentScales::NestedCache nested_cache;
  const int64_t scale_lines = (L.segment_bytes() - kSegmentCodeBytes) / 64;
  for (int64_t b0 = g0; b0 < g1;) {
    const int64_t b1 = std::min(g1, (b0 / L.block + 1) * L.block);
    std::fill(&totals[0][0], &totals[0][0] + (b1 - b0) * kDecodeRows, 0.0f);
    nested_cache.clear();
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
            for (int64_t l = 0; l < scale_lines; ++l)
              _mm_prefetch(reinterpret_cast<const char*>(chunk) + 256 + kPrefetchBytes + 64 * l, _MM_HINT_T1);
#pragma GCC unroll 4
          for (int64_t r = 0; r < kChunksPerOctet; ++r) {
            const __m512i c = _mm512_load_si512(chunk + r * 64);
            const __m512i lo = index.low(c), hi = index.high(c);
#pragma GCC unroll 3
            for (int d = 0; d < D; ++d) {
              acc[r][d] = _mm512_dpbusd_epi32(acc[r][d], index.ones, _mm512_permutexvar_epi8(hi, tab[d][0]));
              acc[r][d] = _mm512_dpbusd_epi32(acc[r][d], index.ones, _mm512_permutexvar_epi8(lo, tab[d][1]));
            }
          }
        }
        __m512 absmax[kChunksPerOctet];
        segment_scales.get(segment, g, s, absmax, &nested_cache, g - b0);
        for (int64_t r = 0; r < kChunksPerOctet; ++r) add_segment_sums<D>(acc[r], absmax[r], xs, totals[g - b0] + r * 16);
      }
    }
    store_block(L, totals, b0, b1, bias, y);
    b0 = b1;
  }
}

// R (2-4) rows of x in one pass over the layout: the same per-row arithmetic as decode_rows (so
// the same bits per row), but each 64-byte chunk is loaded and its two index vectors made once for
// all R rows, and the codes stream once instead of R times. Loop order per segment: chunk r outer,
// octet inner, so that only R x D accumulators live at a time; each row's octet tables are memory
// operands of the lookups (L1: R x 3 KiB per segment, shared by the block's supergroups).
template <int D, int R>
void decode_rows_multi(const NF4DecodeLayout& L, const int8_t* const* tables, const float* const* xscale,
                       const float* bias, int64_t g0, int64_t g1, float* const* y) {
  constexpr int64_t kOctetBytes = D * 128;
  const int64_t segments = L.cols / 64;
  const ChunkIndex index;
  ECOM_CHECK(L.block >= 1 && L.block <= kVbmiSegmentBlock, "nf4 decode layout: block ", L.block);
  alignas(64) float totals[R][kVbmiSegmentBlock][kDecodeRows];
  const SegmentScales segment_scales(L);
  SegmentScales::NestedCache nested_cache;
  const int64_t segment_lines = L.segment_bytes() / 64;
  for (int64_t b0 = g0; b0 < g1;) {
    const int64_t b1 = std::min(g1, (b0 / L.block + 1) * L.block);
    for (int m = 0; m < R; ++m) std::fill(&totals[m][0][0], &totals[m][0][0] + (b1 - b0) * kDecodeRows, 0.0f);
    nested_cache.clear();
    for (int64_t s = 0; s < segments; ++s) {
      for (int64_t g = b0; g < b1; ++g) {
        const uint8_t* segment = L.segment(g, s);
        // One line ahead per line read, as decode_rows.
        for (int64_t l = 0; l < segment_lines; ++l)
          _mm_prefetch(reinterpret_cast<const char*>(segment) + kPrefetchBytes + 64 * l, _MM_HINT_T1);
        __m512 absmax[kChunksPerOctet];
        segment_scales.get(segment, g, s, absmax, &nested_cache, g - b0);
        for (int64_t r = 0; r < kChunksPerOctet; ++r) {
          __m512i acc[R][D];
          for (auto& a : acc)
            for (auto& d : a) d = _mm512_setzero_si512();
#pragma GCC unroll 2
          for (int64_t oo = 0; oo < kOctetsPerSegment; ++oo) {
            const __m512i c = _mm512_load_si512(segment + oo * 256 + r * 64);
            const __m512i lo = index.low(c), hi = index.high(c);
#pragma GCC unroll 4
            for (int m = 0; m < R; ++m) {
              const int8_t* t = tables[m] + (s * kOctetsPerSegment + oo) * kOctetBytes;
#pragma GCC unroll 3
              for (int d = 0; d < D; ++d) {
                acc[m][d] = _mm512_dpbusd_epi32(acc[m][d], index.ones,
                                                _mm512_permutexvar_epi8(hi, _mm512_load_si512(t + d * 128)));
                acc[m][d] = _mm512_dpbusd_epi32(acc[m][d], index.ones,
                                                _mm512_permutexvar_epi8(lo, _mm512_load_si512(t + d * 128 + 64)));
              }
            }
          }
          for (int m = 0; m < R; ++m)
            add_segment_sums<D>(acc[m], absmax[r], _mm512_set1_ps(xscale[m][s]), totals[m][g - b0] + r * 16);
        }
      }
    }
    for (int m = 0; m < R; ++m) store_block(L, totals[m], b0, b1, bias, y[m]);
    b0 = b1;
  }
}

template <int D>
void decode_rows_multi_of(int rows, const NF4DecodeLayout& L, const int8_t* const* tables,
                          const float* const* xscale, const float* bias, int64_t g0, int64_t g1, float* const* y) {
  switch (rows) {
    case 2: return decode_rows_multi<D, 2>(L, tables, xscale, bias, g0, g1, y);
    case 3: return decode_rows_multi<D, 3>(L, tables, xscale, bias, g0, g1, y);
    case 4: return decode_rows_multi<D, 4>(L, tables, xscale, bias, g0, g1, y);
    default: ECOM_CHECK(false, "nf4 decode rows: ", rows, " rows of x per pass (2-4)");
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

void nf4_decode_rows_multi(const NF4DecodeLayout& L, const int8_t* const* tables, const float* const* xscale,
                           const float* bias, int64_t g0, int64_t g1, float* const* y, int rows, int digits) {
  if (digits == kTableDigitsExact)
    decode_rows_multi_of<kTableDigitsExact>(rows, L, tables, xscale, bias, g0, g1, y);
  else
    decode_rows_multi_of<kTableDigitsInt16>(rows, L, tables, xscale, bias, g0, g1, y);
}

void nf4_decode_panel(const NF4DecodeLayout& L, const float* code, int64_t n0, int64_t k0, int64_t kc, float* panel) {
  const int64_t g = n0 / kDecodeRows, first_chunk = (n0 % kDecodeRows) / 16;
  const __m512 codes = _mm512_loadu_ps(code);
  const SegmentScales segment_scales(L);
  for (int64_t k = 0; k < kc; k += 64) {
    const uint8_t* segment = L.segment(g, (k0 + k) / 64);
    __m512 absmax[kChunksPerOctet];
    segment_scales.get(segment, g, (k0 + k) / 64, absmax);
    for (int64_t h = 0; h < 2; ++h) {  // rows n0 + 16 h .. + 15: chunk first_chunk + h of each octet
      const __m512 scales = absmax[first_chunk + h];
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
