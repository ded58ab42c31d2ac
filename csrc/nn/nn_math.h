// Small vectorisable math shared by the nn ops. Everything here is branch-free scalar code that
// GCC/Clang auto-vectorise at -O3 on baseline x86-64 (SSE2): no libm calls inside hot loops.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

namespace ecomllm::nn {

inline constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp(x) to ~2 ulp for x in [-87, 88]; inputs are clamped to that range (so exp of a very negative
// x is ~1e-38, not 0: callers that need an exact 0 for masked entries select it themselves).
// Cephes-style: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for exp(r), 2^n built in the
// exponent bits. The round-to-nearest of x*log2(e) uses the 1.5*2^23 magic-number trick.
// Always inlined: SIMD files (e.g. swiglu_avx2.cpp) use it too, and an out-of-line copy built
// with -mavx2 must never be what the linker hands to baseline code.
[[gnu::always_inline]] inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  const float t = x * 1.44269504088896341f + kMagic;
  const float n = t - kMagic;
  float r = x - n * 0.693359375f;  // ln2 split in a high part exact in float and a low part
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t tb;
  std::memcpy(&tb, &t, 4);
  const int32_t ni = tb - 0x4B400000;  // the integer n, read back from the magic sum's mantissa
  const int32_t sb = (ni + 127) << 23;
  float scale;
  std::memcpy(&scale, &sb, 4);
  return p * scale;
}

// Sum of n floats with 8 independent partial sums (vectorisable; deterministic for a given n).
inline float sum_f32(const float* x, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += x[i + j];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += x[i];
  return s;
}

// Dot product of n floats, same scheme as sum_f32.
inline float dot_f32(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Maximum of n >= 1 floats (-inf for n == 0).
inline float max_f32(const float* x, int64_t n) {
  float acc[8] = {kNegInf, kNegInf, kNegInf, kNegInf, kNegInf, kNegInf, kNegInf, kNegInf};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
  float m = kNegInf;
  for (int j = 0; j < 8; ++j) m = acc[j] > m ? acc[j] : m;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

}  // namespace ecomllm::nn
