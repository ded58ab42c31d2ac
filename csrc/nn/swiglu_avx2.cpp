// SwiGLU element loops built with -mavx2 -mfma (8 lanes instead of SSE2's 4); chosen at run time
// by swiglu.cpp. First line: the loops only vectorise without trapping math (see swiglu.cpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include "nn/swiglu.h"
#include "nn/swiglu_kernel.h"

namespace ecomllm::nn {

void swiglu_forward_range_avx2(float* h, const float* g, const float* u, int64_t i0, int64_t i1) {
  swiglu_detail::forward_range(h, g, u, i0, i1);
}

void swiglu_backward_range_avx2(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t i0,
                                int64_t i1) {
  swiglu_detail::backward_range(dg, du, dh, g, u, i0, i1);
}

}  // namespace ecomllm::nn
