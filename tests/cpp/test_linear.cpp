// Basics of csrc/nn linear + LoRA and AdamW against naive loops (the torch/PEFT parity tests live
// in tests/python/test_linear_lora.py and test_adamw.py). Tolerance: 1e-4 relative (fp32 sums).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "base/cpu_features.h"
#include "base/error.h"
#include "nn/adamw.h"
#include "nn/linear.h"
#include "nn/lora_kernels.h"
#include "quant/nf4.h"
#include "quant/nf4_weight.h"

namespace ecomllm::nn {
namespace {

std::vector<float> randn(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// y[N, out] = x W^T + scale (x A^T) B^T in double.
std::vector<double> naive_forward(const std::vector<float>& x, const std::vector<float>& w, const LoraAdapter* ad,
                                  int64_t N, int64_t in, int64_t out) {
  std::vector<double> y(N * out, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < out; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < in; ++k) acc += double(x[n * in + k]) * w[j * in + k];
      if (ad) {
        for (int64_t r = 0; r < ad->spec.r; ++r) {
          double u = 0;
          for (int64_t k = 0; k < in; ++k) u += double(x[n * in + k]) * ad->a()[r * in + k];
          acc += ad->scale * u * ad->b()[j * ad->spec.r + r];
        }
      }
      y[n * out + j] = acc;
    }
  return y;
}

void expect_close(const std::vector<float>& got, const std::vector<double>& want, double tol) {
  double max_ref = 1e-30, max_err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    max_ref = std::max(max_ref, std::abs(want[i]));
    max_err = std::max(max_err, std::abs(got[i] - want[i]));
  }
  EXPECT_LE(max_err / max_ref, tol);
}

TEST(NF4Weight, QuantizeMatchesFreeFunctionsAndRoundTripsThroughBnbState) {
  const int64_t rows = 17, cols = 65;
  auto w = randn(rows * cols, 1);
  for (bool dq : {false, true}) {
    auto q = quant::NF4Weight::quantize(TensorView::contiguous(w.data(), DType::F32, {rows, cols}), 64, dq);
    std::vector<uint8_t> packed(quant::nf4_packed_bytes(rows * cols));
    std::vector<float> absmax(quant::nf4_num_blocks(rows * cols, 64));
    quant::nf4_quantize(TensorView::contiguous(w.data(), DType::F32, {rows * cols}), 64, packed.data(), absmax.data());
    const auto v = q.view();
    EXPECT_EQ(0, std::memcmp(v.packed, packed.data(), packed.size()));
    EXPECT_EQ(q.double_quant(), dq);
    std::vector<float> a(rows * cols), b(rows * cols);
    q.dequantize(a.data());
    auto r = q.clone();
    r.dequantize(b.data());
    EXPECT_EQ(a, b);
    EXPECT_EQ(r.nbytes(), q.nbytes());
  }
  EXPECT_THROW(quant::NF4Weight::quantize(TensorView::contiguous(w.data(), DType::F32, {rows, cols}), 48), ValueError);
}

TEST(Linear, F32ForwardBackwardWithLora) {
  const int64_t in = 17, out = 13, N = 5;
  Linear lin(in, out);
  auto w = randn(in * out, 2), x = randn(N * in, 3), dy = randn(N * out, 4);
  lin.set_weight_f32(w.data(), true);
  LoraAdapter& ad = lin.add_adapter("default", {.r = 3, .alpha = 6, .seed = 7});
  EXPECT_EQ(lin.active_adapter(), "default");
  EXPECT_FLOAT_EQ(ad.scale, 2.0f);
  for (int64_t i = 0; i < ad.spec.r * in; ++i) EXPECT_LE(std::abs(ad.a()[i]), 1.0f / std::sqrt(17.0f));
  for (int64_t i = 0; i < out * ad.spec.r; ++i) EXPECT_EQ(ad.b()[i], 0.0f);
  auto bval = randn(out * ad.spec.r, 5);
  std::copy(bval.begin(), bval.end(), ad.b());
  std::vector<float> y(N * out);
  lin.forward(y.data(), x.data(), N, true, 0);
  expect_close(y, naive_forward(x, w, &ad, N, in, out), 1e-5);

  // dx = dy (W + scale B A); dW = dy^T x; dB = scale dy^T (x A^T); dA = scale (dy B)^T x.
  std::vector<float> dx(N * in, 1.0f);
  lin.backward(dx.data(), dy.data(), x.data(), N, true, 0);
  std::vector<double> dx_ref(N * in, 1.0), dw_ref(out * in, 0.0), da_ref(3 * in, 0.0), db_ref(out * 3, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> u(3, 0.0), g(3, 0.0);
    for (int64_t r = 0; r < 3; ++r)
      for (int64_t k = 0; k < in; ++k) u[r] += double(x[n * in + k]) * ad.a()[r * in + k];
    for (int64_t r = 0; r < 3; ++r)
      for (int64_t j = 0; j < out; ++j) g[r] += ad.scale * double(dy[n * out + j]) * ad.b()[j * 3 + r];
    for (int64_t k = 0; k < in; ++k) {
      for (int64_t j = 0; j < out; ++j) dx_ref[n * in + k] += double(dy[n * out + j]) * w[j * in + k];
      for (int64_t r = 0; r < 3; ++r) dx_ref[n * in + k] += g[r] * ad.a()[r * in + k];
    }
    for (int64_t j = 0; j < out; ++j)
      for (int64_t k = 0; k < in; ++k) dw_ref[j * in + k] += double(dy[n * out + j]) * x[n * in + k];
    for (int64_t r = 0; r < 3; ++r)
      for (int64_t k = 0; k < in; ++k) da_ref[r * in + k] += g[r] * x[n * in + k];
    for (int64_t j = 0; j < out; ++j)
      for (int64_t r = 0; r < 3; ++r) db_ref[j * 3 + r] += ad.scale * double(dy[n * out + j]) * u[r];
  }
  expect_close(dx, dx_ref, 1e-5);
  expect_close(std::vector<float>(lin.weight_grad(), lin.weight_grad() + out * in), dw_ref, 1e-5);
  expect_close(std::vector<float>(ad.da(), ad.da() + 3 * in), da_ref, 1e-5);
  expect_close(std::vector<float>(ad.db(), ad.db() + out * 3), db_ref, 1e-5);

  ParamList params;
  lin.collect_trainable("model.q_proj", params);
  ASSERT_EQ(params.size(), 3u);
  EXPECT_EQ(params[0].name, "model.q_proj.lora_A.weight");
  EXPECT_EQ(params[1].name, "model.q_proj.lora_B.weight");
  EXPECT_EQ(params[2].name, "model.q_proj.weight");
  lin.zero_grad();
  EXPECT_EQ(grad_norm(params), 0.0);
}

// backward(..., accumulate_dx = false) overwrites dx (its NaNs are never read) and equals
// accumulating into zeros, for every base format, with and without the LoRA term, on the BLAS
// path (few rows) and the tiled drivers.
TEST(Linear, BackwardOverwritesDxWhenNotAccumulating) {
  const int64_t in = 128, out = 40;
  auto w = randn(in * out, 11);
  for (int format = 0; format < 3; ++format)
    for (bool lora : {false, true})
      for (int64_t N : {5, 37}) {
        Linear lin(in, out);
        if (format == 0) lin.set_weight_f32(w.data(), false);
        if (format == 1) {
          std::vector<uint16_t> w16(w.size());
          for (size_t i = 0; i < w.size(); ++i) w16[i] = static_cast<uint16_t>(std::bit_cast<uint32_t>(w[i]) >> 16);
          lin.set_weight_bf16(w16.data());
        }
        if (format == 2)
          lin.set_weight_nf4(quant::NF4Weight::quantize(TensorView::contiguous(w.data(), DType::F32, {out, in}), 64));
        if (lora) {
          LoraAdapter& ad = lin.add_adapter("default", {.r = 4, .alpha = 8, .seed = 3});
          const auto b = randn(out * 4, 12);
          std::copy(b.begin(), b.end(), ad.b());
        }
        const auto x = randn(N * in, 13), dy = randn(N * out, 14);
        std::vector<float> dx_zero(N * in, 0.0f), dx_nan(N * in, NAN);
        lin.backward(dx_zero.data(), dy.data(), x.data(), N, true, 0);
        lin.backward(dx_nan.data(), dy.data(), x.data(), N, true, 0, /*accumulate_dx=*/false);
        const std::string what = "format " + std::to_string(format) + (lora ? " lora" : "") + " N=" + std::to_string(N);
        for (int64_t i = 0; i < N * in; ++i) ASSERT_NEAR(dx_nan[i], dx_zero[i], 1e-5f * (1.0f + std::abs(dx_zero[i]))) << what;
      }
}

TEST(Linear, BadArguments) {
  Linear lin(4, 3);
  std::vector<float> x(4), y(3);
  EXPECT_THROW(lin.forward(y.data(), x.data(), 1, false, 0), ValueError);  // no weight
  EXPECT_THROW(lin.add_adapter("a", {.r = 0}), ValueError);
  EXPECT_THROW(lin.add_adapter("a", {.dropout = 1.0f}), ValueError);
  lin.add_adapter("a", {});
  EXPECT_THROW(lin.add_adapter("a", {}), ValueError);
  EXPECT_THROW(lin.set_active_adapter("b"), ValueError);
  EXPECT_THROW(Linear(0, 3), ValueError);
}

TEST(AdamW, ScalarAndSimdUpdatesAgreeAndStepMatchesFormula) {
  const int64_t n = 1003;
  auto p0 = randn(n, 8), g = randn(n, 9, 0.1f);
  AdamWScalars s{0.999f, true, 0.1f, 0.999f, 0.001f, 0.03f, 1e-8f, -1e-3f};
  std::vector<float> p1 = p0, m1(n, 0.1f), v1(n, 0.01f), p2 = p0, m2 = m1, v2 = v1;
  adamw_update_scalar(s, p1.data(), g.data(), m1.data(), v1.data(), n);
  if (cpu_features().best_level() >= SimdLevel::AVX2) {
    adamw_update_avx2(s, p2.data(), g.data(), m2.data(), v2.data(), n);
    EXPECT_EQ(p1, p2);
    EXPECT_EQ(m1, m2);
    EXPECT_EQ(v1, v2);
  }
  // One optimiser step from zero state: p = p (1 - lr wd) - lr * g / (|g| + eps) (bias-corrected).
  std::vector<float> p = p0, grad = g;
  AdamW opt({{"p", p.data(), grad.data(), {n}}}, {.lr = 0.01, .weight_decay = 0.1});
  opt.step();
  for (int64_t i = 0; i < n; ++i) {
    const double want = p0[i] * (1 - 0.001) - 0.01 * g[i] / (std::abs(double(g[i])) + 1e-8);
    EXPECT_NEAR(p[i], want, 1e-6);
  }
  EXPECT_EQ(opt.step_count(), 1);
}

TEST(AdamW, ClipGradNorm) {
  std::vector<float> a = {3, 0}, b = {4}, va(2), vb(1);
  ParamList params = {{"a", va.data(), a.data(), {2}}, {"b", vb.data(), b.data(), {1}}};
  EXPECT_DOUBLE_EQ(clip_grad_norm(params, 10.0), 5.0);
  EXPECT_EQ(a[0], 3.0f);
  EXPECT_DOUBLE_EQ(clip_grad_norm(params, 1.0), 5.0);
  EXPECT_NEAR(a[0], 0.6, 1e-6);
  EXPECT_NEAR(b[0], 0.8, 1e-6);
  params.push_back(params[0]);
  EXPECT_THROW(clip_grad_norm(params, 1.0), ValueError);  // duplicate name
}


// The LoRA rank pass (nn/lora_kernels.h) at every level against an fp64 reference: G = s_g Y P
// and D += s_d Y^T Q, alone and together, with row counts that leave partial row tiles and thread
// blocks, and ranks of one and several vectors.
TEST(LoraRankPass, EveryLevelMatchesFp64Reference) {
  struct Case { int64_t M, N, r; };
  std::vector<SimdLevel> levels = {SimdLevel::Scalar};
  if (cpu_features().best_level() >= SimdLevel::AVX2) levels.push_back(SimdLevel::AVX2);
  if (cpu_features().best_level() >= SimdLevel::AVX512) levels.push_back(SimdLevel::AVX512);
  for (SimdLevel level : levels) {
    set_simd_level(level);
    for (const Case c : {Case{37, 53, 16}, Case{5, 300, 32}, Case{100, 17, 16}, Case{1, 9, 16}, Case{70, 40, 48}}) {
      if (!lora_rank_pass_supported(c.r) && level != SimdLevel::Scalar) continue;
      const auto y = randn(c.M * c.N, 21), p = randn(c.N * c.r, 22), q = randn(c.M * c.r, 23), d0 = randn(c.N * c.r, 24);
      std::vector<double> g_ref(c.M * c.r, 0.0), d_ref(d0.begin(), d0.end());
      for (int64_t m = 0; m < c.M; ++m)
        for (int64_t n = 0; n < c.N; ++n)
          for (int64_t j = 0; j < c.r; ++j) {
            g_ref[m * c.r + j] += 0.5 * y[m * c.N + n] * static_cast<double>(p[n * c.r + j]);
            d_ref[n * c.r + j] += 2.0 * y[m * c.N + n] * static_cast<double>(q[m * c.r + j]);
          }
      const std::string what = std::string(simd_level_name(level)) + " M=" + std::to_string(c.M) + " N=" +
                               std::to_string(c.N) + " r=" + std::to_string(c.r);
      for (int mode = 0; mode < 3; ++mode) {  // G and D, G only, D only
        std::vector<float> g(c.M * c.r, NAN), d(d0);
        RankPass ps{.y = y.data(), .M = c.M, .N = c.N, .r = c.r};
        if (mode != 2) ps.p = p.data(), ps.g = g.data(), ps.scale_g = 0.5f;
        if (mode != 1) ps.q = q.data(), ps.d = d.data(), ps.scale_d = 2.0f;
        lora_rank_pass(ps);
        if (mode != 2) expect_close(g, g_ref, 1e-5);
        if (mode != 1) expect_close(d, d_ref, 1e-5);
        if (mode == 1) EXPECT_EQ(d, d0) << what << ": D untouched without Q";
        if (::testing::Test::HasFailure()) FAIL() << what << " mode " << mode;
      }
    }
    if (level != SimdLevel::Scalar) {
      EXPECT_FALSE(lora_rank_pass_supported(12));
      std::vector<float> y(12), p(12), g(12);
      EXPECT_THROW(lora_rank_pass({.y = y.data(), .M = 1, .N = 1, .r = 12, .p = p.data(), .g = g.data()}), ValueError);
    }
  }
  set_simd_level(cpu_features().best_level());
  std::vector<float> y(4), p(4);
  EXPECT_THROW(lora_rank_pass({.y = y.data(), .M = 1, .N = 4, .r = 16, .p = p.data()}), ValueError);  // no g
  EXPECT_THROW(lora_rank_pass({.y = nullptr, .M = 1, .N = 4, .r = 16}), ValueError);
}

}  // namespace
}  // namespace ecomllm::nn
