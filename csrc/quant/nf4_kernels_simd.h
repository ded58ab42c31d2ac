// NF4 matmul leaf kernels written once over a small vector type `V` and compiled twice:
// nf4_kernels_avx2.cpp (-mavx2 -mfma) and nf4_kernels_avx512.cpp (-mavx512f/bw/vl/dq).
//
// Everything here has internal linkage (anonymous namespace) and uses no std:: templates, so the
// linker can never hand an AVX-512 instantiation to code running on an AVX2-only CPU.
//
// Decoding: 16 packed bytes hold 32 weights; the high nibbles are the even elements and the low
// nibbles the odd ones. decode16() turns them into kGroupVecs vectors of even-element codes (`hi`)
// and kGroupVecs vectors of odd-element codes (`lo`), looked up in the 16-entry table.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "base/simd_vec.h"
#include "quant/nf4_kernels_common.h"
#include "quant/nf4_matmul.h"

namespace ecomllm::quant {
namespace {

using namespace simd;  // V (fp32 vector of the ISA), load, store, set1, zero, add, fma, hsum

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

#if defined(ECOM_SIMD_AVX512)
struct Lut {
  __m512 table;
  explicit Lut(const float* code16) : table(_mm512_loadu_ps(code16)) {}
  Lut(const Lut& base, float scale) : table(_mm512_mul_ps(base.table, _mm512_set1_ps(scale))) {}
};
constexpr int kGroupVecs = 1;  // 16 even + 16 odd weights -> 1 + 1 vectors
inline void decode16(const uint8_t* p, const Lut& lut, V* hi, V* lo) {
  const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  lo[0].v = _mm512_permutexvar_ps(idx, lut.table);  // uses the low 4 bits only
  hi[0].v = _mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), lut.table);
}
// Restores element order: out = [hi0 lo0 hi1 lo1 ...] as 2 * kGroupVecs vectors.
inline void interleave(const V* hi, const V* lo, V* out) {
  const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  out[0].v = _mm512_permutex2var_ps(hi[0].v, first, lo[0].v);
  out[1].v = _mm512_permutex2var_ps(hi[0].v, second, lo[0].v);
}
constexpr int kGemmMR = 12;   // forward: 12 x rows x 2 vectors of W rows (y columns) = 24 accumulators
constexpr int kGemmTMR = 14;  // backward: 14 dy rows x 2 vectors of dx columns = 28 accumulators (+3 of 32
                              // registers); 3-4% faster than 12 on Sapphire Rapids, M = 1024

#elif defined(ECOM_SIMD_AVX2)
struct Lut {
  __m256 low8, high8;  // codes 0-7 and 8-15
  explicit Lut(const float* code16) : low8(_mm256_loadu_ps(code16)), high8(_mm256_loadu_ps(code16 + 8)) {}
  Lut(const Lut& base, float scale)
      : low8(_mm256_mul_ps(base.low8, _mm256_set1_ps(scale))), high8(_mm256_mul_ps(base.high8, _mm256_set1_ps(scale))) {}
  // Looks up the code in bits 0-3 of each 32-bit lane (bits above 3 are ignored).
  __m256 operator()(__m256i idx) const {
    const __m256 a = _mm256_permutevar8x32_ps(low8, idx);
    const __m256 b = _mm256_permutevar8x32_ps(high8, idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));  // bit 3 -> sign
  }
};
constexpr int kGroupVecs = 2;
inline void decode16(const uint8_t* p, const Lut& lut, V* hi, V* lo) {
  for (int d = 0; d < 2; ++d) {
    const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * d)));
    lo[d].v = lut(idx);
    hi[d].v = lut(_mm256_srli_epi32(idx, 4));
  }
}
inline void interleave(const V* hi, const V* lo, V* out) {
  for (int d = 0; d < 2; ++d) {
    const __m256 a = _mm256_unpacklo_ps(hi[d].v, lo[d].v);  // e0 e1 e2 e3 | e8 e9 e10 e11
    const __m256 b = _mm256_unpackhi_ps(hi[d].v, lo[d].v);  // e4 e5 e6 e7 | e12 ... e15
    out[2 * d].v = _mm256_permute2f128_ps(a, b, 0x20);
    out[2 * d + 1].v = _mm256_permute2f128_ps(a, b, 0x31);
  }
}
constexpr int kGemmMR = 6;
constexpr int kGemmTMR = 6;
#else
#error "define ECOM_SIMD_AVX2 or ECOM_SIMD_AVX512 before including nf4_kernels_simd.h"
#endif

