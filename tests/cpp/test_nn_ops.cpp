// csrc/nn backward passes against central finite differences on micro cases. The ops are fp32, so
// the loss L = sum(out * R) (R fixed random) is accumulated in double and perturbations are
// large-ish (1e-2); tolerances are set for that noise (the Python tests compare with torch tightly).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "base/cpu_features.h"
#include "base/error.h"
#include "nn/attention.h"
#include "nn/cross_entropy.h"
#include "nn/nn_math.h"
#include "nn/vec_exp.h"
#include "nn/rmsnorm.h"
#include "nn/rope.h"
#include "nn/swiglu.h"

namespace ecomllm::nn {
namespace {

using Vec = std::vector<float>;

Vec randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  Vec v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

double weighted_sum(const Vec& out, const Vec& r) {
  double s = 0.0;
  for (size_t i = 0; i < out.size(); ++i) s += static_cast<double>(out[i]) * r[i];
  return s;
}

// Compares analytic[i] with (L(x + eps e_i) - L(x - eps e_i)) / 2 eps for every stride-th i.
void expect_fd(const char* what, Vec& x, const Vec& analytic, const std::function<double()>& loss,
               size_t stride = 1, float eps = 1e-2f, double tol = 2e-3) {
  ASSERT_EQ(x.size(), analytic.size());
  double worst = 0.0, scale = 1e-3;
  for (float a : analytic) scale = std::max(scale, static_cast<double>(std::fabs(a)));
  for (size_t i = 0; i < x.size(); i += stride) {
    const float x0 = x[i];
    x[i] = x0 + eps;
    const double lp = loss();
    x[i] = x0 - eps;
    const double lm = loss();
    x[i] = x0;
    const double fd = (lp - lm) / (2.0 * eps);
    worst = std::max(worst, std::fabs(fd - analytic[i]) / scale);
  }
  EXPECT_LE(worst, tol) << what << ": worst |fd - analytic| / max|analytic|";
}

TEST(NnOps, RmsnormGradientsMatchFiniteDifferences) {
  const int64_t N = 3, C = 7;
  Vec x = randn(N * C, 1), w = randn(C, 2), R = randn(N * C, 3);
  for (auto& v : w) v += 1.0f;
  Vec y(N * C), rstd(N);
  auto loss = [&] {
    rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
    return weighted_sum(y, R);
  };
  loss();
  Vec dx(N * C, 0.5f), dw(C, 0.25f);  // non-zero: backward must accumulate
  rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), N, C);
  for (auto& v : dx) v -= 0.5f;
  for (auto& v : dw) v -= 0.25f;
  expect_fd("rmsnorm dx", x, dx, loss);
  expect_fd("rmsnorm dw", w, dw, loss);
}

TEST(NnOps, RopeGradientIsInverseRotation) {
  const int64_t N = 4, H = 2, D = 6;
  const int32_t pos[N] = {0, 1, 17, 3999};
  Vec x = randn(N * H * D, 4), R = randn(N * H * D, 5), y;
  auto loss = [&] {
    y = x;
    rope_forward(y.data(), pos, N, H, D, 10000.0f);
    return weighted_sum(y, R);
  };
  Vec dx = R;
  rope_backward(dx.data(), pos, N, H, D, 10000.0f);
  expect_fd("rope dx", x, dx, loss);
  EXPECT_THROW(rope_forward(y.data(), pos, N, H, 5, 10000.0f), ValueError);
}

