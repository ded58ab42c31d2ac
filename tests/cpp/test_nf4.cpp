// Unit tests for csrc/quant: NF4 format rules and every SIMD level of the matmul kernels against
// the scalar reference at odd sizes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "base/cpu_features.h"
#include "base/parallel.h"
#include "quant/amx_tiles.h"
#include "quant/bf16_pairs.h"
#include "quant/nf4.h"
#include "quant/nf4_decode_layout.h"
#include "quant/nf4_gemv_q16.h"
#include "quant/nf4_kernels_common.h"
#include "quant/nf4_matmul.h"

namespace ecomllm::quant {
namespace {

struct Quantized {
  std::vector<uint8_t> packed;
  std::vector<float> absmax;
};

Quantized quantize(const std::vector<float>& x, int64_t bs) {
  Quantized q;
  const int64_t n = static_cast<int64_t>(x.size());
  q.packed.resize(nf4_packed_bytes(n));
  q.absmax.resize(nf4_num_blocks(n, bs));
  nf4_quantize(TensorView::contiguous(const_cast<float*>(x.data()), DType::F32, {n}), bs, q.packed.data(),
               q.absmax.data());
  return q;
}

std::vector<float> random_normal(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

TEST(NF4Format, CodebookIsSortedWithExactZeroAndOne) {
  for (int i = 0; i < 15; ++i) EXPECT_LT(kNF4Codebook[i], kNF4Codebook[i + 1]);
  EXPECT_EQ(kNF4Codebook[kNF4ZeroCode], 0.0f);
  EXPECT_EQ(kNF4Codebook[0], -1.0f);
  EXPECT_EQ(kNF4Codebook[15], 1.0f);
}

TEST(NF4Format, BlocksizeRule) {
  for (int64_t bs : {32, 64, 128, 256, 512, 1024, 2048, 4096}) EXPECT_TRUE(nf4_blocksize_valid(bs));
  for (int64_t bs : {0, 16, 48, 63, 8192, -64}) EXPECT_FALSE(nf4_blocksize_valid(bs));
}

TEST(NF4Quantize, FirstElementInHighNibbleAndCodesOfExtremes) {
  // Block of 64: x[0] = -1 (code 0), x[1] = 1 (code 15), rest 0 (code 7).
  std::vector<float> x(64, 0.0f);
  x[0] = -2.0f;
  x[1] = 2.0f;
  const Quantized q = quantize(x, 64);
  EXPECT_EQ(q.absmax[0], 2.0f);
  EXPECT_EQ(q.packed[0], 0x0f);
  for (size_t i = 1; i < q.packed.size(); ++i) EXPECT_EQ(q.packed[i], 0x77);
}

TEST(NF4Quantize, TiesGoToTheLowerCode) {
  // A value exactly on the midpoint between codes 8 and 9 (after scaling by absmax 1).
  const float mid = (kNF4Codebook[8] + kNF4Codebook[9]) / 2.0f;
  std::vector<float> x = {1.0f, mid, std::nextafter(mid, 1.0f), std::nextafter(mid, 0.0f)};
  x.resize(64, 0.0f);
  const Quantized q = quantize(x, 64);
  EXPECT_EQ(q.packed[0], (15 << 4) | 8);
  EXPECT_EQ(q.packed[1], (9 << 4) | 8);
}

TEST(NF4Quantize, ZeroBlocksAndTailFollowBitsandbytes) {
  // One full zero block (absmax stored 0) and a zero tail (absmax stored clamped to 1e-38), odd n:
  // the pad nibble is the code of 0.0.
  std::vector<float> x(64 + 5, 0.0f);
  const Quantized q = quantize(x, 64);
  EXPECT_EQ(q.absmax[0], 0.0f);
  EXPECT_EQ(q.absmax[1], 1e-38f);
  for (uint8_t b : q.packed) EXPECT_EQ(b, 0x77);
}

TEST(NF4Quantize, RejectsNonFiniteAndBadBlocksize) {
  std::vector<float> x(100, 1.0f);
  x[57] = NAN;
  EXPECT_THROW(quantize(x, 64), ValueError);
  x[57] = INFINITY;
  EXPECT_THROW(quantize(x, 64), ValueError);
  x[57] = 0.0f;
  EXPECT_THROW(quantize(x, 48), ValueError);
}

TEST(NF4Quantize, DequantizeErrorIsBoundedByHalfTheLargestCodeGap) {
  const std::vector<float> x = random_normal(4097, 1);
  const Quantized q = quantize(x, 64);
  std::vector<float> y(x.size());
  nf4_dequantize(q.packed.data(), q.absmax.data(), kNF4Codebook, static_cast<int64_t>(x.size()), 64, y.data());
  float max_gap = 0.0f;
  for (int i = 0; i < 15; ++i) max_gap = std::max(max_gap, kNF4Codebook[i + 1] - kNF4Codebook[i]);
  for (size_t i = 0; i < x.size(); ++i)
    ASSERT_LE(std::fabs(x[i] - y[i]), 0.5f * max_gap * q.absmax[i / 64] * (1 + 1e-6f)) << i;
}

TEST(DoubleQuant, DynamicMapShape) {
  const float* map = dynamic_map_8bit();
  EXPECT_TRUE(std::is_sorted(map, map + 256));
  EXPECT_EQ(map[255], 1.0f);
  EXPECT_NE(std::find(map, map + 256, 0.0f), map + 256);
  EXPECT_FLOAT_EQ(map[0], -0.99296874f);
}

TEST(DoubleQuant, ReconstructsAbsmaxClosely) {
  std::vector<float> absmax = random_normal(1000, 2, 0.1f);
  for (auto& a : absmax) a = std::fabs(a) + 0.5f;
  const float offset = absmax_mean(absmax.data(), 1000);
  std::vector<uint8_t> q(1000);
  std::vector<float> nested(4);
  absmax_double_quantize(absmax.data(), 1000, offset, dynamic_map_8bit(), q.data(), nested.data());
  for (int i = 0; i < 1000; ++i) {
    const float back = absmax_double_dequantize_one(q.data(), nested.data(), dynamic_map_8bit(), offset, i);
    ASSERT_NEAR(back, absmax[i], 0.02f * nested[i / 256] + 1e-6f) << i;
  }
}

// ---- matmul kernels: every SIMD level against the scalar reference -------------------------------

struct Weight {
  Quantized q;
  std::vector<uint8_t> qabsmax;
  std::vector<float> nested;
  float offset = 0.0f;
  NF4Matrix m;
};

Weight make_weight(int64_t N, int64_t K, int64_t bs, bool double_quant, uint32_t seed) {
  Weight w;
  w.q = quantize(random_normal(N * K, seed), bs);
  w.m.rows = N;
  w.m.cols = K;
  w.m.blocksize = bs;
  w.m.packed = w.q.packed.data();
  w.m.code = kNF4Codebook;
  if (double_quant) {
    const int64_t nb = static_cast<int64_t>(w.q.absmax.size());
    w.offset = absmax_mean(w.q.absmax.data(), nb);
    w.qabsmax.resize(nb);
    w.nested.resize((nb + 255) / 256);
    absmax_double_quantize(w.q.absmax.data(), nb, w.offset, dynamic_map_8bit(), w.qabsmax.data(), w.nested.data());
    w.m.qabsmax = w.qabsmax.data();
    w.m.nested_absmax = w.nested.data();
    w.m.nested_code = dynamic_map_8bit();
    w.m.offset = w.offset;
  } else {
    w.m.absmax = w.q.absmax.data();
  }
  return w;
}

// fp64 dequantize-then-matmul reference.
std::vector<double> dense(const NF4Matrix& m) {
  std::vector<float> tile(m.rows * m.cols);
  nf4_dequant_tile_generic(m, 0, m.rows, 0, m.cols, tile.data(), m.cols);
  return std::vector<double>(tile.begin(), tile.end());
}

double rel_err(const std::vector<float>& got, const std::vector<double>& want) {
  double max_diff = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(got[i] - want[i]));
    max_ref = std::max(max_ref, std::fabs(want[i]));
  }
  return max_diff / std::max(max_ref, 1e-30);
}

std::vector<SimdLevel> available_levels() {
  std::vector<SimdLevel> levels = {SimdLevel::Scalar};
  const SimdLevel best = cpu_features().best_level();
  if (best >= SimdLevel::AVX2) levels.push_back(SimdLevel::AVX2);
  if (best >= SimdLevel::AVX512) levels.push_back(SimdLevel::AVX512);
  return levels;
}

// A SIMD level, with the AMX tile path on or off (on only exists at AVX512 on AMX CPUs).
struct LevelMode {
  SimdLevel level;
  bool amx;
};
std::vector<LevelMode> available_modes() {
  std::vector<LevelMode> modes;
  for (SimdLevel level : available_levels()) {
    modes.push_back({level, false});
    if (level == SimdLevel::AVX512 && amx_supported()) modes.push_back({level, true});
  }
  return modes;
}
void apply(const LevelMode& mode) {
  set_simd_level(mode.level);
  set_amx_enabled(mode.amx);
}
std::string name(const LevelMode& mode) { return std::string(simd_level_name(mode.level)) + (mode.amx ? "+amx" : ""); }

struct Shape {
  int64_t M, N, K, bs;
  bool dq;
};

class NF4MatmulLevels : public ::testing::TestWithParam<Shape> {
 protected:
  void TearDown() override {
    set_simd_level(cpu_features().best_level());
    set_amx_enabled(true);
  }
};

TEST_P(NF4MatmulLevels, ForwardAndBackwardMatchFp64Reference) {
  const Shape s = GetParam();
  const Weight w = make_weight(s.N, s.K, s.bs, s.dq, 7);
  const std::vector<double> wd = dense(w.m);
  const std::vector<float> x = random_normal(s.M * s.K, 11), dy = random_normal(s.M * s.N, 13);
  const std::vector<float> bias = random_normal(s.N, 17);
  std::vector<double> y_ref(s.M * s.N), dx_ref(s.M * s.K, 0.0);
  for (int64_t m = 0; m < s.M; ++m)
    for (int64_t n = 0; n < s.N; ++n) {
      double acc = bias[n];
      for (int64_t k = 0; k < s.K; ++k) acc += static_cast<double>(x[m * s.K + k]) * wd[n * s.K + k];
      y_ref[m * s.N + n] = acc;
      for (int64_t k = 0; k < s.K; ++k) dx_ref[m * s.K + k] += static_cast<double>(dy[m * s.N + n]) * wd[n * s.K + k];
    }
  for (const LevelMode& level : available_modes()) {
    apply(level);
    std::vector<float> y(s.M * s.N, NAN), dx(s.M * s.K, NAN);
    nf4_matmul(x.data(), s.M, w.m, bias.data(), y.data());
    nf4_matmul_t(dy.data(), s.M, w.m, dx.data());
    EXPECT_LE(rel_err(y, y_ref), 1e-5) << name(level) << " forward";
    EXPECT_LE(rel_err(dx, dx_ref), 1e-5) << name(level) << " backward";
    // accumulate = true adds to what dx holds (the LoRA backward sums several products into dx)
    std::vector<float> dx_acc(s.M * s.K, 0.5f);
    std::vector<double> dx_acc_ref(dx_ref);
    for (double& v : dx_acc_ref) v += 0.5;
    nf4_matmul_t(dy.data(), s.M, w.m, dx_acc.data(), /*accumulate=*/true);
    EXPECT_LE(rel_err(dx_acc, dx_acc_ref), 1e-5) << name(level) << " backward, accumulate";
    // a low-rank term in the same pass: dx = dy W + g A (LoRA's input gradient), g [M, 5], A [5, K]
    const int64_t r = 5;
    const std::vector<float> g = random_normal(s.M * r, 19), a = random_normal(r * s.K, 23);
    std::vector<double> dx_lr_ref(dx_ref);
    for (int64_t m = 0; m < s.M; ++m)
      for (int64_t j = 0; j < r; ++j)
        for (int64_t k = 0; k < s.K; ++k) dx_lr_ref[m * s.K + k] += static_cast<double>(g[m * r + j]) * a[j * s.K + k];
    std::vector<float> dx_lr(s.M * s.K, NAN);
    const LowRankTerm term{g.data(), a.data(), r};
    nf4_matmul_t(dy.data(), s.M, w.m, dx_lr.data(), /*accumulate=*/false, &term);
    EXPECT_LE(rel_err(dx_lr, dx_lr_ref), 1e-5) << name(level) << " backward + low-rank term";
    // and in the forward: y = x W^T + bias + scale u b^T (LoRA's output term), u [M, 5], b [N, 5];
    // GEMV rows (M <= 3) and tiled rows both, edge tiles included
    const std::vector<float> u = random_normal(s.M * r, 29), b = random_normal(s.N * r, 31);
    const float scale = 0.75f;
    std::vector<double> y_lr_ref(y_ref);
    for (int64_t m = 0; m < s.M; ++m)
      for (int64_t n = 0; n < s.N; ++n)
        for (int64_t j = 0; j < r; ++j) y_lr_ref[m * s.N + n] += scale * static_cast<double>(u[m * r + j]) * b[n * r + j];
    std::vector<float> y_lr(s.M * s.N, NAN);
    const LowRankOutput out_term{u.data(), b.data(), r, scale};
    nf4_matmul(x.data(), s.M, w.m, bias.data(), y_lr.data(), &out_term);
    EXPECT_LE(rel_err(y_lr, y_lr_ref), 1e-5) << name(level) << " forward + low-rank term";
  }
}

INSTANTIATE_TEST_SUITE_P(
    OddSizes, NF4MatmulLevels,
    ::testing::Values(Shape{1, 3, 64, 64, false}, Shape{1, 17, 4096, 64, true}, Shape{3, 65, 128, 32, true},
                      Shape{2, 1000, 64, 64, false}, Shape{17, 63, 65, 64, false}, Shape{63, 17, 1000, 64, true},
                      Shape{65, 3, 4097, 64, true}, Shape{1, 5, 4097, 64, false}, Shape{4, 33, 4096, 4096, true},
                      Shape{100, 100, 256, 128, true}, Shape{1000, 17, 3, 64, false}, Shape{5, 4097, 17, 32, true},
                      Shape{130, 40, 384, 64, true},  // 3 backward K chunks x 2 row blocks (2 threads)
                      // the AVX-512 grouped GEMV: a partial scale segment (9 groups), blocks of two
                      // groups, rows starting mid-block (384 % 256 != 0)
                      Shape{1, 9, 1152, 64, true}, Shape{1, 11, 640, 128, true}, Shape{2, 7, 384, 256, false}),
    [](const ::testing::TestParamInfo<Shape>& info) {
      const Shape& s = info.param;
      return "M" + std::to_string(s.M) + "_N" + std::to_string(s.N) + "_K" + std::to_string(s.K) + "_bs" +
             std::to_string(s.bs) + (s.dq ? "_dq" : "");
    });

// The int16-activation GEMV: every level against an fp64 reference of the fp32 product. The
// rounding (x to 1/16383 of each 64-chunk's max, codes to 2^-14) allows 5e-4 of max |y|; the
// levels agree with each other to fp32 summation order (1e-5). Outliers in x stay bounded (each
// chunk has its own scale), non-finite rows fall back to the exact kernel, unsupported shapes throw.
// y[M, N] = x[M, K] @ wd[N, K]^T + bias in double.
std::vector<double> reference_product(const std::vector<float>& x, const std::vector<double>& wd,
                                      const std::vector<float>& bias, int64_t M, int64_t N, int64_t K) {
  std::vector<double> y(M * N);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = bias[n];
      for (int64_t k = 0; k < K; ++k) acc += static_cast<double>(x[m * K + k]) * wd[n * K + k];
      y[m * N + n] = acc;
    }
  return y;
}

