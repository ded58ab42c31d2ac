// bf16 pair packing and VDPBF16PS micro-kernels for the "medium" matmul precision (bf16_pairs.h).
// Built with AVX512-BF16; called only where bf16_pair_products().
#pragma GCC diagnostic ignored "-Wuninitialized"  // both from inside GCC's intrinsic headers
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#define ECOM_SIMD_AVX512
#include "base/simd_vec.h"
#include "quant/bf16_pairs.h"
#include "quant/nf4_matmul.h"

namespace ecomllm::quant {
namespace {

// 16 pairs (a[i], b[i]) of rounded bf16: a in the low half of each dword.
inline __m512i pair16(__m512 a, __m512 b) {
  // cvtne2ps: bf16 elements 0-15 from its second operand, 16-31 from its first; vpermw interleaves.
  const __m512i bits = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a));
  const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,  //
                                              23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(interleave, bits);
}

// 32 consecutive floats (count of them readable, the rest zero) -> 16 pairs in element order.
inline __m512i pairs_of_run(const float* p, int64_t count) {
  const __m512 lo = _mm512_maskz_loadu_ps(simd::lanes(count), p);
  const __m512 hi = _mm512_maskz_loadu_ps(simd::lanes(count - 16), p + 16);
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));  // elements 2p, 2p + 1 -> dword p
}

// out[i * ldo + 0 .. kv) (+)= row i of acc for i < mv. acc goes out through a local buffer, every
// row at a constant index: indexed by the run-time mv, GCC 12 kept acc in memory and stored all of
// it on every reduction step of the kernels (the backward tile then ran no faster than fp32's).
template <int MR>
__attribute__((always_inline)) inline void store_tile_rows(const __m512 (&acc)[MR][2], int mv, int kv, float* out,
                                                           int64_t ldo, bool accumulate) {
  alignas(64) float rows[MR][32];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    _mm512_store_ps(rows[i], acc[i][0]);
    _mm512_store_ps(rows[i] + 16, acc[i][1]);
  }
  const __mmask16 m0 = simd::lanes(kv), m1 = simd::lanes(kv - 16);
  for (int i = 0; i < mv; ++i) {
    float* o = out + i * ldo;
    __m512 a = _mm512_load_ps(rows[i]), b = _mm512_load_ps(rows[i] + 16);
    if (accumulate) {
      a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(m0, o));
      b = _mm512_add_ps(b, _mm512_maskz_loadu_ps(m1, o + 16));
    }
    _mm512_mask_storeu_ps(o, m0, a);
    _mm512_mask_storeu_ps(o + 16, m1, b);
  }
}

}  // namespace

void bf16_pack_pair_panel(const float* a, int64_t lda, int64_t cols, int mv, int mr, uint32_t* panel) {
  const int64_t pairs = (cols + 1) / 2;
  for (int64_t p0 = 0; p0 < pairs; p0 += 16) {
    alignas(64) uint32_t rows[16][16];
    for (int i = 0; i < mr; ++i)
      _mm512_store_si512(rows[i], i < mv ? pairs_of_run(a + i * lda + 2 * p0, cols - 2 * p0) : _mm512_setzero_si512());
    const int64_t n = pairs - p0 < 16 ? pairs - p0 : 16;
    for (int64_t p = 0; p < n; ++p)
      for (int i = 0; i < mr; ++i) panel[(p0 + p) * mr + i] = rows[i][p];
  }
}

void bf16_pack_pair_panel_rows(const float* rows, int64_t ld, int64_t kc, uint32_t* panel) {
  const int64_t pairs = (kc + 1) / 2;
  for (int64_t p0 = 0; p0 < pairs; p0 += 16)
    for (int jb = 0; jb < kBf16GemmNR; jb += 16) {
      // 16 rows x 16 pairs, rounded, then transposed in registers (pairs are moved as 32-bit lanes).
      __m512 r[16], out[16];
      for (int j = 0; j < 16; ++j)
        r[j] = reinterpret_cast<__m512>(pairs_of_run(rows + (jb + j) * ld + 2 * p0, kc - 2 * p0));
      simd::transpose_block(r, out);
      const int64_t n = pairs - p0 < 16 ? pairs - p0 : 16;
      for (int64_t c = 0; c < n; ++c) _mm512_store_ps(reinterpret_cast<float*>(panel + (p0 + c) * kBf16GemmNR + jb), out[c]);
    }
}

void bf16_pair_panel_in_place(float* panel, int64_t kc) {
  const __m512 zero = _mm512_setzero_ps();
  auto* out = reinterpret_cast<uint32_t*>(panel);
  for (int64_t p = 0; p < (kc + 1) / 2; ++p) {
    const float* even = panel + 2 * p * kBf16GemmNR;
    const bool has_odd = 2 * p + 1 < kc;
    const __m512 e0 = _mm512_load_ps(even), e1 = _mm512_load_ps(even + 16);
    const __m512 o0 = has_odd ? _mm512_load_ps(even + kBf16GemmNR) : zero;
    const __m512 o1 = has_odd ? _mm512_load_ps(even + kBf16GemmNR + 16) : zero;
    // Both source rows are in registers before pair row p (at or before them) is written.
    _mm512_store_si512(out + p * kBf16GemmNR, pair16(e0, o0));
    _mm512_store_si512(out + p * kBf16GemmNR + 16, pair16(e1, o1));
  }
}

