// AVX2 + FMA distance kernels (compiled with -mavx2 -mfma). Four accumulators over 32-float steps;
// the last n % 8 elements go through a scalar tail with the same operation.
#include <immintrin.h>

#include <cstring>

#include "index/distance.h"

namespace ecomllm::index {
namespace {

// load(p): 8 elements of the stored type as floats; scalar(p): one element.
inline __m256 load(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load(const uint16_t* p) {  // bf16 is the top half of an fp32
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline __m256 load(const int8_t* p) {
  int64_t bytes;
  std::memcpy(&bytes, p, 8);
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(bytes)));
}
inline float scalar(float x) { return x; }
inline float scalar(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float scalar(int8_t x) { return static_cast<float>(x); }

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

struct L2Op {
  static __m256 step(__m256 acc, __m256 q, __m256 x) {
    const __m256 d = _mm256_sub_ps(q, x);
    return _mm256_fmadd_ps(d, d, acc);
  }
  static float step(float acc, float q, float x) { return acc + (q - x) * (q - x); }
};
struct DotOp {
  static __m256 step(__m256 acc, __m256 q, __m256 x) { return _mm256_fmadd_ps(q, x, acc); }
  static float step(float acc, float q, float x) { return acc + q * x; }
};

// Four independent accumulators over 32-float steps: an FMA has 4-5 cycles of latency, so fewer
// chains leave the FMA units idle (a 384-dim dot product with two chains is latency-bound).
template <typename Op, typename T>
float reduce(const float* q, const T* x, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = Op::step(s0, load(q + i), load(x + i));
    s1 = Op::step(s1, load(q + i + 8), load(x + i + 8));
    s2 = Op::step(s2, load(q + i + 16), load(x + i + 16));
    s3 = Op::step(s3, load(q + i + 24), load(x + i + 24));
  }
  for (; i + 8 <= n; i += 8) s0 = Op::step(s0, load(q + i), load(x + i));
  float s = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < n; ++i) s = Op::step(s, q[i], scalar(x[i]));
  return s;
}

float l2_f32(const float* q, const float* x, int64_t n) { return reduce<L2Op>(q, x, n); }
float dot_f32(const float* q, const float* x, int64_t n) { return reduce<DotOp>(q, x, n); }
float l2_bf16(const float* q, const uint16_t* x, int64_t n) { return reduce<L2Op>(q, x, n); }
float dot_bf16(const float* q, const uint16_t* x, int64_t n) { return reduce<DotOp>(q, x, n); }
float dot_i8(const float* q, const int8_t* x, int64_t n) { return reduce<DotOp>(q, x, n); }

const DistanceKernels kAvx2{l2_f32, dot_f32, l2_bf16, dot_bf16, dot_i8};

}  // namespace

const DistanceKernels& simd::avx2_distance_kernels() { return kAvx2; }

}  // namespace ecomllm::index