TEST(NF4GemvQ16, MatchesFp64ReferenceAtEveryLevel) {
  struct Case { int64_t M, N, K, bs; bool dq; };
  for (const Case c : {Case{1, 3, 64, 64, false}, Case{1, 33, 4096, 64, true}, Case{3, 17, 640, 128, true},
                       Case{2, 65, 192, 64, false}, Case{1, 9, 8192, 4096, true}, Case{1, 4, 2048, 4096, false},
                       Case{2, 7, 192, 128, false}, Case{1, 5, 6144, 4096, true}}) {  // rows start mid-block
    const Weight w = make_weight(c.N, c.K, c.bs, c.dq, 29);
    ASSERT_TRUE(nf4_gemv_q16_supported(w.m));
    const std::vector<double> wd = dense(w.m);
    std::vector<float> x = random_normal(c.M * c.K, 31);
    x[c.K / 2] = 300.0f;  // an outlier: only its own chunk loses resolution
    const std::vector<float> bias = random_normal(c.N, 37);
    const std::vector<double> y_ref = reference_product(x, wd, bias, c.M, c.N, c.K);
    std::vector<float> y_scalar;
    for (SimdLevel level : available_levels()) {
      set_simd_level(level);
      std::vector<float> y(c.M * c.N, NAN);
      nf4_gemv_q16(x.data(), c.M, w.m, bias.data(), y.data());
      EXPECT_LE(rel_err(y, y_ref), 5e-4) << simd_level_name(level) << " K=" << c.K << " bs=" << c.bs;
      if (y_scalar.empty())
        y_scalar = y;
      else
        EXPECT_LE(rel_err(y, std::vector<double>(y_scalar.begin(), y_scalar.end())), 1e-5) << simd_level_name(level);
    }
    set_simd_level(cpu_features().best_level());
  }
}

