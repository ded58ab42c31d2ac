// Thin products of LoRA's rank r, written for its shapes: one long dimension (tokens, features)
// against r (8-64) columns, where BLAS runs at a fraction of its speed (OpenBLAS reached ~13% of
// the FMA peak on them on Sapphire Rapids, and they took 13% of a training step).
//
// One pass over the rows of Y[M, N] computes, for P[N, r], Q[M, r] (fp32, row-major):
//   G[M, r]  = scale_g * Y P          (if P is given)
//   D[N, r] += scale_d * Y^T Q        (if Q is given)
// LoRA uses it as: u = x A^T (forward: Y = x, P = A^T), g = s dy B together with dB += s dy^T u
// (backward: Y = dy, P = B, Q = u: dy is read once for both), dA^T += xin^T g (Y = xin, Q = g).
// Vectors run along r, so r must be a multiple of the vector width (lora_rank_pass_supported);
// otherwise callers use BLAS.
#pragma once

#include <cstdint>

namespace ecomllm::nn {

struct RankPass {
  const float* y = nullptr;  // [M, N]
  int64_t M = 0, N = 0, r = 0;
  const float* p = nullptr;  // [N, r] or null (no G)
  float* g = nullptr;        // [M, r], written when p is set
  float scale_g = 1.0f;
  const float* q = nullptr;  // [M, r] or null (no D)
  float* d = nullptr;        // [N, r], accumulated when q is set
  float scale_d = 1.0f;
};

// True when the active SIMD level has a kernel for rank r.
bool lora_rank_pass_supported(int64_t r);
// Runs the pass (multi-threaded over rows of Y). Throws ValueError on inconsistent arguments or
// an unsupported r.
void lora_rank_pass(const RankPass& pass);

// Leaf kernel of one SIMD level: rows [m0, m1) of the pass, D's contributions added to d_partial
// [N, r] (unscaled), G written scaled. Exposed for the per-level tests.
using RankPassRows = void (*)(const RankPass& pass, int64_t m0, int64_t m1, float* d_partial);
void lora_rank_pass_rows_scalar(const RankPass& pass, int64_t m0, int64_t m1, float* d_partial);
void lora_rank_pass_rows_avx2(const RankPass& pass, int64_t m0, int64_t m1, float* d_partial);
void lora_rank_pass_rows_avx512(const RankPass& pass, int64_t m0, int64_t m1, float* d_partial);

}  // namespace ecomllm::nn