TEST(NnOps, SwigluGradientsMatchFiniteDifferences) {
  // every SIMD level; 37 = two AVX-512 vectors + a scalar tail
  std::vector<SimdLevel> levels = {SimdLevel::Scalar};
  if (cpu_features().best_level() >= SimdLevel::AVX2) levels.push_back(SimdLevel::AVX2);
  if (cpu_features().best_level() >= SimdLevel::AVX512) levels.push_back(SimdLevel::AVX512);
  for (SimdLevel level : levels) {
    set_simd_level(level);
    const int64_t n = 37;
    Vec g = randn(n, 6, 3.0f), u = randn(n, 7), R = randn(n, 8), h(n);
    auto loss = [&] {
      swiglu_forward(h.data(), g.data(), u.data(), n);
      return weighted_sum(h, R);
    };
    Vec dg(n, 0.0f), du(n, 0.0f);
    swiglu_backward(dg.data(), du.data(), R.data(), g.data(), u.data(), n);
    expect_fd((std::string("swiglu dg ") + simd_level_name(level)).c_str(), g, dg, loss);
    expect_fd((std::string("swiglu du ") + simd_level_name(level)).c_str(), u, du, loss);
    // accumulate = false overwrites (NaN never read); true adds to what is there
    Vec dg_set(n, NAN), du_set(n, NAN), dg_acc(n, 1.0f), du_acc(n, 1.0f);
    swiglu_backward(dg_set.data(), du_set.data(), R.data(), g.data(), u.data(), n, /*accumulate=*/false);
    swiglu_backward(dg_acc.data(), du_acc.data(), R.data(), g.data(), u.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_EQ(dg_set[i], dg[i]);
      EXPECT_EQ(du_set[i], du[i]);
      EXPECT_NEAR(dg_acc[i], dg[i] + 1.0f, 1e-6f);
      EXPECT_NEAR(du_acc[i], du[i] + 1.0f, 1e-6f);
    }
  }
  set_simd_level(cpu_features().best_level());
}

// The softmax exponentials run on explicit AVX2 / AVX-512 loops: every level gives the scalar
// build's loss and gradients to float rounding, at a vocabulary size with full vectors and a tail.
TEST(NnOps, CrossEntropyLevelsAgree) {
  const int64_t n = 3, V = 1037;
  const Vec logits = randn(n * V, 10, 4.0f);
  const int32_t labels[n] = {5, 1036, kIgnoreIndex};
  set_simd_level(SimdLevel::Scalar);
  Vec grad_ref = logits;
  const double loss_ref = cross_entropy_forward_backward(grad_ref.data(), labels, n, V, 0.5f);
  std::vector<SimdLevel> levels;
  if (cpu_features().best_level() >= SimdLevel::AVX2) levels.push_back(SimdLevel::AVX2);
  if (cpu_features().best_level() >= SimdLevel::AVX512) levels.push_back(SimdLevel::AVX512);
  for (SimdLevel level : levels) {
    set_simd_level(level);
    Vec grad = logits;
    EXPECT_NEAR(cross_entropy_forward_backward(grad.data(), labels, n, V, 0.5f), loss_ref, 1e-6 * loss_ref)
        << simd_level_name(level);
    EXPECT_NEAR(cross_entropy_forward(logits.data(), labels, n, V), loss_ref / 1.0, 1e-6 * loss_ref);
    for (int64_t i = 0; i < n * V; ++i) ASSERT_NEAR(grad[i], grad_ref[i], 1e-7) << simd_level_name(level) << " " << i;
  }
  set_simd_level(cpu_features().best_level());
}

// The softmaxes' array exp at every level: exp_approx(x - shift), and 0 (not ~1e-38) for masked
// -inf scores in the _or_zero form; 37 = full vectors and a tail at every width.
TEST(NnOps, ArrayExpLevelsAgreeWithExpApprox) {
  const int64_t n = 37;
  Vec x = randn(n, 12, 5.0f);
  x[3] = x[20] = x[36] = -std::numeric_limits<float>::infinity();
  std::vector<SimdLevel> levels = {SimdLevel::Scalar};
  if (cpu_features().best_level() >= SimdLevel::AVX2) levels.push_back(SimdLevel::AVX2);
  if (cpu_features().best_level() >= SimdLevel::AVX512) levels.push_back(SimdLevel::AVX512);
  for (SimdLevel level : levels) {
    set_simd_level(level);
    Vec plain(n), masked = x;
    exp_shifted(plain.data(), x.data(), n, 1.5f);
    exp_shifted_or_zero(masked.data(), masked.data(), n, 1.5f);  // in place
    for (int64_t i = 0; i < n; ++i) {
      const float want = exp_approx(x[i] - 1.5f);
      EXPECT_NEAR(plain[i], want, 2e-7f * want) << simd_level_name(level) << " " << i;
      if (std::isinf(x[i]))
        EXPECT_EQ(masked[i], 0.0f) << simd_level_name(level) << " " << i;
      else
        EXPECT_NEAR(masked[i], want, 2e-7f * want) << simd_level_name(level) << " " << i;
    }
  }
  set_simd_level(cpu_features().best_level());
}

