// The AdamW element update shared by the scalar and SIMD files (the SIMD loops use it for tails).
#pragma once

#include <cmath>

#include "nn/adamw.h"

namespace ecomllm::nn {

// torch's order of operations (see adamw_update in adamw.h); lerp's two branches are ATen's.
inline void adamw_one(const AdamWScalars& s, float& p, float g, float& m, float& v) {
  if (s.has_decay) p = p * s.decay;
  m = s.w1 < 0.5f ? std::fma(s.w1, g - m, m) : std::fma(s.w1 - 1.0f, g - m, g);
  v = std::fma(s.w2 * g, g, v * s.beta2);
  const float denom = std::sqrt(v) / s.bc2_sqrt + s.eps;
  p = p + (s.neg_step * m) / denom;
}

}  // namespace ecomllm::nn