TEST(NF4GemvQ16, NonFiniteRowsFallBackAndUnsupportedShapesThrow) {
  const Weight w = make_weight(8, 128, 64, true, 41);
  std::vector<float> x = random_normal(2 * 128, 43), y(16, 0.0f), y_exact(16, 0.0f);
  x[5] = INFINITY;  // row 0 -> exact kernel, row 1 -> int16
  nf4_gemv_q16(x.data(), 2, w.m, nullptr, y.data());
  nf4_matmul(x.data(), 2, w.m, nullptr, y_exact.data());
  for (int n = 0; n < 8; ++n) EXPECT_TRUE(std::isnan(y[n]) == std::isnan(y_exact[n]) && std::isinf(y[n]) == std::isinf(y_exact[n]));
  for (int n = 8; n < 16; ++n) EXPECT_NEAR(y[n], y_exact[n], 5e-3 * (1.0 + std::fabs(y_exact[n])));
  const Weight odd = make_weight(4, 96, 32, false, 47);  // K % 64 != 0 and blocksize 32
  EXPECT_FALSE(nf4_gemv_q16_supported(odd.m));
  EXPECT_THROW(nf4_gemv_q16(x.data(), 1, odd.m, nullptr, y.data()), ValueError);
}

// The AVX-512 M = 1 kernels decode double-quantized block scales by gathers or by register
// permutes (nf4_scale_lookup_by_permutes): both must give bit-identical products, including
// 16-block runs that straddle a 256-block nested chunk (K = 1152: 18 blocks per row).
TEST(NF4GemvScales, GathersAndPermutesAgreeBitForBit) {
  if (cpu_features().best_level() != SimdLevel::AVX512) GTEST_SKIP() << "needs AVX-512";
  set_simd_level(SimdLevel::AVX512);
  const bool original = nf4_scale_lookup_by_permutes();
  for (const int64_t K : {int64_t{128}, int64_t{1152}, int64_t{4096}}) {
    const Weight w = make_weight(37, K, 64, true, 71);
    const std::vector<float> x = random_normal(2 * K, 73);
    std::vector<float> y[2], y16[2];
    for (int permutes = 0; permutes < 2; ++permutes) {
      set_nf4_scale_lookup_by_permutes(permutes == 1);
      y[permutes].assign(2 * 37, NAN);
      y16[permutes].assign(2 * 37, NAN);
      nf4_matmul(x.data(), 2, w.m, nullptr, y[permutes].data());
      nf4_gemv_q16(x.data(), 2, w.m, nullptr, y16[permutes].data());
    }
    EXPECT_EQ(0, std::memcmp(y[0].data(), y[1].data(), y[0].size() * sizeof(float))) << "K=" << K;
    EXPECT_EQ(0, std::memcmp(y16[0].data(), y16[1].data(), y16[0].size() * sizeof(float))) << "K=" << K;
  }
  set_nf4_scale_lookup_by_permutes(original);
  set_simd_level(cpu_features().best_level());
}

