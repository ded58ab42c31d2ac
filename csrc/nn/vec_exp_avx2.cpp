// exp over arrays for AVX2 + FMA (see nn/vec_exp.h).
#define ECOM_SIMD_AVX2 1
#include "nn/exp_simd.h"
#include "nn/vec_exp.h"

namespace ecomllm::nn {
void exp_shifted_avx2(float* dst, const float* src, int64_t n, float shift, bool zero_neg_inf) {
  vec_math::exp_shifted_range(dst, src, n, shift, zero_neg_inf);
}
}  // namespace ecomllm::nn
