// First line of the file so that every function in it (headers included) shares the option:
// without it GCC will not if-convert the clamps of exp_approx and the hot loops stay scalar. We
// never read floating-point exception flags, so assuming no traps changes no result.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include "nn/swiglu.h"

#include "base/cpu_features.h"
#include "base/error.h"
#include "base/parallel.h"
#include "nn/swiglu_kernel.h"

namespace ecomllm::nn {
namespace {
constexpr int64_t kGrain = 16384;
}  // namespace

void swiglu_forward(float* h, const float* g, const float* u, int64_t n) {
  ECOM_CHECK_ARG(n >= 0, "swiglu: negative size ", n);
  const SimdLevel level = simd_level();
  parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
    if (level >= SimdLevel::AVX512)
      swiglu_forward_range_avx512(h, g, u, i0, i1);
    else if (level >= SimdLevel::AVX2)
      swiglu_forward_range_avx2(h, g, u, i0, i1);
    else
      swiglu_detail::forward_range(h, g, u, i0, i1);
  });
}

void swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n,
                     bool accumulate) {
  ECOM_CHECK_ARG(n >= 0, "swiglu: negative size ", n);
  const SimdLevel level = simd_level();
  parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
    if (level >= SimdLevel::AVX512)
      swiglu_backward_range_avx512(dg, du, dh, g, u, i0, i1, accumulate);
    else if (level >= SimdLevel::AVX2)
      swiglu_backward_range_avx2(dg, du, dh, g, u, i0, i1, accumulate);
    else
      swiglu_detail::backward_range(dg, du, dh, g, u, i0, i1, accumulate);
  });
}

}  // namespace ecomllm::nn