constexpr int kGemmNR = 2 * V::kLanes;   // forward micro-tile rows of W (columns of y)
constexpr int kGemmTKR = 2 * V::kLanes;  // backward micro-tile columns of dx

// out[i] = fp32 scale of block b0 + i for i < count (double quantization undone, rounding exactly
// as bitsandbytes: two float32 operations, no FMA). Mirrors NF4Matrix::block_scales on purpose:
// an inline copy here compiles per ISA and is inlined into the decode loops.
inline void block_scales_range(const NF4Matrix& W, int64_t b0, int64_t count, float* out) {
  if (W.absmax) {
    for (int64_t i = 0; i < count; ++i) out[i] = W.absmax[b0 + i];
    return;
  }
  const uint8_t* q = W.qabsmax + b0;
  const float* code = W.nested_code;
  const float* nested = W.nested_absmax;
  const float offset = W.offset;
  for (int64_t i = 0; i < count; ++i) {
    const float scaled = code[q[i]] * nested[static_cast<uint64_t>(b0 + i) / 256u];
    out[i] = scaled + offset;
  }
}
constexpr int64_t kScaleChunk = 64;

// Software prefetch distance for the streamed weight bytes: the decode is compute-heavy enough
// that the hardware prefetcher alone leaves DRAM latency exposed.
constexpr int64_t kPrefetchBytes = 2048;

// ---- M = 1: fused decode + dot, memory bound -------------------------------------------------
// A row is walked block segment by block segment (a block may start in the previous row when
// K % blocksize != 0). Per segment the 16-entry table is scaled once (code * absmax, as
// dequantization computes it), so decoding yields finished weights: decode + FMA only.
void gemv_rows(const NF4Matrix& W, const float* x_even, const float* x_odd, const float* bias, int64_t n0, int64_t n1,
               float* y) {
  const int64_t K = W.cols, bs = W.blocksize;
  const Lut lut(W.code);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = W.packed + n * (K / 2);
    const int64_t row_start = n * K;
    // Two groups per step into separate accumulators: FMA latency, not throughput, would bound a
    // single accumulator chain.
    V even[2][kGroupVecs], odd[2][kGroupVecs];
    for (int u = 0; u < 2; ++u)
      for (int d = 0; d < kGroupVecs; ++d) even[u][d] = odd[u][d] = zero();
    auto step = [&](int u, int64_t j, const Lut& block_lut) {  // j: byte index == x_even / x_odd index
      V hi[kGroupVecs], lo[kGroupVecs];
      decode16(row + j, block_lut, hi, lo);
      for (int d = 0; d < kGroupVecs; ++d) {
        even[u][d] = fma(hi[d], load(x_even + j + d * V::kLanes), even[u][d]);
        odd[u][d] = fma(lo[d], load(x_odd + j + d * V::kLanes), odd[u][d]);
      }
    };
    // Block scales are decoded a chunk at a time in their own loop (vectorisable, and off the
    // decode loop's critical path: undoing double quantization per block inside it cost ~30%).
    int64_t b = row_start / bs;  // block of the row's first element; then one block per segment
    const int64_t b_end = (row_start + K - 1) / bs + 1;
    float scales[kScaleChunk];
    for (int64_t k = 0; b < b_end;) {
      const int64_t chunk = imin(kScaleChunk, b_end - b);
      block_scales_range(W, b, chunk, scales);
      for (int64_t c = 0; c < chunk; ++c, ++b) {
        const int64_t seg_end = imin(K, (b + 1) * bs - row_start);
        const Lut block_lut(lut, scales[c]);
        int64_t j = k / 2;
        for (; j + 32 <= seg_end / 2; j += 32) {
          _mm_prefetch(reinterpret_cast<const char*>(row + j) + kPrefetchBytes, _MM_HINT_T0);
          step(0, j, block_lut);
          step(1, j + 16, block_lut);
        }
        if (j < seg_end / 2) step(0, j, block_lut);
        k = seg_end;
      }
    }
    V total = add(add(even[0][0], odd[0][0]), add(even[1][0], odd[1][0]));
    for (int d = 1; d < kGroupVecs; ++d)
      total = add(total, add(add(even[0][d], odd[0][d]), add(even[1][d], odd[1][d])));
    y[n] = hsum(total) + (bias ? bias[n] : 0.0f);
  }
}

