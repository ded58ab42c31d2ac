// First line of the file so that every function in it (headers included) shares the option:
// without it GCC will not if-convert the clamps of exp_approx and the hot loops stay scalar. We
// never read floating-point exception flags, so assuming no traps changes no result.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include "nn/swiglu.h"

#include "base/error.h"
#include "base/parallel.h"
#include "nn/nn_math.h"

namespace ecomllm::nn {
namespace {
constexpr int64_t kGrain = 16384;

// sigmoid(g) = 1 / (1 + exp(-g)); exp_approx clamps, so g < -88 gives ~1e-38 (not NaN) and g > 87 gives 1.
inline float sigmoid(float g) { return 1.0f / (1.0f + exp_approx(-g)); }
}  // namespace

void swiglu_forward(float* h, const float* g, const float* u, int64_t n) {
  ECOM_CHECK_ARG(n >= 0, "swiglu: negative size ", n);
  parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) h[i] = g[i] * sigmoid(g[i]) * u[i];
  });
}

void swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n) {
  ECOM_CHECK_ARG(n >= 0, "swiglu: negative size ", n);
  parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float s = sigmoid(g[i]);
      const float silu = g[i] * s;
      dg[i] += dh[i] * u[i] * (s + silu * (1.0f - s));
      du[i] += dh[i] * silu;
    }
  });
}

}  // namespace ecomllm::nn