// The decode layouts' product-table kernels against the fp64 reference, each at the SIMD level it
// runs at (VBMI at avx512 where the CPU has VBMI and VNNI, AVX2 at avx2), and against each other:
// the same integer digit sums and float steps, so the same bits. At a level where a kind's kernel
// does not run, nf4_decode_matmul must refuse (return false) without writing.
TEST(NF4DecodeLayout, MatchesFp64ReferenceOrRefuses) {
  struct Case { int64_t M, N, K, bs; bool dq; };
  struct KindAt { DecodeLayoutKind kind; SimdLevel level; };
  const KindAt kinds[] = {{DecodeLayoutKind::kVbmi, SimdLevel::AVX512}, {DecodeLayoutKind::kAvx2, SimdLevel::AVX2}};
  for (const Case c : {Case{1, 3, 64, 64, false}, Case{2, 65, 4096, 64, true}, Case{3, 130, 192, 128, true},
                       Case{1, 64, 8192, 4096, true}, Case{2, 200, 640, 64, true},
                       Case{2, 64 * 19 + 5, 128, 64, true}}) {  // 20 supergroups: blocks of 8, 8, 4
    const Weight w = make_weight(c.N, c.K, c.bs, c.dq, 53);
    ASSERT_TRUE(nf4_decode_layout_supported(w.m));
    const std::vector<double> wd = dense(w.m);
    const std::vector<float> x = random_normal(c.M * c.K, 59), bias = random_normal(c.N, 61);
    const std::vector<double> y_ref = reference_product(x, wd, bias, c.M, c.N, c.K);
    std::vector<std::vector<float>> ran_outputs;
    for (const KindAt k : kinds) {
      if (cpu_features().best_level() < k.level) continue;
      set_simd_level(k.level);
      const NF4DecodeLayout L = nf4_build_decode_layout(w.m, k.kind);
      EXPECT_EQ(L.supergroups, (c.N + 63) / 64);
      EXPECT_EQ(L.kind, k.kind);
      std::vector<float> y(c.M * c.N, NAN);
      const bool ran = nf4_decode_matmul(L, w.m.code, x.data(), c.M, bias.data(), y.data());
      EXPECT_EQ(ran, nf4_decode_kernel_available(k.kind));
      if (ran) {
        EXPECT_LE(rel_err(y, y_ref), 1e-5) << "N=" << c.N << " K=" << c.K;
        std::vector<float> y16(c.M * c.N, NAN);
        ASSERT_TRUE(nf4_decode_matmul(L, w.m.code, x.data(), c.M, bias.data(), y16.data(), kTableDigitsInt16));
        if (k.kind == DecodeLayoutKind::kVbmi) {
          // Two digits (16-bit products, the int16-activation product): ~6e-5, held to 5e-4 as q16.
          EXPECT_LE(rel_err(y16, y_ref), 5e-4) << "N=" << c.N << " K=" << c.K;
          EXPECT_GT(rel_err(y16, y_ref), rel_err(y, y_ref));
        } else {  // the AVX2 kernel computes the exact product for either
          EXPECT_EQ(0, std::memcmp(y16.data(), y.data(), y.size() * sizeof(float)));
        }
        ran_outputs.push_back(y);
      } else {
        for (float v : y) EXPECT_TRUE(std::isnan(v));  // nothing written
      }
      EXPECT_THROW(nf4_decode_matmul(L, w.m.code, x.data(), c.M, bias.data(), y.data(), 4), ValueError);
      // Any other level refuses this kind.
      set_simd_level(SimdLevel::Scalar);
      EXPECT_FALSE(nf4_decode_matmul(L, w.m.code, x.data(), c.M, bias.data(), y.data()));
    }
    set_simd_level(cpu_features().best_level());
    if (ran_outputs.size() == 2)
      EXPECT_EQ(0, std::memcmp(ran_outputs[0].data(), ran_outputs[1].data(), ran_outputs[0].size() * sizeof(float)))
          << "N=" << c.N << " K=" << c.K;
  }
  const Weight odd = make_weight(4, 96, 64, false, 67);  // K % 64 != 0
  EXPECT_FALSE(nf4_decode_layout_supported(odd.m));
  EXPECT_THROW(nf4_build_decode_layout(odd.m), ValueError);
  // A code book beyond [-1, 1] (a file's quant_map) would overflow the tables' top digit.
  Weight wide = make_weight(64, 128, 64, false, 71);
  float wide_code[16];
  for (int c = 0; c < 16; ++c) wide_code[c] = 3.0f * wide.m.code[c];
  wide.m.code = wide_code;
  EXPECT_FALSE(nf4_decode_layout_supported(wide.m));
  EXPECT_THROW(nf4_build_decode_layout(wide.m), ValueError);
}

// Where the bytes go: kVbmi segments in blocks of kVbmiSegmentBlock supergroups, segment-major
// within a block (the last block shorter), so that a block's walk (segments outer, supergroups
// inner) reads the data in order; kAvx2 supergroup-major. Within a kVbmi segment, row 64 g + 16 r
// + j's dword for octet o at o * 256 + 64 r + 4 j, its block scale at kSegmentCodeBytes + 4 (16 r + j)
// (kF32), or its 8-bit scale code at kSegmentCodeBytes + u8_scale_slot(16 r + j) (kU8, the default
// for a double-quantized weight).
TEST(NF4DecodeLayout, SegmentsGoInBlocksOfSupergroups) {
  const int64_t N = 64 * 19 + 5, K = 192, segments = K / 64;  // 20 supergroups: blocks of 8, 8, 4
  const Weight w = make_weight(N, K, 64, true, 83);
  const NF4DecodeLayout U = nf4_build_decode_layout(w.m, DecodeLayoutKind::kVbmi);
  const NF4DecodeLayout F = nf4_build_decode_layout(w.m, DecodeLayoutKind::kVbmi, DecodeScales::kF32);
  const NF4DecodeLayout A = nf4_build_decode_layout(w.m, DecodeLayoutKind::kAvx2);
  ASSERT_EQ(U.scales, DecodeScales::kU8);
  ASSERT_EQ(F.scales, DecodeScales::kF32);
  EXPECT_EQ(A.scales, DecodeScales::kF32);  // the AVX2 kernel reads fp32 scales only
  EXPECT_EQ(A.block, 1);
  for (const NF4DecodeLayout* L : {&U, &F}) {
    ASSERT_EQ(L->block, kVbmiSegmentBlock);
    ASSERT_EQ(L->segment_bytes(), L == &U ? kSegmentBytesU8 : kSegmentBytes);
    ASSERT_EQ(static_cast<int64_t>(L->data.size()), L->supergroups * segments * L->segment_bytes());
    int64_t expected = 0;
    for (int64_t b0 = 0; b0 < L->supergroups; b0 += L->block)
      for (int64_t s = 0; s < segments; ++s)
        for (int64_t g = b0; g < std::min(L->supergroups, b0 + L->block); ++g, expected += L->segment_bytes())
          EXPECT_EQ(L->segment_offset(g, s), expected) << "g=" << g << " s=" << s;
    EXPECT_EQ(expected, static_cast<int64_t>(L->data.size()));
  }
  for (int64_t g = 0; g < A.supergroups; ++g)
    for (int64_t s = 0; s < segments; ++s) EXPECT_EQ(A.segment_offset(g, s), (g * segments + s) * kSegmentBytes);
  // The 64 slots of the scale codes are a permutation of the rows.
  std::vector<int> slot_used(64, 0);
  for (int64_t j = 0; j < 64; ++j) slot_used[static_cast<size_t>(u8_scale_slot(j))] += 1;
  EXPECT_EQ(std::count(slot_used.begin(), slot_used.end(), 1), 64);
  for (const int64_t row : {int64_t{0}, int64_t{17}, int64_t{64 * 8 + 33}, N - 1}) {
    const int64_t g = row / 64, r = row % 64 / 16, j = row % 16;
    for (int64_t s = 0; s < segments; ++s) {
      for (const NF4DecodeLayout* L : {&U, &F})
        for (int64_t o = 0; o < 8; ++o)
          EXPECT_EQ(0, std::memcmp(L->segment(g, s) + o * 256 + 64 * r + 4 * j,
                                   w.m.packed + row * K / 2 + 4 * (8 * s + o), 4))
              << "row " << row << " segment " << s << " octet " << o;
      const int64_t block = (row * K + 64 * s) / 64;
      float scale = 0, stored = 0;
      w.m.block_scales(block, block + 1, &scale);
      std::memcpy(&stored, F.segment(g, s) + kSegmentCodeBytes + 4 * (16 * r + j), 4);
      EXPECT_EQ(stored, scale) << "row " << row << " segment " << s;
      EXPECT_EQ(U.segment(g, s)[kSegmentCodeBytes + u8_scale_slot(16 * r + j)], w.m.qabsmax[block])
          << "row " << row << " segment " << s;
    }
  }
  // The layout's own copy of the second level: nested absmax (zero-padded), the map's byte planes.
  const int64_t nested_count = (w.m.num_blocks() + 255) / 256;
  for (int64_t i = 0; i < nested_count; ++i) EXPECT_EQ(U.nested.as<float>()[i], w.m.nested_absmax[i]);
  EXPECT_EQ(U.nested.as<float>()[nested_count], 0.0f);
  for (int c = 0; c < 256; c += 37) {
    uint32_t bits;
    std::memcpy(&bits, w.m.nested_code + c, 4);
    for (int p = 0; p < 4; ++p) EXPECT_EQ(U.map_planes.as<uint8_t>()[256 * p + c], (bits >> (8 * p)) & 0xFF);
  }
  EXPECT_EQ(U.nbytes(), static_cast<int64_t>(U.data.size() + U.nested.size() + U.map_planes.size()));
}

