// Rotary position embedding in Hugging Face's rotate_half convention (pairs element i with i + D/2),
// the layout of HF Llama/Mistral q_proj/k_proj weights (Meta's interleaved form would be wrong).
#pragma once

#include <cstdint>

namespace ecomllm::nn {

// In place on x viewed as [N, H, D] (a q or k projection output [N, H*D]), positions pos[N]:
//   inv_freq[i] = 1 / theta^(2i/D) for i < D/2 (as HF computes it in float32),
//   angle = float(pos[n]) * inv_freq[i] (float32 product, as HF),
//   y[i] = x[i] cos - x[i+D/2] sin ;  y[i+D/2] = x[i+D/2] cos + x[i] sin.
// D must be even and positions non-negative (ValueError otherwise).
void rope_forward(float* x, const int32_t* pos, int64_t N, int64_t H, int64_t D, float theta);
// In place on the gradient: dy -> dx = R^T dy (the inverse rotation). The one op that transforms
// its gradient in place instead of accumulating.
void rope_backward(float* dx, const int32_t* pos, int64_t N, int64_t H, int64_t D, float theta);

// inv_freq[D/2] exactly as the forward uses it (exposed for tests and the inference engine).
void rope_inv_freq(float* inv_freq, int64_t D, float theta);

}  // namespace ecomllm::nn
