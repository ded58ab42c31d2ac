#include "nn/rmsnorm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "base/error.h"
#include "base/parallel.h"
#include "nn/nn_math.h"

namespace ecomllm::nn {

void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t N, int64_t C, float eps) {
  ECOM_CHECK_ARG(N >= 0 && C > 0, "rmsnorm: bad sizes N=", N, " C=", C);
  parallel_for(0, N, std::max<int64_t>(1, 8192 / C), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* xr = x + n * C;
      float* yr = y + n * C;
      const float ms = dot_f32(xr, xr, C) / static_cast<float>(C);
      const float r = 1.0f / std::sqrt(ms + eps);
      rstd[n] = r;
      for (int64_t c = 0; c < C; ++c) yr[c] = w[c] * (xr[c] * r);
    }
  });
}

// With xhat = x * r:  dL/dx_c = r * (w_c dy_c) - xhat_c * r * mean_k(w_k dy_k xhat_k),
//                     dL/dw_c = sum_n dy_nc * xhat_nc.
void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                      int64_t N, int64_t C) {
  ECOM_CHECK_ARG(N >= 0 && C > 0, "rmsnorm: bad sizes N=", N, " C=", C);
  if (dx == nullptr && dw == nullptr) return;
  // Fixed row chunks (independent of the thread count at run time only through max_threads) with
  // one private dw partial each, summed in chunk order afterwards.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(max_threads(), N));
  const int64_t rows_per = (N + chunks - 1) / std::max<int64_t>(chunks, 1);
  std::vector<float> dw_part(dw ? chunks * C : 0, 0.0f);
  parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
    std::vector<float> wdy(C);
    for (int64_t k = k0; k < k1; ++k) {
      float* dwp = dw ? dw_part.data() + k * C : nullptr;
      for (int64_t n = k * rows_per; n < std::min(N, (k + 1) * rows_per); ++n) {
        const float* xr = x + n * C;
        const float* dyr = dy + n * C;
        const float r = rstd[n];
        if (dwp)
          for (int64_t c = 0; c < C; ++c) dwp[c] += dyr[c] * (xr[c] * r);
        if (dx) {
          for (int64_t c = 0; c < C; ++c) wdy[c] = w[c] * dyr[c];
          const float m = dot_f32(wdy.data(), xr, C) * r * r * r / static_cast<float>(C);
          float* dxr = dx + n * C;
          for (int64_t c = 0; c < C; ++c) dxr[c] += r * wdy[c] - m * xr[c];
        }
      }
    }
  });
  if (dw)
    for (int64_t k = 0; k < chunks; ++k)
      for (int64_t c = 0; c < C; ++c) dw[c] += dw_part[k * C + c];
}

}  // namespace ecomllm::nn
