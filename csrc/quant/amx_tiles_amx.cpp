// AMX-BF16 leaf kernels of the bf16x3 products (see amx_tiles.h). Built with -mamx-tile
// -mamx-bf16 -mavx512bf16 (CMake rule for *_amx.cpp); runs only where amx_usable() said yes.
// Internal helpers have internal linkage and no std:: templates are used, so no AMX/AVX-512
// instantiation can leak to code running on other CPUs.
// GCC 12 reports its own zero-extension intrinsics (_mm512_cvtepu16_epi32, used by widen) as
// "may be used uninitialized" once inlined here: a false positive inside <immintrin.h>.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>

#define ECOM_SIMD_AVX512 1
#include "base/simd_vec.h"
#include "quant/amx_tiles.h"

namespace ecomllm::quant {
namespace {

// The three bf16 planes of 16 fp32 values (round to nearest even at each split).
struct Planes16 {
  __m256i p[3];
};
inline __m512 widen(__m256i bf16) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16), 16)); }
inline __m256i to_bf16(__m512 v) { return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)); }
// The first `planes` planes (the others are left unset).
inline Planes16 split(__m512 v, int planes) {
  Planes16 s;
  s.p[0] = to_bf16(v);
  if (planes > 1) {
    const __m512 r1 = _mm512_sub_ps(v, widen(s.p[0]));  // exact: v and p0 agree in their top 8 bits
    s.p[1] = to_bf16(r1);
    if (planes > 2) s.p[2] = to_bf16(_mm512_sub_ps(r1, widen(s.p[1])));
  }
  return s;
}

// LDTILECFG's 64-byte operand: palette 1; tiles 0-7 of 16 rows x 64 bytes (bytes 16-31: colsb as
// uint16 little-endian; bytes 48-55: rows). Static data on purpose: GCC's _tile_loadconfig tells
// the compiler it reads only a pointer's worth of its operand, so a config built on the stack had
// its stores removed as dead (-> #UD on the first tile instruction).
alignas(64) constexpr uint8_t kTileConfig[64] = {
    1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,            // palette, start_row, reserved
    64, 0, 64, 0, 64, 0, 64, 0, 64, 0, 64, 0, 64, 0, 64, 0,    // colsb[0..7]
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,            // colsb[8..15]
    16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0};   // rows[0..15]

}  // namespace

void amx_pack_a(const float* a, int64_t lda, int mv, int64_t red, int64_t steps, int planes, uint16_t* out) {
  for (int64_t s = 0; s < steps; ++s) {
    uint16_t* step = out + s * amx_a_step_elems(planes);
    const int64_t k0 = s * kAmxStep;
    const __mmask16 m0 = simd::lanes(red - k0), m1 = simd::lanes(red - k0 - 16);
    for (int i = 0; i < 16; ++i) {
      __m512 v0 = _mm512_setzero_ps(), v1 = _mm512_setzero_ps();
      if (i < mv) {
        v0 = _mm512_maskz_loadu_ps(m0, a + i * lda + k0);
        v1 = _mm512_maskz_loadu_ps(m1, a + i * lda + k0 + 16);
      }
      const Planes16 s0 = split(v0, planes), s1 = split(v1, planes);
      for (int p = 0; p < planes; ++p) {
        uint16_t* row = step + p * kAmxTileElems + i * 32;
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(row), s0.p[p]);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + 16), s1.p[p]);
      }
    }
  }
}

void amx_pack_b_rows(const float* w, int64_t ldw, int nv, int64_t red, int64_t steps, int planes, uint16_t* out) {
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t k0 = s * kAmxStep;
    const __mmask16 m0 = simd::lanes(red - k0), m1 = simd::lanes(red - k0 - 16);
    for (int jt = 0; jt < 2; ++jt) {
      // Row j of W (output column 16 jt + j): 32 reduction values = 16 bf16 pairs per plane, as
      // 32-bit lanes (held in float registers for the transpose: bits are only moved).
      __m512 rows[3][16], pairs[16];
      for (int j = 0; j < 16; ++j) {
        const int col = 16 * jt + j;
        __m512 v0 = _mm512_setzero_ps(), v1 = _mm512_setzero_ps();
        if (col < nv) {
          v0 = _mm512_maskz_loadu_ps(m0, w + col * ldw + k0);
          v1 = _mm512_maskz_loadu_ps(m1, w + col * ldw + k0 + 16);
        }
        const Planes16 s0 = split(v0, planes), s1 = split(v1, planes);
        for (int p = 0; p < planes; ++p)
          rows[p][j] = _mm512_castsi512_ps(_mm512_inserti64x4(_mm512_zextsi256_si512(s0.p[p]), s1.p[p], 1));
      }
      for (int p = 0; p < planes; ++p) {
        simd::transpose_block(rows[p], pairs);  // pairs[q]: pair q of every column
        uint16_t* tile = out + s * amx_b_step_elems(planes) + (p * 2 + jt) * kAmxTileElems;
        for (int q = 0; q < 16; ++q) _mm512_storeu_ps(tile + q * 32, pairs[q]);
      }
    }
  }
}