// A kVbmi layout with 8-bit scale codes (kU8) decodes the scales as dequantize() does, so every
// reader gives the bits of the fp32-scale layout (kF32): the M = 1 kernel (both digit counts), the
// GEMM's panels (40 rows, codes released) and the restore. Nested scales made to differ strongly
// from chunk to chunk, so that a row picking a neighbour's nested scale (a wrong window or slot)
// shows; K = 1152 puts nested boundaries mid-row, K = 32768 reaches the window's last entries.
// Where the window would not reach (K = 34816 at blocksize 64) or the scales are plain fp32, the
// default is kF32 and asking for kU8 throws.
TEST(NF4DecodeLayout, U8ScalesGiveTheBitsOfF32Scales) {
  const CpuFeatures& f = cpu_features();
  if (!(f.best_level() == SimdLevel::AVX512 && f.avx512_vbmi && f.avx512_vnni)) GTEST_SKIP() << "needs AVX-512 VBMI + VNNI";
  set_simd_level(SimdLevel::AVX512);
  struct Case { int64_t N, K, bs; };
  for (const Case c : {Case{64 * 19 + 5, 192, 64}, Case{130, 1152, 64}, Case{70, 640, 128}, Case{33, 8192, 4096},
                       Case{17, 32768, 64}, Case{200, 4096, 256}}) {
    Weight w = make_weight(c.N, c.K, c.bs, true, 103);
    for (size_t i = 0; i < w.nested.size(); ++i) w.nested[i] *= static_cast<float>(1 + 3 * (i % 5));
    ASSERT_TRUE(nf4_decode_scales_u8_supported(w.m)) << "K=" << c.K;
    const NF4DecodeLayout U = nf4_build_decode_layout(w.m, DecodeLayoutKind::kVbmi);
    const NF4DecodeLayout F = nf4_build_decode_layout(w.m, DecodeLayoutKind::kVbmi, DecodeScales::kF32);
    ASSERT_EQ(U.scales, DecodeScales::kU8);
    EXPECT_LT(U.nbytes(), F.nbytes());
    const int64_t M = 40;
    const std::vector<float> x = random_normal(M * c.K, 107), bias = random_normal(c.N, 109);
    for (const int digits : {kTableDigitsExact, kTableDigitsInt16}) {
      std::vector<float> yu(3 * c.N, NAN), yf(3 * c.N, NAN);
      ASSERT_TRUE(nf4_decode_matmul(U, w.m.code, x.data(), 3, bias.data(), yu.data(), digits));
      ASSERT_TRUE(nf4_decode_matmul(F, w.m.code, x.data(), 3, bias.data(), yf.data(), digits));
      EXPECT_EQ(0, std::memcmp(yu.data(), yf.data(), yu.size() * sizeof(float))) << "K=" << c.K << " d=" << digits;
    }
    const std::vector<double> y_ref = reference_product(x, dense(w.m), bias, 1, c.N, c.K);
    std::vector<float> y1(c.N);
    ASSERT_TRUE(nf4_decode_matmul(U, w.m.code, x.data(), 1, bias.data(), y1.data()));
    EXPECT_LE(rel_err(y1, y_ref), 1e-5) << "K=" << c.K;
    NF4Matrix released = w.m;
    released.packed = nullptr;
    std::vector<float> yu(M * c.N), yf(M * c.N);
    nf4_matmul(x.data(), M, released, bias.data(), yu.data(), nullptr, &U);
    nf4_matmul(x.data(), M, w.m, bias.data(), yf.data());
    EXPECT_EQ(0, std::memcmp(yu.data(), yf.data(), yu.size() * sizeof(float))) << "GEMM K=" << c.K;
    std::vector<uint8_t> restored(static_cast<size_t>(c.N * c.K / 2), 0xAA);
    nf4_restore_packed(U, restored.data());
    EXPECT_EQ(0, std::memcmp(restored.data(), w.m.packed, restored.size())) << "K=" << c.K;
  }
  const Weight far = make_weight(3, 34816, 64, true, 113), plain = make_weight(3, 4096, 64, false, 113);
  for (const Weight* w : {&far, &plain}) {
    EXPECT_FALSE(nf4_decode_scales_u8_supported(w->m));
    EXPECT_EQ(nf4_build_decode_layout(w->m, DecodeLayoutKind::kVbmi).scales, DecodeScales::kF32);
    EXPECT_THROW(nf4_build_decode_layout(w->m, DecodeLayoutKind::kVbmi, DecodeScales::kU8), ValueError);
  }
  EXPECT_THROW(nf4_build_decode_layout(plain.m, DecodeLayoutKind::kAvx2, DecodeScales::kU8), ValueError);
  set_simd_level(cpu_features().best_level());
}

// The VBMI kernel takes up to kDecodeRowsPerPass rows of x per pass over the codes: every row's
// result has the bits of a call with that row alone, for 1-9 rows (passes of 4, 4 and 1; 3; 2),
// both digit counts and both scale forms.
TEST(NF4DecodeLayout, RowsPerPassGiveTheBitsOfOneRowAtATime) {
  const CpuFeatures& f = cpu_features();
  if (!(f.best_level() == SimdLevel::AVX512 && f.avx512_vbmi && f.avx512_vnni)) GTEST_SKIP() << "needs AVX-512 VBMI + VNNI";
  set_simd_level(SimdLevel::AVX512);
  const int64_t N = 64 * 9 + 7, K = 1152;
  Weight w = make_weight(N, K, 64, true, 131);
  for (size_t i = 0; i < w.nested.size(); ++i) w.nested[i] *= static_cast<float>(1 + i % 3);
  const std::vector<float> x = random_normal(9 * K, 137), bias = random_normal(N, 139);
  for (const DecodeScales scales : {DecodeScales::kU8, DecodeScales::kF32}) {
    const NF4DecodeLayout L = nf4_build_decode_layout(w.m, DecodeLayoutKind::kVbmi, scales);
    for (const int digits : {kTableDigitsExact, kTableDigitsInt16}) {
      std::vector<float> one(9 * N);
      for (int64_t m = 0; m < 9; ++m)
        ASSERT_TRUE(nf4_decode_matmul(L, w.m.code, x.data() + m * K, 1, bias.data(), one.data() + m * N, digits));
      for (const int64_t M : {2, 3, 4, 5, 9}) {
        std::vector<float> y(M * N, NAN);
        ASSERT_TRUE(nf4_decode_matmul(L, w.m.code, x.data(), M, bias.data(), y.data(), digits));
        EXPECT_EQ(0, std::memcmp(y.data(), one.data(), y.size() * sizeof(float)))
            << "M=" << M << " digits=" << digits << " u8=" << (scales == DecodeScales::kU8);
      }
    }
  }
  set_simd_level(cpu_features().best_level());
}

