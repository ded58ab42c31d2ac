// SwiGLU gate of the Llama MLP: h = silu(g) * u, elementwise.
#pragma once

#include <cstdint>

namespace ecomllm::nn {

// h[n] = silu(g[n]) * u[n], silu(g) = g * sigmoid(g).
void swiglu_forward(float* h, const float* g, const float* u, int64_t n);
// dg[n] += dh * u * sigmoid(g) * (1 + g * (1 - sigmoid(g))),  du[n] += dh * silu(g).
void swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n);

}  // namespace ecomllm::nn