void amx_pack_b_cols(const float* w, int64_t ldw, int64_t red, int nv, int64_t steps, int planes, uint16_t* out) {
  // word 2 c + e of a tile row = element c of reduction row 2 q + e
  const __m512i interleave = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,  //
                                              39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __mmask16 mj[2] = {simd::lanes(nv), simd::lanes(nv - 16)};
  for (int64_t s = 0; s < steps; ++s) {
    for (int q = 0; q < 16; ++q) {
      Planes16 e[2][2];  // [row parity][column tile]
      for (int par = 0; par < 2; ++par) {
        const int64_t r = s * kAmxStep + 2 * q + par;
        for (int jt = 0; jt < 2; ++jt) {
          const __m512 v = r < red ? _mm512_maskz_loadu_ps(mj[jt], w + r * ldw + 16 * jt) : _mm512_setzero_ps();
          e[par][jt] = split(v, planes);
        }
      }
      for (int p = 0; p < planes; ++p)
        for (int jt = 0; jt < 2; ++jt) {
          const __m512i row = _mm512_permutex2var_epi16(_mm512_zextsi256_si512(e[0][jt].p[p]), interleave,
                                                        _mm512_zextsi256_si512(e[1][jt].p[p]));
          _mm512_storeu_si512(out + s * amx_b_step_elems(planes) + (p * 2 + jt) * kAmxTileElems + q * 32, row);
        }
    }
  }
}

void amx_configure() { _tile_loadconfig(kTileConfig); }

void amx_block(const uint16_t* a0, const uint16_t* a1, const uint16_t* b, const AmxRun* runs, int nruns, int planes,
               float* c, int64_t ldc, int mv, int nv, bool accumulate) {
  const bool full = mv == 32 && nv == 32;
  alignas(64) float edge[32 * 32];
  float* ct = c;
  int64_t ld = ldc;
  if (!full) {
    std::memset(edge, 0, sizeof(edge));
    if (accumulate)
      for (int i = 0; i < mv; ++i) std::memcpy(edge + i * 32, c + i * ldc, sizeof(float) * nv);
    ct = edge;
    ld = 32;
  }
  const int64_t stride = ld * 4;
  if (accumulate || !full) {
    _tile_loadd(0, ct, stride);
    _tile_loadd(1, ct + 16, stride);
    _tile_loadd(2, ct + 16 * ld, stride);
    _tile_loadd(3, ct + 16 * ld + 16, stride);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  // Tiles: 0-3 C (row block r, column tile j at 2 r + j), 4/5 A planes of row blocks 0/1, 6/7 B
  // planes of column tiles 0/1. Per step the products a_i b_j with i + j < planes (i < planes,
  // j < the run's B planes), grouped by B plane so each B tile is loaded once: at 3 planes 18
  // tile loads per 24 tile products.
  for (int r = 0; r < nruns; ++r) {
    const int64_t steps = runs[r].steps;
    const int bp = runs[r].b_planes;
    for (int64_t s = 0; s < steps; ++s) {
      const uint16_t* as0 = a0 + s * amx_a_step_elems(planes);
      const uint16_t* as1 = a1 + s * amx_a_step_elems(planes);
      const uint16_t* bs = b + s * amx_b_step_elems(bp);
      for (int j = 0; j < bp; ++j) {
        _tile_loadd(6, bs + 2 * j * kAmxTileElems, 64);
        _tile_loadd(7, bs + (2 * j + 1) * kAmxTileElems, 64);
        for (int i = 0; i + j < planes; ++i) {
          _tile_loadd(4, as0 + i * kAmxTileElems, 64);
          _tile_loadd(5, as1 + i * kAmxTileElems, 64);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
    }
    a0 += steps * amx_a_step_elems(planes);
    a1 += steps * amx_a_step_elems(planes);
    b += steps * amx_b_step_elems(bp);
  }
  _tile_stored(0, ct, stride);
  _tile_stored(1, ct + 16, stride);
  _tile_stored(2, ct + 16 * ld, stride);
  _tile_stored(3, ct + 16 * ld + 16, stride);
  if (!full)
    for (int i = 0; i < mv; ++i) std::memcpy(c + i * ldc, edge + i * 32, sizeof(float) * nv);
}

}  // namespace ecomllm::quant
