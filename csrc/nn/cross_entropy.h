// Softmax cross-entropy over rows of logits, Hugging Face's ignore index -100.
#pragma once

#include <cstdint>

namespace ecomllm::nn {

inline constexpr int32_t kIgnoreIndex = -100;

// logits [n,V], labels [n]: a class id in [0,V) or -100 (ignored); other values -> ValueError.
// Returns the SUM over non-ignored rows of -log_softmax(logits)[label] (accumulated in double).
// In place, logits become grad_scale * (softmax - onehot) for non-ignored rows and 0 for ignored
// rows. Callers process the vocabulary projection in row chunks so [N,V] never lives at once.
double cross_entropy_forward_backward(float* logits, const int32_t* labels, int64_t n, int64_t V, float grad_scale);
// The same sum, without a gradient.
double cross_entropy_forward(const float* logits, const int32_t* labels, int64_t n, int64_t V);

// dst[i] = exp_approx(src[i] - shift) for i < n (dst may alias src): the softmax's exponentials,
// built for AVX2 + FMA and AVX-512 (cross_entropy_avx2.cpp / _avx512.cpp; only called on such CPUs).
void exp_shifted_avx2(float* dst, const float* src, int64_t n, float shift);
void exp_shifted_avx512(float* dst, const float* src, int64_t n, float shift);

}  // namespace ecomllm::nn