void bf16_gemm_tile(int64_t pairs, const uint32_t* xp, const uint32_t* wp, float* y, int64_t ldy, int mv, int nv,
                    bool accumulate) {
  __m512 acc[kBf16GemmMR][2];
  for (auto& a : acc) a[0] = a[1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512bh w0 = reinterpret_cast<__m512bh>(_mm512_load_si512(wp + p * kBf16GemmNR));
    const __m512bh w1 = reinterpret_cast<__m512bh>(_mm512_load_si512(wp + p * kBf16GemmNR + 16));
    const uint32_t* xk = xp + p * kBf16GemmMR;
#pragma GCC unroll 12
    for (int i = 0; i < kBf16GemmMR; ++i) {
      const __m512bh b = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(xk[i])));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], w0, b);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], w1, b);
    }
  }
  store_tile_rows(acc, mv, nv, y, ldy, accumulate);
}

void bf16_pair_tile_rows(const float* w, int64_t ldw, int64_t nc, int64_t kw, uint32_t* out, int64_t ldo) {
  for (int64_t p = 0; p < (nc + 1) / 2; ++p) {
    const float* even = w + 2 * p * ldw;
    const bool has_odd = 2 * p + 1 < nc;
    for (int64_t k = 0; k < kw; k += 16) {
      const __mmask16 m = simd::lanes(kw - k);
      const __m512 e = _mm512_maskz_loadu_ps(m, even + k);
      const __m512 o = has_odd ? _mm512_maskz_loadu_ps(m, even + ldw + k) : _mm512_setzero_ps();
      // pair16 interleaves 16 + 16 values into 32 bf16 = 16 pairs: the dwords for columns k .. k + 15.
      _mm512_mask_storeu_epi32(out + p * ldo + k, m, pair16(e, o));
    }
  }
}

bool bf16_pair_tile_nf4_fits(const NF4Matrix& W, int64_t n0, int64_t nc, int64_t k0, int64_t kw) {
  return W.packed && W.cols % 32 == 0 && k0 % 32 == 0 && kw % 32 == 0 && kw <= 1024 && n0 >= 0 && nc >= 0 &&
         n0 + nc <= W.rows && k0 + kw <= W.cols;
}

void bf16_pair_tile_nf4(const NF4Matrix& W, int64_t n0, int64_t nc, int64_t k0, int64_t kw, uint32_t* out,
                        int64_t ldo) {
  const int64_t K = W.cols;
  const int shift = __builtin_ctzll(static_cast<unsigned long long>(W.blocksize));  // a power of 2
  const __m512 code = _mm512_loadu_ps(W.code);
  // A 32-column group of 16 code bytes decodes to its even columns (high nibbles) and odd ones;
  // cvtne2ps gives E = [a even | b even] and O = [a odd | b odd] (rows a = 2p, b = 2p + 1 of the
  // pair), and word 2c + r of the output (column c, row r) is E[c / 2 + 16 r] for even c, O[...]
  // (second source: + 32) for odd c.
  alignas(64) static const auto kPairWords = [] {
    struct { uint16_t idx[2][32]; } t{};
    for (int half = 0; half < 2; ++half)
      for (int w = 0; w < 32; ++w) {
        const int c = 16 * half + w / 2, r = w % 2;
        t.idx[half][w] = static_cast<uint16_t>((c % 2) * 32 + c / 2 + 16 * r);
      }
    return t;
  }();
  const __m512i words_lo = _mm512_load_si512(kPairWords.idx[0]), words_hi = _mm512_load_si512(kPairWords.idx[1]);
  float scales[2][1024 / 32 + 1];  // a row's block scales over the tile's columns (blocksize >= 32)
  for (int64_t p = 0; p < (nc + 1) / 2; ++p) {
    const int64_t rows = std::min<int64_t>(2, nc - 2 * p);
    int64_t first_block[2] = {0, 0};
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t start = (n0 + 2 * p + r) * K + k0;
      first_block[r] = start >> shift;
      W.block_scales(first_block[r], ((start + kw - 1) >> shift) + 1, scales[r]);
    }
    for (int64_t k = 0; k < kw; k += 32) {
      __m512 even[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()}, odd[2] = {even[0], even[1]};
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t at = (n0 + 2 * p + r) * K + k0 + k;  // a group lies in one block (blocksize % 32 == 0)
        const __m512 lut = _mm512_mul_ps(code, _mm512_set1_ps(scales[r][(at >> shift) - first_block[r]]));
        const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(W.packed + at / 2)));
        even[r] = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), lut);
        odd[r] = _mm512_permutexvar_ps(bytes, lut);  // vpermps reads the low 4 bits: the low nibble
      }
      const __m512i e = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(even[1], even[0]));
      const __m512i o = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(odd[1], odd[0]));
      _mm512_storeu_si512(out + p * ldo + k, _mm512_permutex2var_epi16(e, words_lo, o));
      _mm512_storeu_si512(out + p * ldo + k + 16, _mm512_permutex2var_epi16(e, words_hi, o));
    }
  }
}

void bf16_gemm_t_tile(int64_t pairs, const uint32_t* dyp, const uint32_t* wp, int64_t ldw, float* dx, int64_t ldx,
                      int mv, int kv, bool accumulate) {
  __m512 acc[kBf16GemmTMR][2];
  for (auto& a : acc) a[0] = a[1] = _mm512_setzero_ps();
  const __mmask16 m0 = simd::lanes(kv), m1 = simd::lanes(kv - 16);
  for (int64_t p = 0; p < pairs; ++p) {
    // Columns past kv are not read (masked): the tile may end there.
    const __m512bh w0 = reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi32(m0, wp + p * ldw));
    const __m512bh w1 = reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi32(m1, wp + p * ldw + 16));
    const uint32_t* dk = dyp + p * kBf16GemmTMR;
#pragma GCC unroll 14
    for (int i = 0; i < kBf16GemmTMR; ++i) {
      const __m512bh b = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(dk[i])));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], w0, b);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], w1, b);
    }
  }
  store_tile_rows(acc, mv, kv, dx, ldx, accumulate);
}

}  // namespace ecomllm::quant
