// Driver and scalar reference of the LoRA rank pass (see lora_kernels.h).
#include "nn/lora_kernels.h"

#include <algorithm>
#include <vector>

#include "base/buffer.h"
#include "base/cpu_features.h"
#include "base/error.h"
#include "base/parallel.h"

namespace ecomllm::nn {

void lora_rank_pass_rows_scalar(const RankPass& ps, int64_t m0, int64_t m1, float* d_partial) {
  const int64_t N = ps.N, r = ps.r;
  for (int64_t m = m0; m < m1; ++m) {
    const float* y = ps.y + m * N;
    if (ps.p) {
      for (int64_t j = 0; j < r; ++j) {
        float s = 0.0f;
        for (int64_t n = 0; n < N; ++n) s += y[n] * ps.p[n * r + j];
        ps.g[m * r + j] = ps.scale_g * s;
      }
    }
    if (ps.q)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = 0; j < r; ++j) d_partial[n * r + j] += y[n] * ps.q[m * r + j];
  }
}

namespace {
int64_t lanes() {
  switch (simd_level()) {
    case SimdLevel::AVX512: return 16;
    case SimdLevel::AVX2: return 8;
    default: return 0;
  }
}
}  // namespace

bool lora_rank_pass_supported(int64_t r) {
  const int64_t l = lanes();
  return l > 0 && r > 0 && r % l == 0;
}

void lora_rank_pass(const RankPass& ps) {
  ECOM_CHECK_ARG(ps.y && ps.M > 0 && ps.N > 0 && ps.r > 0, "lora_rank_pass: empty or null input (M=", ps.M,
                 " N=", ps.N, " r=", ps.r, ")");
  ECOM_CHECK_ARG(!ps.p || ps.g, "lora_rank_pass: p given without g");
  ECOM_CHECK_ARG(!ps.q || ps.d, "lora_rank_pass: q given without d");
  const SimdLevel level = simd_level();
  const RankPassRows rows = level >= SimdLevel::AVX512 ? lora_rank_pass_rows_avx512
                            : level >= SimdLevel::AVX2 ? lora_rank_pass_rows_avx2
                                                       : lora_rank_pass_rows_scalar;
  ECOM_CHECK_ARG(rows == lora_rank_pass_rows_scalar || ps.r % lanes() == 0, "lora_rank_pass: r = ", ps.r,
                 " is not a multiple of ", lanes(), " (see lora_rank_pass_supported)");
  // One block of rows per thread, each with its own D partial (N x r: 128 KiB at N = 2048, r = 16),
  // summed into D afterwards.
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(max_threads(), ps.M / 8));
  const int64_t dn = ps.q ? ps.N * ps.r : 0;
  AlignedBuffer partials(sizeof(float) * static_cast<size_t>(std::max<int64_t>(1, blocks * dn)), /*zero=*/true);
  parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      rows(ps, ps.M * b / blocks, ps.M * (b + 1) / blocks, partials.as<float>() + b * dn);
  });
  if (!ps.q) return;
  const float* part = partials.as<float>();
  parallel_for(0, dn, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float s = 0.0f;
      for (int64_t b = 0; b < blocks; ++b) s += part[b * dn + i];
      ps.d[i] += ps.scale_d * s;
    }
  });
}

}  // namespace ecomllm::nn
