// The softmax's exponentials for AVX-512 (see exp_shifted_avx512 in cross_entropy.h).
// GCC 12's AVX-512 headers build some intrinsics from _mm512_undefined_*() and then warn about it.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define ECOM_SIMD_AVX512 1
#include "nn/cross_entropy.h"
#include "nn/exp_simd.h"
#include "nn/nn_math.h"

namespace ecomllm::nn {
void exp_shifted_avx512(float* dst, const float* src, int64_t n, float shift) {
  using namespace vec_math;
  int64_t i = 0;
  for (; i + V::kLanes <= n; i += V::kLanes) store(dst + i, exp_v(sub(load(src + i), set1(shift))));
  for (; i < n; ++i) dst[i] = exp_approx(src[i] - shift);
}
}  // namespace ecomllm::nn
