// fma_peak_loop built with the avx2 instruction set (see fma_peak.h).
#include <immintrin.h>

#include "base/fma_peak.h"

namespace ecomllm {

double fma_peak_loop_avx2(int64_t iters) {
  __m256 acc[kFmaPeakChains];
  for (int j = 0; j < kFmaPeakChains; ++j) acc[j] = _mm256_set1_ps(0.001f * static_cast<float>(j));
  const __m256 b = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(1e-4f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < kFmaPeakChains; ++j) acc[j] = _mm256_fmadd_ps(acc[j], b, c);
  }
  __m256 sum = acc[0];
  for (int j = 1; j < kFmaPeakChains; ++j) sum = _mm256_add_ps(sum, acc[j]);
  alignas(64) float lanes[8];
  _mm256_store_ps(lanes, sum);
  return lanes[0] > 1e30f ? 0.0 : 2.0 * 8 * kFmaPeakChains * static_cast<double>(iters);
}

}  // namespace ecomllm
