// The softmax's exponentials for AVX2 + FMA (see exp_shifted_avx2 in cross_entropy.h).
#define ECOM_SIMD_AVX2 1
#include "nn/cross_entropy.h"
#include "nn/exp_simd.h"
#include "nn/nn_math.h"

namespace ecomllm::nn {
void exp_shifted_avx2(float* dst, const float* src, int64_t n, float shift) {
  using namespace vec_math;
  int64_t i = 0;
  for (; i + V::kLanes <= n; i += V::kLanes) store(dst + i, exp_v(sub(load(src + i), set1(shift))));
  for (; i < n; ++i) dst[i] = exp_approx(src[i] - shift);
}
}  // namespace ecomllm::nn
