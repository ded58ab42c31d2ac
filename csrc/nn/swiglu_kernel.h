// SwiGLU element loops shared by swiglu.cpp (baseline x86-64) and swiglu_avx2.cpp (-mavx2 -mfma):
// the same source, auto-vectorised for each instruction set. A file that includes this must put
// `#pragma GCC optimize("no-trapping-math")` first (see swiglu.cpp), or the loops stay scalar.
#pragma once

#include <cstdint>

#include "nn/nn_math.h"

namespace ecomllm::nn::swiglu_detail {
namespace {  // internal linkage: each file keeps its own build of these (baseline or AVX2)

// sigmoid(g) = 1 / (1 + exp(-g)); exp_approx clamps, so g < -88 gives ~1e-38 (not NaN) and g > 87 gives 1.
inline float sigmoid(float g) { return 1.0f / (1.0f + exp_approx(-g)); }

// Elements [i0, i1) of swiglu_forward / swiglu_backward (swiglu.h).
inline void forward_range(float* h, const float* g, const float* u, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) h[i] = g[i] * sigmoid(g[i]) * u[i];
}

inline void backward_range(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t i0,
                           int64_t i1, bool accumulate) {
  for (int64_t i = i0; i < i1; ++i) {
    const float s = sigmoid(g[i]);
    const float silu = g[i] * s;
    const float dgi = dh[i] * u[i] * (s + silu * (1.0f - s)), dui = dh[i] * silu;
    dg[i] = accumulate ? dg[i] + dgi : dgi;
    du[i] = accumulate ? du[i] + dui : dui;
  }
}

}  // namespace
}  // namespace ecomllm::nn::swiglu_detail
