// Unit tests for csrc/base: buffers, tensor views, parallel_for error handling, CPU dispatch,
// half-precision conversions.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "base/buffer.h"
#include "base/cpu_features.h"
#include "base/half.h"
#include "base/parallel.h"
#include "base/tensor.h"

namespace ecomllm {
namespace {

TEST(AlignedBuffer, IsAlignedZeroedAndMovable) {
  AlignedBuffer a(1000, /*zero=*/true);
  ASSERT_EQ(reinterpret_cast<uintptr_t>(a.data()) % 64, 0u);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(static_cast<int>(a.data()[i]), 0);
  std::byte* p = a.data();
  AlignedBuffer b(std::move(a));
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(b.size(), 1000u);
}

TEST(TensorView, ContiguityAndChecks) {
  float data[24];
  TensorView v = TensorView::contiguous(data, DType::F32, {2, 3, 4});
  EXPECT_EQ(v.numel(), 24);
  EXPECT_EQ(v.nbytes(), 96);
  EXPECT_TRUE(v.is_contiguous());
  EXPECT_EQ(v.shape_str(), "(2,3,4)");
  v.strides[2] = 2;  // a strided view
  EXPECT_FALSE(v.is_contiguous());
  EXPECT_THROW(v.expect_contiguous("x"), ValueError);
  EXPECT_THROW(v.expect_dtype(DType::BF16, "x"), ValueError);
  EXPECT_THROW(v.expect_ndim(2, "x"), ValueError);
  try {
    v.expect_dtype(DType::BF16, "weights");
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("expected dtype bfloat16, got float32"), std::string::npos) << e.what();
  }
}

TEST(ParallelFor, CoversRangeExactlyOnce) {
  std::vector<int> hits(10007, 0);
  parallel_for(0, static_cast<int64_t>(hits.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[i] += 1;
  });
  for (int h : hits) ASSERT_EQ(h, 1);
}

TEST(ParallelFor, RethrowsWorkerExceptionOnCaller) {
  EXPECT_THROW(parallel_for(0, 1000, 1,
                            [&](int64_t b, int64_t e) {
                              for (int64_t i = b; i < e; ++i)
                                if (i == 777) throw ValueError("bad element 777");
                            }),
               ValueError);
  // The pool is still usable afterwards.
  int64_t total = 0;
  parallel_for(0, 1, 1, [&](int64_t b, int64_t e) { total += e - b; });
  EXPECT_EQ(total, 1);
}

TEST(CpuFeatures, LevelsParseAndClamp) {
  EXPECT_EQ(parse_simd_level("scalar"), SimdLevel::Scalar);
  EXPECT_EQ(parse_simd_level("avx2"), SimdLevel::AVX2);
  EXPECT_EQ(parse_simd_level("avx512"), SimdLevel::AVX512);
  EXPECT_THROW(parse_simd_level("sse9"), ValueError);
  const SimdLevel best = cpu_features().best_level();
  const SimdLevel before = simd_level();
  set_simd_level(SimdLevel::Scalar);
  EXPECT_EQ(simd_level(), SimdLevel::Scalar);
  if (best != SimdLevel::AVX512) EXPECT_THROW(set_simd_level(SimdLevel::AVX512), ValueError);
  set_simd_level(before);
}

TEST(Half, Bf16RoundTripAndRounding) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  // 1 + 2^-8 lies exactly between two bf16 values: ties go to even (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3 * 2^-8 ties between 1+2^-7 (odd) and 1+2^-6 (even): rounds up to even.
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  for (uint32_t h = 0; h < 65536; ++h) {  // every finite bf16 survives fp32 and back
    const float f = bf16_to_f32(static_cast<uint16_t>(h));
    if (!std::isnan(f)) ASSERT_EQ(f32_to_bf16(f), h);
  }
}

TEST(Half, F16RoundTripSubnormalsAndOverflow) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);   // exactly half of it: ties to even (0)
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // rounds to infinity
  EXPECT_EQ(f32_to_f16(-1e9f), 0xfc00);
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    if (!std::isnan(f)) ASSERT_EQ(f32_to_f16(f), h) << "bits " << h;
  }
}

}  // namespace
}  // namespace ecomllm