// ---- tile decoder for the GEMM paths --------------------------------------------------------
void dequant_tile(const NF4Matrix& W, int64_t n0, int64_t n1, int64_t k0, int64_t k1, float* out, int64_t ldo) {
  if (!W.rows_group_aligned() || k0 % 32 != 0) {
    nf4_dequant_tile_generic(W, n0, n1, k0, k1, out, ldo);
    return;
  }
  const int64_t K = W.cols, bs = W.blocksize;
  const int64_t k_fast_end = k0 + (k1 - k0) / 32 * 32;
  const Lut lut(W.code);
  for (int64_t n = n0; n < n1; ++n) {
    float* dst = out + (n - n0) * ldo - k0;
    const uint8_t* row = W.packed + n * (K / 2);
    const int64_t row_start = n * K;
    if (k_fast_end == k0) continue;
    int64_t b = (row_start + k0) / bs;
    const int64_t b_end = (row_start + k_fast_end - 1) / bs + 1;
    float scales[kScaleChunk];
    for (int64_t k = k0; b < b_end;) {
      const int64_t chunk = imin(kScaleChunk, b_end - b);
      block_scales_range(W, b, chunk, scales);
      for (int64_t c = 0; c < chunk; ++c, ++b) {
        const int64_t seg_end = imin(k_fast_end, (b + 1) * bs - row_start);
        const Lut block_lut(lut, scales[c]);
        for (; k < seg_end; k += 32) {
          V hi[kGroupVecs], lo[kGroupVecs], w[2 * kGroupVecs];
          decode16(row + k / 2, block_lut, hi, lo);
          interleave(hi, lo, w);
          for (int d = 0; d < 2 * kGroupVecs; ++d) store(dst + k + d * V::kLanes, w[d]);
        }
      }
    }
  }
  if (k_fast_end < k1) nf4_dequant_tile_generic(W, n0, n1, k_fast_end, k1, out + (k_fast_end - k0), ldo);
}

// ---- forward micro-kernel: y tile = x panel . W panel^T --------------------------------------
// out[i * ldo + 0 .. kv) (+)= row i of acc for i < mv: the micro-tiles' write-back of rows of
// 2 vectors (forward: a tile of y, backward: a tile of dx).
inline void store_rows(const V (*acc)[2], int mv, int kv, float* out, int64_t ldo, bool accumulate) {
  for (int i = 0; i < mv; ++i) {
    float* o = out + i * ldo;
    if (kv == 2 * V::kLanes) {
      if (accumulate) {
        store(o, add(acc[i][0], load(o)));
        store(o + V::kLanes, add(acc[i][1], load(o + V::kLanes)));
      } else {
        store(o, acc[i][0]);
        store(o + V::kLanes, acc[i][1]);
      }
    } else {
      float row[2 * V::kLanes];
      store(row, acc[i][0]);
      store(row + V::kLanes, acc[i][1]);
      for (int k = 0; k < kv; ++k) o[k] = accumulate ? o[k] + row[k] : row[k];
    }
  }
}

