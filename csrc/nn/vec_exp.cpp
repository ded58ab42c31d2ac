// First line: the scalar loops only vectorise without trapping math (see swiglu.cpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include "nn/vec_exp.h"

#include <limits>

#include "base/cpu_features.h"
#include "nn/nn_math.h"

namespace ecomllm::nn {
namespace {

void exp_dispatch(float* dst, const float* src, int64_t n, float shift, bool zero_neg_inf) {
  const SimdLevel level = simd_level();
  if (level >= SimdLevel::AVX512) {
    exp_shifted_avx512(dst, src, n, shift, zero_neg_inf);
  } else if (level >= SimdLevel::AVX2) {
    exp_shifted_avx2(dst, src, n, shift, zero_neg_inf);
  } else {
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n; ++i) dst[i] = zero_neg_inf && src[i] == kNegInf ? 0.0f : exp_approx(src[i] - shift);
  }
}

}  // namespace

void exp_shifted(float* dst, const float* src, int64_t n, float shift) { exp_dispatch(dst, src, n, shift, false); }

void exp_shifted_or_zero(float* dst, const float* src, int64_t n, float shift) {
  exp_dispatch(dst, src, n, shift, true);
}

}  // namespace ecomllm::nn
