// AVX-512 distance kernels (compiled with -mavx512f/bw/vl/dq). Four accumulators over 64-float
// steps hide the FMA latency; the tail is one masked 16-lane step, so no scalar loop remains.
// GCC 12's AVX-512 headers build some intrinsics from _mm512_undefined_*() and then warn about it.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "index/distance.h"

namespace ecomllm::index {
namespace {

inline __mmask16 tail_mask(int64_t r) { return static_cast<__mmask16>((1u << r) - 1u); }

// load(p) / load(p, mask): 16 elements of the stored type as floats (masked lanes read as 0).
// 16 bf16 bit patterns -> 16 floats (bf16 is the top half of an fp32).
inline __m512 bf16x16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
inline __m512 load(const uint16_t* p) { return bf16x16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline __m512 load(const uint16_t* p, __mmask16 m) { return bf16x16(_mm256_maskz_loadu_epi16(m, p)); }
inline __m512 load(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline __m512 load(const int8_t* p, __mmask16 m) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p))); }
inline __m512 load(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }

// One kernel body per (stored type, op): Op::step(acc, q, x) accumulates one 16-lane step.
struct L2Op {
  static __m512 step(__m512 acc, __m512 q, __m512 x) {
    const __m512 d = _mm512_sub_ps(q, x);
    return _mm512_fmadd_ps(d, d, acc);
  }
};
struct DotOp {
  static __m512 step(__m512 acc, __m512 q, __m512 x) { return _mm512_fmadd_ps(q, x, acc); }
};

template <typename Op, typename T>
float reduce(const float* q, const T* x, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    s0 = Op::step(s0, load(q + i), load(x + i));
    s1 = Op::step(s1, load(q + i + 16), load(x + i + 16));
    s2 = Op::step(s2, load(q + i + 32), load(x + i + 32));
    s3 = Op::step(s3, load(q + i + 48), load(x + i + 48));
  }
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? static_cast<__mmask16>(0xffff) : tail_mask(n - i);
    s0 = Op::step(s0, load(q + i, m), load(x + i, m));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

float l2_f32(const float* q, const float* x, int64_t n) { return reduce<L2Op>(q, x, n); }
float dot_f32(const float* q, const float* x, int64_t n) { return reduce<DotOp>(q, x, n); }
float l2_bf16(const float* q, const uint16_t* x, int64_t n) { return reduce<L2Op>(q, x, n); }
float dot_bf16(const float* q, const uint16_t* x, int64_t n) { return reduce<DotOp>(q, x, n); }
float dot_i8(const float* q, const int8_t* x, int64_t n) { return reduce<DotOp>(q, x, n); }

const DistanceKernels kAvx512{l2_f32, dot_f32, l2_bf16, dot_bf16, dot_i8};

}  // namespace

const DistanceKernels& simd::avx512_distance_kernels() { return kAvx512; }

}  // namespace ecomllm::index
