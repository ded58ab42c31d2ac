// RMSNorm as Hugging Face's LlamaRMSNorm: y = w * (x * rstd), rstd = 1 / sqrt(mean_c(x^2) + eps).
#pragma once

#include <cstdint>

namespace ecomllm::nn {

// y[N,C], rstd[N] (saved for backward) from x[N,C] and w[C].
void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t N, int64_t C, float eps);
// dx[N,C] += dL/dx and dw[C] += dL/dw from dy[N,C]. dw may be nullptr (frozen weight), dx may be
// nullptr (input needs no gradient). x, w, rstd as in the forward.
void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                      int64_t N, int64_t C);

}  // namespace ecomllm::nn