// Each thread builds its own tables and walks its share of the supergroups; called from inside a
// parallel region (one share of all) or single-threaded, the product has the same bits.
TEST(NF4DecodeLayout, SameBitsFromAnyThreadCount) {
  DecodeLayoutKind kind;
  if (!nf4_decode_kind_here(&kind)) GTEST_SKIP() << "no decode kernel at this SIMD level";
  const int64_t M = 3, N = 64 * 19 + 5, K = 320;
  const Weight w = make_weight(N, K, 64, true, 89);
  const NF4DecodeLayout L = nf4_build_decode_layout(w.m, kind);
  const std::vector<float> x = random_normal(M * K, 97), bias = random_normal(N, 101);
  std::vector<float> y(M * N), y_inner(2 * M * N, NAN);
  ASSERT_TRUE(nf4_decode_matmul(L, w.m.code, x.data(), M, bias.data(), y.data()));
  parallel_for(0, 2, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) nf4_decode_matmul(L, w.m.code, x.data(), M, bias.data(), y_inner.data() + t * M * N);
  });
  EXPECT_EQ(0, std::memcmp(y.data(), y_inner.data(), y.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(y.data(), y_inner.data() + M * N, y.size() * sizeof(float)));
}

// A weight whose owner released its packed codes: the layout restores them byte for byte, and
// the products give the same bits as with the codes held: the GEMM (40 rows: W panels decoded
// from the layout, or restored codes on AMX) as on bitsandbytes' layout, the backward from
// restored codes, 5 rows through the layout's kernel either way. Without codes or a layout,
// ValueError.
TEST(NF4DecodeLayout, RestoresPackedCodesForReleasedWeights) {
  struct KindAt { DecodeLayoutKind kind; SimdLevel level; };
  for (const KindAt k : {KindAt{DecodeLayoutKind::kVbmi, SimdLevel::AVX512}, KindAt{DecodeLayoutKind::kAvx2,
                                                                                   SimdLevel::AVX2}})
  for (const int64_t N : {1, 65, 130, 64 * 19 + 5}) {
    if (cpu_features().best_level() < k.level) continue;
    set_simd_level(k.level);  // the level whose kernels read this kind (GEMM panels, the table kernel)
    const Weight w = make_weight(N, 192, 64, true, 71);
    const NF4DecodeLayout L = nf4_build_decode_layout(w.m, k.kind);
    std::vector<uint8_t> restored(static_cast<size_t>(N * 192 / 2), 0xAA);
    nf4_restore_packed(L, restored.data());
    EXPECT_EQ(0, std::memcmp(restored.data(), w.m.packed, restored.size())) << "N=" << N;

    NF4Matrix released = w.m;
    released.packed = nullptr;
    const int64_t M = 40;
    const std::vector<float> x = random_normal(M * 192, 73), dy = random_normal(M * N, 79);
    std::vector<float> y(M * N), y_released(M * N), dx(M * 192), dx_released(M * 192);
    nf4_matmul(x.data(), M, w.m, nullptr, y.data());
    nf4_matmul(x.data(), M, released, nullptr, y_released.data(), nullptr, &L);
    EXPECT_EQ(0, std::memcmp(y.data(), y_released.data(), y.size() * sizeof(float)));
    nf4_matmul(x.data(), 5, w.m, nullptr, y.data(), nullptr, &L);
    nf4_matmul(x.data(), 5, released, nullptr, y_released.data(), nullptr, &L);
    EXPECT_EQ(0, std::memcmp(y.data(), y_released.data(), 5 * N * sizeof(float)));
    nf4_matmul_t(dy.data(), M, w.m, dx.data());
    nf4_matmul_t(dy.data(), M, released, dx_released.data(), false, nullptr, &L);
    EXPECT_EQ(0, std::memcmp(dx.data(), dx_released.data(), dx.size() * sizeof(float)));
    EXPECT_THROW(nf4_matmul(x.data(), M, released, nullptr, y.data()), ValueError);
    EXPECT_THROW(nf4_matmul_t(dy.data(), M, released, dx.data()), ValueError);
  }
  set_simd_level(cpu_features().best_level());
}

// The dense-weight entry points share the NF4 drivers: fp32 tiles read in place (edge tiles copied
// and zero-padded) and bf16 tiles widened. Both against a double reference at every SIMD level.
TEST(DenseTiledMatmul, F32AndBf16MatchFp64ReferenceAtOddSizes) {
  struct Dims {
    int64_t M, N, K;
  };
  for (const Dims s : {Dims{16, 3, 5}, Dims{17, 63, 65}, Dims{40, 17, 1000}, Dims{100, 100, 256}, Dims{33, 7, 4097},
                       Dims{70, 300, 130}}) {
    std::vector<float> w = random_normal(s.N * s.K, 3);
    std::vector<uint16_t> w16(w.size());
    for (size_t i = 0; i < w.size(); ++i) {  // bf16 by truncation; the reference uses the same values
      uint32_t bits;
      std::memcpy(&bits, &w[i], 4);
      w16[i] = static_cast<uint16_t>(bits >> 16);
    }
    const std::vector<float> x = random_normal(s.M * s.K, 5), dy = random_normal(s.M * s.N, 7);
    for (int variant = 0; variant < 2; ++variant) {
      std::vector<double> wd(w.size());
      for (size_t i = 0; i < w.size(); ++i) {
        const uint32_t bits = variant == 0 ? 0 : static_cast<uint32_t>(w16[i]) << 16;
        float v = w[i];
        if (variant == 1) std::memcpy(&v, &bits, 4);
        wd[i] = v;
      }
      std::vector<double> y_ref(s.M * s.N, 0.0), dx_ref(s.M * s.K, 0.5);
      for (int64_t m = 0; m < s.M; ++m)
        for (int64_t n = 0; n < s.N; ++n) {
          double acc = 0.0;
          for (int64_t k = 0; k < s.K; ++k) acc += static_cast<double>(x[m * s.K + k]) * wd[n * s.K + k];
          y_ref[m * s.N + n] = acc;
          for (int64_t k = 0; k < s.K; ++k) dx_ref[m * s.K + k] += static_cast<double>(dy[m * s.N + n]) * wd[n * s.K + k];
        }
      for (const LevelMode& level : available_modes()) {
        apply(level);
        std::vector<float> y(s.M * s.N, NAN), dx(s.M * s.K, 0.5f);
        const std::string what = name(level) + (variant == 0 ? " f32 " : " bf16 ") +
                                 std::to_string(s.M) + "x" + std::to_string(s.N) + "x" + std::to_string(s.K);
        // The product under test: fp32 or bf16 weights, forward or backward, with a low-rank term or not.
        auto forward = [&](float* out, const LowRankOutput* term) {
          if (variant == 0)
            f32_matmul(x.data(), s.M, w.data(), s.N, s.K, out, term);
          else
            bf16_matmul(x.data(), s.M, w16.data(), s.N, s.K, out, term);
        };
        auto backward = [&](float* out, bool accumulate, const LowRankTerm* term) {
          if (variant == 0)
            f32_matmul_t(dy.data(), s.M, w.data(), s.N, s.K, out, accumulate, term);
          else
            bf16_matmul_t(dy.data(), s.M, w16.data(), s.N, s.K, out, accumulate, term);
        };
        forward(y.data(), nullptr);
        backward(dx.data(), /*accumulate=*/true, nullptr);
        // a low-rank term of rank 300 (more rows than one backward tile) on top: dx += g A
        // (with bf16 weights on AMX: one-plane bf16 steps and three-plane fp32 steps in one pass)
        for (const int64_t r : {int64_t{300}, int64_t{5}}) {
          const std::vector<float> g = random_normal(s.M * r, 29), a = random_normal(r * s.K, 31);
          std::vector<double> lr_ref(s.M * s.K, 0.0);
          for (int64_t m = 0; m < s.M; ++m)
            for (int64_t j = 0; j < r; ++j)
              for (int64_t k = 0; k < s.K; ++k) lr_ref[m * s.K + k] += static_cast<double>(g[m * r + j]) * a[j * s.K + k];
          std::vector<double> both_ref(dx_ref);
          for (size_t i = 0; i < both_ref.size(); ++i) both_ref[i] += lr_ref[i] - 0.5;  // dx_ref holds +0.5
          std::vector<float> both(s.M * s.K, NAN);
          const LowRankTerm term{g.data(), a.data(), r};
          backward(both.data(), /*accumulate=*/false, &term);
          EXPECT_LE(rel_err(both, both_ref), 1e-5) << what << " backward + low-rank term r=" << r;
          // the forward's low-rank term of the same rank: y = x W^T + 0.5 u b^T
          const std::vector<float> u = random_normal(s.M * r, 37), b = random_normal(s.N * r, 41);
          std::vector<double> y_lr_ref(y_ref);
          for (int64_t m = 0; m < s.M; ++m)
            for (int64_t n = 0; n < s.N; ++n)
              for (int64_t j = 0; j < r; ++j) y_lr_ref[m * s.N + n] += 0.5 * u[m * r + j] * static_cast<double>(b[n * r + j]);
          std::vector<float> y_lr(s.M * s.N, NAN);
          const LowRankOutput out_term{u.data(), b.data(), r, 0.5f};
          forward(y_lr.data(), &out_term);
          EXPECT_LE(rel_err(y_lr, y_lr_ref), 1e-5) << what << " forward + low-rank term r=" << r;
        }
        EXPECT_LE(rel_err(y, y_ref), 1e-5) << what << " forward";
        EXPECT_LE(rel_err(dx, dx_ref), 1e-5) << what << " backward";
      }
    }
  }
  set_simd_level(cpu_features().best_level());
  set_amx_enabled(true);
  std::vector<float> x(4), y(4);
  EXPECT_THROW(f32_matmul(x.data(), 1, nullptr, 2, 2, y.data()), ValueError);
  EXPECT_THROW(f32_matmul(x.data(), 0, x.data(), 2, 2, y.data()), ValueError);
}

