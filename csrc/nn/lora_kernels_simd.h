// The LoRA rank pass's row kernel (lora_kernels.h) over a small vector type, compiled twice:
// lora_kernels_avx2.cpp and lora_kernels_avx512.cpp (define ECOM_SIMD_AVX2 / ECOM_SIMD_AVX512).
//
// A tile of kRows rows of Y and one vector of r columns at a time: per n, one vector of P and of D
// (a row of each), kRows broadcasts of Y[m, n], kRows FMAs into the G accumulators and kRows into
// D's row (two chains). Y is read once per vector of r (once in all for r = 16 with AVX-512).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "base/simd_vec.h"
#include "nn/lora_kernels.h"

namespace ecomllm::nn {
namespace {

using namespace simd;

#if defined(ECOM_SIMD_AVX512)
constexpr int kRows = 8;  // 8 G accumulators + 8 Q rows + P, D, broadcast: 21 of 32 registers
#else
constexpr int kRows = 5;  // 5 + 5 + 4 of 16 registers
#endif

// One tile: rows y[i] (i < kRows; rows past the pass's end point at zeros), columns [c, c + lanes).
template <bool kG, bool kD>
void rank_tile(const RankPass& ps, const float* const* y, const float* const* q, float* const* g, int64_t c,
               float* d_partial) {
  const int64_t N = ps.N, r = ps.r;
  V acc[kRows], qv[kRows];
  for (int i = 0; i < kRows; ++i) {
    acc[i] = zero();
    if constexpr (kD) qv[i] = load(q[i] + c);
  }
  for (int64_t n = 0; n < N; ++n) {
    V pv, d0, d1;
    if constexpr (kG) pv = load(ps.p + n * r + c);
    if constexpr (kD) {
      d0 = load(d_partial + n * r + c);
      d1 = zero();
    }
#pragma GCC unroll 8
    for (int i = 0; i < kRows; ++i) {
      const V b = set1(y[i][n]);
      if constexpr (kG) acc[i] = fma(b, pv, acc[i]);
      if constexpr (kD) {
        if (i % 2 == 0)
          d0 = fma(b, qv[i], d0);
        else
          d1 = fma(b, qv[i], d1);
      }
    }
    if constexpr (kD) store(d_partial + n * r + c, add(d0, d1));
  }
  if constexpr (kG)
    for (int i = 0; i < kRows; ++i)
      if (g[i]) store(g[i] + c, mul(acc[i], set1(ps.scale_g)));
}

template <bool kG, bool kD>
void rank_rows(const RankPass& ps, int64_t m0, int64_t m1, float* d_partial) {
  // Rows past m1 read this zero row (a row of Y or Q of that width) and write nothing.
  thread_local std::vector<float> zeros;
  if (static_cast<int64_t>(zeros.size()) < std::max(ps.N, ps.r)) zeros.assign(std::max(ps.N, ps.r), 0.0f);
  for (int64_t mt = m0; mt < m1; mt += kRows) {
    const float* y[kRows];
    const float* q[kRows];
    float* g[kRows];
    for (int i = 0; i < kRows; ++i) {
      const bool live = mt + i < m1;
      y[i] = live ? ps.y + (mt + i) * ps.N : zeros.data();
      q[i] = live && kD ? ps.q + (mt + i) * ps.r : zeros.data();
      g[i] = live && kG ? ps.g + (mt + i) * ps.r : nullptr;
    }
    for (int64_t c = 0; c < ps.r; c += V::kLanes) rank_tile<kG, kD>(ps, y, q, g, c, d_partial);
  }
}

void rank_pass_rows(const RankPass& ps, int64_t m0, int64_t m1, float* d_partial) {
  if (ps.p && ps.q)
    rank_rows<true, true>(ps, m0, m1, d_partial);
  else if (ps.p)
    rank_rows<true, false>(ps, m0, m1, d_partial);
  else if (ps.q)
    rank_rows<false, true>(ps, m0, m1, d_partial);
}

}  // namespace
}  // namespace ecomllm::nn
