// A small fp32 vector type for kernels written once and compiled per instruction set: include it
// from a file built with -mavx2 -mfma (after #define ECOM_SIMD_AVX2) or with the AVX-512 flags
// (after #define ECOM_SIMD_AVX512). Everything has internal linkage, so the linker never hands one
// ISA's build to code running on a CPU that lacks it. Used by nn/swiglu_simd.h,
// nn/lora_kernels_simd.h, quant/nf4_kernels_simd.h, quant/amx_tiles_amx.cpp, quant/bf16_pairs_avx512bf16.cpp
// and quant/nf4_decode_layout_avx512vbmi.cpp.
#pragma once

#include <immintrin.h>

namespace ecomllm::simd {
namespace {

#if defined(ECOM_SIMD_AVX512)
struct V {
  static constexpr int kLanes = 16;
  __m512 v;
};
inline V load(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void store(float* p, V a) { _mm512_storeu_ps(p, a.v); }
inline V set1(float f) { return {_mm512_set1_ps(f)}; }
inline V zero() { return {_mm512_setzero_ps()}; }
// Mask of the first `valid` of 16 lanes (clamped to 0..16).
inline __mmask16 lanes(long valid) {
  return valid >= 16 ? __mmask16(0xFFFF) : valid <= 0 ? __mmask16(0) : __mmask16((1u << valid) - 1);
}
inline V add(V a, V b) { return {_mm512_add_ps(a.v, b.v)}; }
inline V sub(V a, V b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline V mul(V a, V b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline V div(V a, V b) { return {_mm512_div_ps(a.v, b.v)}; }
inline V min(V a, V b) { return {_mm512_min_ps(a.v, b.v)}; }
inline V max(V a, V b) { return {_mm512_max_ps(a.v, b.v)}; }
inline V fma(V a, V b, V c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }   // a b + c
inline V fnma(V a, V b, V c) { return {_mm512_fnmadd_ps(a.v, b.v, c.v)}; }  // c - a b
inline float hsum(V a) { return _mm512_reduce_add_ps(a.v); }
// v with 0 in the lanes where x == value.
inline V zero_where_equal(V x, float value, V v) {
  return {_mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x.v, _mm512_set1_ps(value), _CMP_NEQ_UQ), v.v)};
}
// 2^n for the integer n held in the float t = n + 1.5 * 2^23 (a round-to-integer magic sum).
inline V pow2_of_magic(V t) {
  const __m512i n = _mm512_sub_epi32(_mm512_castps_si512(t.v), _mm512_set1_epi32(0x4B400000));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n, _mm512_set1_epi32(127)), 23))};
}
// out[c] = column c of the 16 x 16 block in r (r is clobbered).
inline void transpose_block(__m512* r, __m512* out) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // r[4 i + c], 128-bit lane L: element 4 L + c of rows 4 i .. 4 i + 3
  for (int i = 0; i < 4; ++i) {
    const __m512d lo0 = _mm512_castps_pd(t[4 * i]), lo1 = _mm512_castps_pd(t[4 * i + 2]);
    const __m512d hi0 = _mm512_castps_pd(t[4 * i + 1]), hi1 = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo0, lo1));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo0, lo1));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi0, hi1));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi0, hi1));
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 ab_lo = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44), ab_hi = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xEE);
    const __m512 cd_lo = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44);
    const __m512 cd_hi = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xEE);
    out[c] = _mm512_shuffle_f32x4(ab_lo, cd_lo, 0x88);
    out[4 + c] = _mm512_shuffle_f32x4(ab_lo, cd_lo, 0xDD);
    out[8 + c] = _mm512_shuffle_f32x4(ab_hi, cd_hi, 0x88);
    out[12 + c] = _mm512_shuffle_f32x4(ab_hi, cd_hi, 0xDD);
  }
}
#elif defined(ECOM_SIMD_AVX2)
struct V {
  static constexpr int kLanes = 8;
  __m256 v;
};
inline V load(const float* p) { return {_mm256_loadu_ps(p)}; }
inline void store(float* p, V a) { _mm256_storeu_ps(p, a.v); }
inline V set1(float f) { return {_mm256_set1_ps(f)}; }
inline V zero() { return {_mm256_setzero_ps()}; }
inline V add(V a, V b) { return {_mm256_add_ps(a.v, b.v)}; }
inline V sub(V a, V b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline V mul(V a, V b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline V div(V a, V b) { return {_mm256_div_ps(a.v, b.v)}; }
inline V min(V a, V b) { return {_mm256_min_ps(a.v, b.v)}; }
inline V max(V a, V b) { return {_mm256_max_ps(a.v, b.v)}; }
inline V fma(V a, V b, V c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline V fnma(V a, V b, V c) { return {_mm256_fnmadd_ps(a.v, b.v, c.v)}; }
inline float hsum(V a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline V zero_where_equal(V x, float value, V v) {
  return {_mm256_andnot_ps(_mm256_cmp_ps(x.v, _mm256_set1_ps(value), _CMP_EQ_OQ), v.v)};
}
inline V pow2_of_magic(V t) {
  const __m256i n = _mm256_sub_epi32(_mm256_castps_si256(t.v), _mm256_set1_epi32(0x4B400000));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23))};
}
// out[c] = column c of the 8 x 8 block in r (r is clobbered).
inline void transpose_block(__m256* r, __m256* out) {
  __m256 t[8], s[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // s[4 i + c], 128-bit lane L: element 4 L + c of rows 4 i .. 4 i + 3
  for (int i = 0; i < 2; ++i) {
    s[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    s[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    s[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    s[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    out[c] = _mm256_permute2f128_ps(s[c], s[4 + c], 0x20);
    out[4 + c] = _mm256_permute2f128_ps(s[c], s[4 + c], 0x31);
  }
}
#else
#error "define ECOM_SIMD_AVX2 or ECOM_SIMD_AVX512 before including base/simd_vec.h"
#endif

}  // namespace
}  // namespace ecomllm::simd
