// Scalar reference distance kernels and the run-time dispatch (see distance.h).
#include "index/distance.h"

#include "base/error.h"
#include "base/half.h"

namespace ecomllm::index {
namespace {

float l2_f32_scalar(const float* q, const float* x, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    const float d = q[i] - x[i];
    s += d * d;
  }
  return s;
}

float dot_f32_scalar(const float* q, const float* x, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += q[i] * x[i];
  return s;
}

float l2_bf16_scalar(const float* q, const uint16_t* x, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    const float d = q[i] - bf16_to_f32(x[i]);
    s += d * d;
  }
  return s;
}

float dot_bf16_scalar(const float* q, const uint16_t* x, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += q[i] * bf16_to_f32(x[i]);
  return s;
}

float dot_i8_scalar(const float* q, const int8_t* x, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += q[i] * static_cast<float>(x[i]);
  return s;
}

const DistanceKernels kScalar{l2_f32_scalar, dot_f32_scalar, l2_bf16_scalar, dot_bf16_scalar, dot_i8_scalar};

}  // namespace

const DistanceKernels& distance_kernels(SimdLevel level) {
  ECOM_CHECK_ARG(static_cast<int>(level) <= static_cast<int>(cpu_features().best_level()), "SIMD level ",
                 simd_level_name(level), " is not supported by this CPU");
  switch (level) {
    case SimdLevel::AVX512: return simd::avx512_distance_kernels();
    case SimdLevel::AVX2: return simd::avx2_distance_kernels();
    case SimdLevel::Scalar: break;
  }
  return kScalar;
}

const DistanceKernels& distance_kernels() { return distance_kernels(simd_level()); }

}  // namespace ecomllm::index
