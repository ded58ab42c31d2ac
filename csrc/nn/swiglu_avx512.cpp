// SwiGLU element loops for AVX-512 (16 lanes), chosen at run time by swiglu.cpp. First line:
// the scalar tail (swiglu_kernel.h) only vectorises without trapping math (see swiglu.cpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
// GCC 12's AVX-512 headers build some intrinsics from _mm512_undefined_*() and then warn about it.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define ECOM_SIMD_AVX512 1
#include "nn/swiglu.h"
#include "nn/swiglu_simd.h"

namespace ecomllm::nn {

void swiglu_forward_range_avx512(float* h, const float* g, const float* u, int64_t i0, int64_t i1) {
  swiglu_simd::forward_range(h, g, u, i0, i1);
}

void swiglu_backward_range_avx512(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t i0,
                                  int64_t i1, bool accumulate) {
  swiglu_simd::backward_range(dg, du, dh, g, u, i0, i1, accumulate);
}

}  // namespace ecomllm::nn
