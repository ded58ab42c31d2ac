// Distance kernels of the vector index: a query row in fp32 against one stored row in fp32, bf16
// or int8. Each kernel has a plain scalar reference (distance.cpp) and AVX2 / AVX-512 variants
// (distance_avx2.cpp, distance_avx512.cpp) chosen at run time from base/cpu_features.h
// (ECOMLLM_CPU or set_simd_level force a level). n >= 1 is the row length (dim); pointers need no
// alignment. The kernels return plain sums; the index turns them into metric distances:
//   L2      d = sum (q - x)^2                       (squared, no sqrt, like hnswlib)
//   IP      d = 1 - q.x
//   cosine  d = 1 - q.x on rows normalised at insert and query time
// int8 rows carry a per-row scale s (x ~= s * code), so q.x = s * dot_i8(q, code).
#pragma once

#include <cstdint>

#include "base/cpu_features.h"

namespace ecomllm::index {

struct DistanceKernels {
  float (*l2_f32)(const float* q, const float* x, int64_t n);
  float (*dot_f32)(const float* q, const float* x, int64_t n);
  float (*l2_bf16)(const float* q, const uint16_t* x, int64_t n);   // x: bf16 bit patterns
  float (*dot_bf16)(const float* q, const uint16_t* x, int64_t n);
  float (*dot_i8)(const float* q, const int8_t* x, int64_t n);      // sum q[i] * x[i]
};

// The kernels of one SIMD level (ValueError if this CPU cannot run it), and of the active level.
const DistanceKernels& distance_kernels(SimdLevel level);
const DistanceKernels& distance_kernels();

namespace simd {
// Defined in distance_avx2.cpp / distance_avx512.cpp; only called when the CPU supports them.
const DistanceKernels& avx2_distance_kernels();
const DistanceKernels& avx512_distance_kernels();
}  // namespace simd

}  // namespace ecomllm::index
