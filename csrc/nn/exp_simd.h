// exp_approx (nn/nn_math.h) over a vector of base/simd_vec.h, for kernels compiled per
// instruction set (include after #define ECOM_SIMD_AVX2 / ECOM_SIMD_AVX512). Written with explicit
// intrinsics because GCC's auto-vectorisation of the scalar exp_approx (clamps turned into blends
// after the polynomial, constants spilled) ran ~10x slower on Sapphire Rapids. The arithmetic is
// exp_approx's step for step, so results agree with the scalar build to an ulp or two.
#pragma once

#include <cstdint>
#include <limits>

#include "base/simd_vec.h"
#include "nn/nn_math.h"

namespace ecomllm::nn::vec_math {
namespace {  // internal linkage: one build per instruction set

using namespace simd;

inline V clamp(V x, float lo, float hi) { return max(min(x, set1(hi)), set1(lo)); }

// exp_approx lane-wise.
inline V exp_v(V x) {
  x = clamp(x, -87.0f, 88.0f);
  const V magic = set1(12582912.0f);
  const V t = fma(x, set1(1.44269504088896341f), magic);
  const V n = sub(t, magic);
  V r = fnma(n, set1(0.693359375f), x);
  r = fnma(n, set1(-2.12194440e-4f), r);
  V p = set1(1.9875691500e-4f);
  p = fma(p, r, set1(1.3981999507e-3f));
  p = fma(p, r, set1(8.3334519073e-3f));
  p = fma(p, r, set1(4.1665795894e-2f));
  p = fma(p, r, set1(1.6666665459e-1f));
  p = fma(p, r, set1(5.0000001201e-1f));
  p = add(fma(mul(p, r), r, r), set1(1.0f));
  return mul(p, pow2_of_magic(t));
}

// dst[i] = exp_approx(src[i] - shift) for i < n (dst may alias src); 0 where src[i] is -inf when
// zero_neg_inf (masked scores). The body of nn/vec_exp.h's per-ISA loops.
inline void exp_shifted_range(float* dst, const float* src, int64_t n, float shift, bool zero_neg_inf) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  for (; i + V::kLanes <= n; i += V::kLanes) {
    const V x = load(src + i);
    const V e = exp_v(sub(x, set1(shift)));
    store(dst + i, zero_neg_inf ? zero_where_equal(x, kNegInf, e) : e);
  }
  for (; i < n; ++i) dst[i] = zero_neg_inf && src[i] == kNegInf ? 0.0f : exp_approx(src[i] - shift);
}

}  // namespace
}  // namespace ecomllm::nn::vec_math
