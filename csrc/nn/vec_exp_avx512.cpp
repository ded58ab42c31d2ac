// exp over arrays for AVX-512 (see nn/vec_exp.h).
// GCC 12's AVX-512 headers build some intrinsics from _mm512_undefined_*() and then warn about it.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define ECOM_SIMD_AVX512 1
#include "nn/exp_simd.h"
#include "nn/vec_exp.h"

namespace ecomllm::nn {
void exp_shifted_avx512(float* dst, const float* src, int64_t n, float shift, bool zero_neg_inf) {
  vec_math::exp_shifted_range(dst, src, n, shift, zero_neg_inf);
}
}  // namespace ecomllm::nn
