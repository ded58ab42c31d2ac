#include "base/fma_peak.h"

#include <algorithm>
#include <chrono>

#include "base/cpu_features.h"
#include "base/error.h"
#include "base/parallel.h"

namespace ecomllm {

double fma_peak_loop_scalar(int64_t iters) {
  float acc[kFmaPeakChains];
  for (int j = 0; j < kFmaPeakChains; ++j) acc[j] = 0.001f * static_cast<float>(j);
  const float b = 0.9999f, c = 1e-4f;
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < kFmaPeakChains; ++j) acc[j] = acc[j] * b + c;
  float sum = 0.0f;
  for (float v : acc) sum += v;
  // The sum is kept observable so the loop cannot be dropped; it is always finite and small.
  return sum > 1e30f ? 0.0 : 2.0 * kFmaPeakChains * static_cast<double>(iters);
}

double fma_peak_gflops(double seconds, int threads) {
  ECOM_CHECK_ARG(seconds > 0 && seconds <= 60, "fma_peak_gflops: seconds must be in (0, 60], got ", seconds);
  const int nt = threads > 0 ? threads : max_threads();
  ECOM_CHECK_ARG(nt <= 4096, "fma_peak_gflops: threads = ", nt, " is too many");
  double (*loop)(int64_t) = fma_peak_loop_scalar;
  if (simd_level() == SimdLevel::AVX512)
    loop = fma_peak_loop_avx512;
  else if (simd_level() == SimdLevel::AVX2)
    loop = fma_peak_loop_avx2;
  using clock = std::chrono::steady_clock;
  int64_t iters = 1 << 16;
  double best = 0.0;
  const auto start = clock::now();
  while (true) {
    double flops = 0.0;
    const auto t0 = clock::now();
#pragma omp parallel num_threads(nt) reduction(+ : flops)
    flops += loop(iters);
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    best = std::max(best, flops / dt / 1e9);
    if (dt < 0.05) iters *= 2;  // rounds of >= 50 ms keep the parallel region's start-up out
    if (std::chrono::duration<double>(clock::now() - start).count() >= seconds) break;
  }
  return best;
}

}  // namespace ecomllm
