// SwiGLU gate of the Llama MLP: h = silu(g) * u, elementwise.
#pragma once

#include <cstdint>

namespace ecomllm::nn {

// h[n] = silu(g[n]) * u[n], silu(g) = g * sigmoid(g).
void swiglu_forward(float* h, const float* g, const float* u, int64_t n);
// dg[n] += dh * u * sigmoid(g) * (1 + g * (1 - sigmoid(g))),  du[n] += dh * silu(g)
// (accumulate = false: = instead of +=, dg and du need not be initialised).
void swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n,
                     bool accumulate = true);

// Elements [i0, i1) of the two, built for AVX2 + FMA and for AVX-512 (swiglu_avx2.cpp,
// swiglu_avx512.cpp; only called on such CPUs).
void swiglu_forward_range_avx2(float* h, const float* g, const float* u, int64_t i0, int64_t i1);
void swiglu_backward_range_avx2(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t i0,
                                int64_t i1, bool accumulate);
void swiglu_forward_range_avx512(float* h, const float* g, const float* u, int64_t i0, int64_t i1);
void swiglu_backward_range_avx512(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t i0,
                                  int64_t i1, bool accumulate);

}  // namespace ecomllm::nn
