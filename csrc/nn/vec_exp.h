// exp over arrays for the softmaxes (cross-entropy, attention), on explicit AVX2 / AVX-512 loops
// where the CPU has them (vec_exp_avx2.cpp, vec_exp_avx512.cpp; see nn/exp_simd.h for why not
// GCC's auto-vectorisation) and exp_approx (nn/nn_math.h) elsewhere.
#pragma once

#include <cstdint>

namespace ecomllm::nn {

// dst[i] = exp_approx(src[i] - shift) for i < n (dst may alias src).
void exp_shifted(float* dst, const float* src, int64_t n, float shift);
// The same, with dst[i] = 0 where src[i] is -inf (masked scores), not exp_approx's ~1e-38.
void exp_shifted_or_zero(float* dst, const float* src, int64_t n, float shift);

// The per-ISA loops behind them (only called on CPUs that have the instructions).
void exp_shifted_avx2(float* dst, const float* src, int64_t n, float shift, bool zero_neg_inf);
void exp_shifted_avx512(float* dst, const float* src, int64_t n, float shift, bool zero_neg_inf);

}  // namespace ecomllm::nn