TEST(NF4Matmul, RejectsInconsistentMatrix) {
  Weight w = make_weight(4, 64, 64, false, 3);
  NF4Matrix bad = w.m;
  bad.absmax = nullptr;  // neither absmax nor qabsmax
  std::vector<float> x(64), y(4);
  EXPECT_THROW(nf4_matmul(x.data(), 1, bad, nullptr, y.data()), ValueError);
  bad = w.m;
  bad.blocksize = 48;
  EXPECT_THROW(nf4_matmul(x.data(), 1, bad, nullptr, y.data()), ValueError);
}

// The AMX path splits fp32 into three bf16 parts and keeps six cross products: its error must
// stay at fp32 level (here ~2e-7 of max |y| at K = 256), well below what dropping one product
// (~4e-6) or one part (~4e-3) would give -- 1e-5 alone would not see a lost 2^-18 term.
TEST(AmxTiles, KeepFp32Accuracy) {
  if (!amx_supported()) GTEST_SKIP() << "no AMX-BF16 here";
  set_simd_level(SimdLevel::AVX512);
  set_amx_enabled(true);
  ASSERT_TRUE(amx_usable());
  const int64_t M = 64, N = 48, K = 256;
  std::vector<float> w = random_normal(N * K, 43), x = random_normal(M * K, 47), dy = random_normal(M * N, 53);
  for (size_t i = 0; i < w.size(); ++i) w[i] *= std::exp2(static_cast<float>(i % 9) - 4.0f);  // mixed magnitudes
  std::vector<double> y_ref(M * N, 0.0), dx_ref(M * K, 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        y_ref[m * N + n] += static_cast<double>(x[m * K + k]) * w[n * K + k];
        dx_ref[m * K + k] += static_cast<double>(dy[m * N + n]) * w[n * K + k];
      }
  std::vector<float> y(M * N), dx(M * K);
  f32_matmul(x.data(), M, w.data(), N, K, y.data());
  f32_matmul_t(dy.data(), M, w.data(), N, K, dx.data(), /*accumulate=*/false);
  EXPECT_LE(rel_err(y, y_ref), 1e-6);
  EXPECT_LE(rel_err(dx, dx_ref), 1e-6);
  // Lower precisions (fewer bf16 planes): within their bounds, and really lower (the setting works).
  struct Level {
    const char* name;
    double max_err, min_err;
  };
  for (const Level& lv : {Level{"high", 3e-5, 1e-7}, Level{"medium", 1e-2, 1e-4}}) {
    set_fp32_matmul_precision(lv.name);
    f32_matmul(x.data(), M, w.data(), N, K, y.data());
    f32_matmul_t(dy.data(), M, w.data(), N, K, dx.data(), /*accumulate=*/false);
    EXPECT_LE(rel_err(y, y_ref), lv.max_err) << lv.name;
    EXPECT_LE(rel_err(dx, dx_ref), lv.max_err) << lv.name;
    EXPECT_GE(rel_err(y, y_ref), lv.min_err) << lv.name;
  }
  set_fp32_matmul_precision("highest");
  EXPECT_STREQ(fp32_matmul_precision(), "highest");
  EXPECT_THROW(set_fp32_matmul_precision("low"), ValueError);
  EXPECT_STREQ(fp32_matmul_precision(), "highest");
  set_simd_level(cpu_features().best_level());
}


// A backward whose dy is wider than one packed column block (kBackwardPanelBytes: ~3.6k columns at
// M = 600): the blocks' passes add up, accumulate and the low-rank term (applied with the last
// block) included, at every level.
TEST(NF4Matmul, BackwardOverSeveralColumnBlocks) {
  const int64_t M = 600, N = 9000, K = 40, r = 2;
  const std::vector<float> w = random_normal(N * K, 89), dy = random_normal(M * N, 97);
  const std::vector<float> g = random_normal(M * r, 101), a = random_normal(r * K, 103);
  std::vector<double> ref(M * K, 0.5);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      double acc = 0.0;
      for (int64_t n = 0; n < N; ++n) acc += static_cast<double>(dy[m * N + n]) * w[n * K + k];
      for (int64_t j = 0; j < r; ++j) acc += static_cast<double>(g[m * r + j]) * a[j * K + k];
      ref[m * K + k] += acc;
    }
  const LowRankTerm term{g.data(), a.data(), r};
  for (const LevelMode& level : available_modes()) {
    apply(level);
    std::vector<float> dx(M * K, 0.5f);
    f32_matmul_t(dy.data(), M, w.data(), N, K, dx.data(), /*accumulate=*/true, &term);
    EXPECT_LE(rel_err(dx, ref), 1e-5) << name(level);
  }
  set_simd_level(cpu_features().best_level());
  set_amx_enabled(true);
}

