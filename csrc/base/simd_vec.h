// A small fp32 vector type for kernels written once and compiled per instruction set: include it
// from a file built with -mavx2 -mfma (after #define ECOM_SIMD_AVX2) or with the AVX-512 flags
// (after #define ECOM_SIMD_AVX512). Everything has internal linkage, so the linker never hands one
// ISA's build to code running on a CPU that lacks it. Used by nn/swiglu_simd.h and
// nn/lora_kernels_simd.h and quant/nf4_kernels_simd.h.
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
#else
#error "define ECOM_SIMD_AVX2 or ECOM_SIMD_AVX512 before including base/simd_vec.h"
#endif

}  // namespace
}  // namespace ecomllm::simd