TEST(NnOps, CrossEntropyGradientMatchesFiniteDifferences) {
  const int64_t n = 4, V = 9;
  Vec logits = randn(n * V, 9, 2.0f);
  const int32_t labels[n] = {3, kIgnoreIndex, 0, 8};
  auto loss = [&] { return cross_entropy_forward(logits.data(), labels, n, V); };
  Vec grad = logits;
  const double l = cross_entropy_forward_backward(grad.data(), labels, n, V, 1.0f);
  EXPECT_NEAR(l, loss(), 1e-5);
  expect_fd("cross-entropy dlogits", logits, grad, loss);
  const int32_t bad[n] = {3, -1, 0, 8};
  EXPECT_THROW(cross_entropy_forward(logits.data(), bad, n, V), ValueError);
}

// GQA (H=4, KV=2), a padded and a packed row, sliding window, T spanning two key tiles.
void attention_fd_case(int64_t window) {
  AttentionDims d;
  d.B = 2, d.T = 70, d.H = 4, d.KV = 2, d.D = 4, d.window = window;
  d.scale = 0.5f;
  const int64_t nq = d.B * d.T * d.H * d.D, nk = d.B * d.T * d.KV * d.D;
  Vec q = randn(nq, 10), k = randn(nk, 11), v = randn(nk, 12), R = randn(nq, 13);
  std::vector<int32_t> seg(d.B * d.T, 0);
  for (int64_t t = 60; t < d.T; ++t) seg[t] = -1;              // row 0: right padding
  for (int64_t t = 30; t < d.T; ++t) seg[d.T + t] = 1;         // row 1: two packed examples
  Vec out(nq), lse(d.B * d.H * d.T);
  auto loss = [&] {
    attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), seg.data(), d);
    return weighted_sum(out, R);
  };
  loss();
  Vec dq(nq, 0.0f), dk(nk, 0.0f), dv(nk, 0.0f);
  attention_backward(dq.data(), dk.data(), dv.data(), R.data(), q.data(), k.data(), v.data(), out.data(), lse.data(),
                     seg.data(), d);
  // Padding queries produce 0 and no gradient.
  for (int64_t t = 60; t < d.T; ++t)
    for (int64_t c = 0; c < d.H * d.D; ++c) EXPECT_EQ(out[t * d.H * d.D + c], 0.0f);
  // A prime stride samples every row, head and lane (the full sweep takes too long for a unit test).
  expect_fd("attention dq", q, dq, loss, 7);
  expect_fd("attention dk", k, dk, loss, 5);
  expect_fd("attention dv", v, dv, loss, 5);
}

TEST(NnOps, AttentionGradientsMatchFiniteDifferences) { attention_fd_case(0); }
TEST(NnOps, AttentionWindowGradientsMatchFiniteDifferences) { attention_fd_case(9); }

TEST(NnOps, AttentionRejectsBadDims) {
  AttentionDims d;
  d.B = 1, d.T = 2, d.H = 3, d.KV = 2, d.D = 4, d.scale = 0.5f;
  float buf[64] = {};
  EXPECT_THROW(attention_forward(buf, buf, buf, buf, buf, nullptr, d), ValueError);
}

}  // namespace
}  // namespace ecomllm::nn
