#include "nn/rope.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "base/error.h"
#include "base/parallel.h"

namespace ecomllm::nn {
namespace {

void check_args(const int32_t* pos, int64_t N, int64_t H, int64_t D, float theta) {
  ECOM_CHECK_ARG(N >= 0 && H > 0 && D > 0, "rope: bad sizes N=", N, " H=", H, " D=", D);
  ECOM_CHECK_ARG(D % 2 == 0, "rope: head dim D must be even, got ", D);
  ECOM_CHECK_ARG(std::isfinite(theta) && theta > 1.0f, "rope: theta must be a finite number > 1, got ", theta);
  for (int64_t n = 0; n < N; ++n) ECOM_CHECK_ARG(pos[n] >= 0, "rope: position ", pos[n], " at row ", n, " is negative");
}

// sign = -1 rotates by +angle (forward), +1 by -angle (backward, R^T).
void rotate(float* x, const int32_t* pos, int64_t N, int64_t H, int64_t D, float theta, float sign) {
  check_args(pos, N, H, D, theta);
  const int64_t half = D / 2;
  std::vector<float> inv_freq(half);
  rope_inv_freq(inv_freq.data(), D, theta);
  parallel_for(0, N, std::max<int64_t>(1, 4096 / (H * D)), [&](int64_t n0, int64_t n1) {
    std::vector<float> cs(half), sn(half);
    for (int64_t n = n0; n < n1; ++n) {
      const float p = static_cast<float>(pos[n]);
      for (int64_t i = 0; i < half; ++i) {
        // float32 angle as HF; cos/sin of it evaluated in double and rounded (within 1 ulp of torch).
        const double a = static_cast<double>(p * inv_freq[i]);
        cs[i] = static_cast<float>(std::cos(a));
        sn[i] = sign * static_cast<float>(std::sin(a));
      }
      for (int64_t h = 0; h < H; ++h) {
        float* x1 = x + (n * H + h) * D;
        float* x2 = x1 + half;
        for (int64_t i = 0; i < half; ++i) {
          const float a = x1[i], b = x2[i];
          x1[i] = a * cs[i] + b * sn[i];
          x2[i] = b * cs[i] - a * sn[i];
        }
      }
    }
  });
}

}  // namespace

void rope_inv_freq(float* inv_freq, int64_t D, float theta) {
  // HF: 1.0 / (base ** (arange(0, D, 2, float32) / D)): exponent divided in float32, the power
  // rounded to float32, the reciprocal in float32.
  for (int64_t i = 0; i < D / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(D);
    const float p = static_cast<float>(std::pow(static_cast<double>(theta), static_cast<double>(e)));
    inv_freq[i] = 1.0f / p;
  }
}

void rope_forward(float* x, const int32_t* pos, int64_t N, int64_t H, int64_t D, float theta) {
  rotate(x, pos, N, H, D, theta, -1.0f);
}

void rope_backward(float* dx, const int32_t* pos, int64_t N, int64_t H, int64_t D, float theta) {
  rotate(dx, pos, N, H, D, theta, 1.0f);
}

}  // namespace ecomllm::nn