// Forward: y[i, j] (+)= sum_k xp[k, i] wp[k, j]. Vectors run along j (W rows = y columns), so the
// tile is written back as contiguous rows of y; x values are broadcast.
void gemm_tile(int64_t kc, const float* xp, const float* wp, float* y, int64_t ldy, int mv, int nv, bool accumulate) {
  V acc[kGemmMR][2];
  for (int i = 0; i < kGemmMR; ++i) acc[i][0] = acc[i][1] = zero();
  for (int64_t k = 0; k < kc; ++k) {
    const V w0 = load(wp + k * kGemmNR), w1 = load(wp + k * kGemmNR + V::kLanes);
    const float* xk = xp + k * kGemmMR;
#pragma GCC unroll 16
    for (int i = 0; i < kGemmMR; ++i) {
      const V b = set1(xk[i]);
      acc[i][0] = fma(w0, b, acc[i][0]);
      acc[i][1] = fma(w1, b, acc[i][1]);
    }
  }
  store_rows(acc, mv, nv, y, ldy, accumulate);
}

// ---- forward W panel packing: panel[k * kGemmNR + j] = rows[j * ld + k] -------------------------
// A square block of V::kLanes rows x V::kLanes columns at a time, transposed in registers
// (simd::transpose_block, about 5 shuffles per vector); the scalar loop this replaced cost ~1.5
// cycles per weight, a third of the FMA work at M = 128.

void pack_panel(const float* rows, int64_t ld, int64_t kc, float* panel) {
  constexpr int L = V::kLanes;
  int64_t k0 = 0;
  for (; k0 + L <= kc; k0 += L)
    for (int jb = 0; jb < kGemmNR; jb += L) {
      decltype(V::v) r[L], out[L];
      for (int j = 0; j < L; ++j) r[j] = load(rows + (jb + j) * ld + k0).v;
      transpose_block(r, out);
      for (int c = 0; c < L; ++c) store(panel + (k0 + c) * kGemmNR + jb, V{out[c]});
    }
  for (; k0 < kc; ++k0)
    for (int j = 0; j < kGemmNR; ++j) panel[k0 * kGemmNR + j] = rows[j * ld + k0];
}

// ---- forward x panel packing: panel[k * kGemmMR + i] = x[(m0 + i) * K + k] ----------------------
// kGemmMR (12 / 6) rows of x through the same block transpose, padded to V::kLanes rows with
// zeros; each column is stored as kGemmMR floats. Rows past mv are zero in the panel.
void pack_x_panel(const float* x, int64_t K, int mv, float* panel) {
  constexpr int L = V::kLanes;
  static_assert(kGemmMR <= L, "x panel wider than a transposed block");
  int64_t k0 = 0;
  for (; k0 + L <= K; k0 += L) {
    decltype(V::v) r[L], out[L];
    for (int i = 0; i < L; ++i) r[i] = i < mv ? load(x + i * K + k0).v : zero().v;
    transpose_block(r, out);
    for (int c = 0; c < L; ++c) {
      alignas(64) float col[L];
      store(col, V{out[c]});
      std::memcpy(panel + (k0 + c) * kGemmMR, col, sizeof(float) * kGemmMR);
    }
  }
  for (; k0 < K; ++k0)
    for (int i = 0; i < kGemmMR; ++i) panel[k0 * kGemmMR + i] = i < mv ? x[i * K + k0] : 0.0f;
}

// ---- backward micro-kernel: dx tile = dy rows . W tile --------------------------------------
void gemm_t_tile(int64_t nc, const float* dyp, const float* w, int64_t ldw, float* dx, int64_t ldx, int mv, int kv,
                 bool accumulate) {
  V acc[kGemmTMR][2];
  for (int i = 0; i < kGemmTMR; ++i) acc[i][0] = acc[i][1] = zero();
  for (int64_t n = 0; n < nc; ++n) {
    const V w0 = load(w + n * ldw), w1 = load(w + n * ldw + V::kLanes);
    const float* dn = dyp + n * kGemmTMR;  // rows past mv are zero in the panel
#pragma GCC unroll 16
    for (int i = 0; i < kGemmTMR; ++i) {
      const V b = set1(dn[i]);
      acc[i][0] = fma(w0, b, acc[i][0]);
      acc[i][1] = fma(w1, b, acc[i][1]);
    }
  }
  store_rows(acc, mv, kv, dx, ldx, accumulate);
}

}  // namespace
}  // namespace ecomllm::quant
