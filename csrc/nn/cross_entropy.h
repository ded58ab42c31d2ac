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

}  // namespace ecomllm::nn