// bf16(v): fp32 rounded to the nearest bf16, ties to even (what VCVTNE2PS2BF16 does to normal values).
double bf16_round(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

// The "medium" precision on AVX512-BF16 without AMX: the tiled products multiply bf16(x) by bf16(W)
// and sum in fp32, so they must match an fp64 product of the rounded operands to fp32 summation
// accuracy (1e-5 of max |y|), while lying ~1e-3 away from the fp32 product (the setting acts). Odd
// K, N and M (partial micro-tiles, odd pair counts, K chunks), the low-rank terms (kept fp32), and
// accumulate; NF4 and dense fp32 weights.
// The backward's NF4 W tile as bf16 pairs in one pass: bit for bit what dequantizing into an fp32
// tile and pairing its rows give, for plain and double-quantized scales, blocks shorter and longer
// than the tile and blocks that start mid-row (K = 320, blocksize 256), odd row counts.
TEST(Bf16Pairs, Nf4TileInOnePassEqualsDecodeThenPair) {
  if (!cpu_features().avx512_bf16 || cpu_features().best_level() != SimdLevel::AVX512)
    GTEST_SKIP() << "no AVX512-BF16 here";
  const int64_t N = 300, K = 320, ldo = 160;
  for (const int64_t bs : {32, 64, 256})
    for (const bool dq : {false, true}) {
      const Weight w = make_weight(N, K, bs, dq, 113);
      for (const int64_t n0 : {0, 37})
        for (const int64_t nc : {1, 2, 7, 256})
          for (const int64_t k0 : {0, 32, 96})
            for (const int64_t kw : {32, 128}) {
              ASSERT_TRUE(bf16_pair_tile_nf4_fits(w.m, n0, nc, k0, kw));
              std::vector<float> fp32(static_cast<size_t>(nc * kw));
              nf4_dequant_tile_generic(w.m, n0, n0 + nc, k0, k0 + kw, fp32.data(), kw);
              std::vector<uint32_t> expect(static_cast<size_t>((nc + 1) / 2 * ldo), 0xDEADBEEF), got = expect;
              bf16_pair_tile_rows(fp32.data(), kw, nc, kw, expect.data(), ldo);
              bf16_pair_tile_nf4(w.m, n0, nc, k0, kw, got.data(), ldo);
              ASSERT_EQ(expect, got) << "bs=" << bs << " dq=" << dq << " n0=" << n0 << " nc=" << nc << " k0=" << k0
                                     << " kw=" << kw;
            }
    }
  const Weight odd = make_weight(8, 40, 32, false, 7);
  EXPECT_FALSE(bf16_pair_tile_nf4_fits(odd.m, 0, 8, 0, 32));  // K % 32 != 0: the two-step path
  const Weight w = make_weight(8, 64, 32, false, 7);
  EXPECT_FALSE(bf16_pair_tile_nf4_fits(w.m, 0, 8, 16, 32));
  EXPECT_FALSE(bf16_pair_tile_nf4_fits(w.m, 0, 8, 0, 48));
  EXPECT_FALSE(bf16_pair_tile_nf4_fits(w.m, 4, 8, 0, 32));
}

TEST(Bf16Pairs, MediumPrecisionMultipliesRoundedOperands) {
  if (!cpu_features().avx512_bf16 || cpu_features().best_level() != SimdLevel::AVX512)
    GTEST_SKIP() << "no AVX512-BF16 here";
  set_simd_level(SimdLevel::AVX512);
  set_amx_enabled(false);
  struct Case {
    int64_t M, N, K;
  };
  // (600 x 9000: dy wider than one packed column block of the backward.)
  for (const Case c : {Case{3, 33, 96}, Case{30, 61, 2113}, Case{133, 97, 4160}, Case{600, 9000, 40}}) {
    const Weight w = make_weight(c.N, c.K, 64, true, 5);
    const std::vector<double> wd = dense(w.m);
    std::vector<float> wf(wd.begin(), wd.end());
    const std::vector<float> x = random_normal(c.M * c.K, 61), dy = random_normal(c.M * c.N, 67);
    std::vector<double> y_ref(c.M * c.N, 0.0), y_bf(c.M * c.N, 0.0), dx_ref(c.M * c.K, 0.0), dx_bf(c.M * c.K, 0.0);
    for (int64_t m = 0; m < c.M; ++m)
      for (int64_t n = 0; n < c.N; ++n)
        for (int64_t k = 0; k < c.K; ++k) {
          const float xv = x[m * c.K + k], dv = dy[m * c.N + n], wv = wf[n * c.K + k];
          y_ref[m * c.N + n] += static_cast<double>(xv) * wv;
          y_bf[m * c.N + n] += bf16_round(xv) * bf16_round(wv);
          dx_ref[m * c.K + k] += static_cast<double>(dv) * wv;
          dx_bf[m * c.K + k] += bf16_round(dv) * bf16_round(wv);
        }
    const int64_t r = 3;  // low-rank terms: fp32 products in the same pass
    const std::vector<float> u = random_normal(c.M * r, 71), b = random_normal(c.N * r, 73);
    const std::vector<float> g = random_normal(c.M * r, 79), a = random_normal(r * c.K, 83);
    std::vector<double> y_lr(y_bf), dx_lr(dx_bf);
    for (int64_t m = 0; m < c.M; ++m)
      for (int64_t j = 0; j < r; ++j) {
        for (int64_t n = 0; n < c.N; ++n) y_lr[m * c.N + n] += 0.5 * static_cast<double>(u[m * r + j]) * b[n * r + j];
        for (int64_t k = 0; k < c.K; ++k) dx_lr[m * c.K + k] += static_cast<double>(g[m * r + j]) * a[j * c.K + k];
      }
    const LowRankOutput out_term{u.data(), b.data(), r, 0.5f};
    const LowRankTerm in_term{g.data(), a.data(), r};
    set_fp32_matmul_precision("medium");
    ASSERT_TRUE(bf16_pair_products());
    const std::string at = " M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K);
    std::vector<float> y(c.M * c.N, NAN), dx(c.M * c.K, NAN);
    nf4_matmul(x.data(), c.M, w.m, nullptr, y.data());
    nf4_matmul_t(dy.data(), c.M, w.m, dx.data());
    // Forward: 3 rows of an aligned W run the exact GEMV kernel, the others the GEMM; backward: always tiled.
    if (c.M > 3) {
      EXPECT_LE(rel_err(y, y_bf), 1e-5) << "nf4 forward" << at;
      EXPECT_GE(rel_err(y, y_ref), 1e-4) << "nf4 forward" << at;
    } else {
      EXPECT_LE(rel_err(y, y_ref), 1e-5) << "nf4 forward, few rows" << at;
    }
    EXPECT_LE(rel_err(dx, dx_bf), 1e-5) << "nf4 backward" << at;
    EXPECT_GE(rel_err(dx, dx_ref), 1e-4) << "nf4 backward" << at;
    f32_matmul(x.data(), c.M, wf.data(), c.N, c.K, y.data(), &out_term);
    f32_matmul_t(dy.data(), c.M, wf.data(), c.N, c.K, dx.data(), false, &in_term);
    EXPECT_LE(rel_err(y, y_lr), 1e-5) << "f32 forward + low-rank" << at;
    EXPECT_LE(rel_err(dx, dx_lr), 1e-5) << "f32 backward + low-rank" << at;
    std::vector<float> dx_acc(c.M * c.K, 0.25f);
    std::vector<double> dx_acc_ref(dx_bf);
    for (double& v : dx_acc_ref) v += 0.25;
    f32_matmul_t(dy.data(), c.M, wf.data(), c.N, c.K, dx_acc.data(), /*accumulate=*/true);
    EXPECT_LE(rel_err(dx_acc, dx_acc_ref), 1e-5) << "f32 backward, accumulate" << at;
    // Back at "highest": fp32 products again.
    set_fp32_matmul_precision("highest");
    EXPECT_FALSE(bf16_pair_products());
    f32_matmul_t(dy.data(), c.M, wf.data(), c.N, c.K, dx.data(), false);
    EXPECT_LE(rel_err(dx, dx_ref), 1e-5) << "f32 backward, highest" << at;
  }
  set_simd_level(SimdLevel::AVX2);  // the setting has no effect below AVX-512
  set_fp32_matmul_precision("medium");
  EXPECT_FALSE(bf16_pair_products());
  set_fp32_matmul_precision("highest");
  set_simd_level(cpu_features().best_level());
  set_amx_enabled(true);
}

}  // namespace
}  // namespace ecomllm::quant
