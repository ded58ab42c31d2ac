// SwiGLU element loops written with explicit intrinsics over a small vector type, compiled twice:
// swiglu_avx2.cpp (-mavx2 -mfma) and swiglu_avx512.cpp (-mavx512f ...). Define ECOM_SIMD_AVX2 or
// ECOM_SIMD_AVX512 before including.
//
// Why not GCC's auto-vectorisation of swiglu_kernel.h: its code for exp_approx (clamps turned into
// blends after the polynomial, constants spilled) ran at ~8 cycles per element on Sapphire Rapids,
// ten times these loops (a 2M-element forward: 5.8 ms -> ~0.6 ms on 2 threads). The arithmetic is
// exp_approx's, step for step, so results agree with the scalar build to an ulp or two.
#pragma once

#include <cstdint>

#include "base/simd_vec.h"
#include "nn/exp_simd.h"
#include "nn/swiglu_kernel.h"

namespace ecomllm::nn::swiglu_simd {
namespace {  // internal linkage: one build per instruction set

using namespace simd;
using vec_math::exp_v;

inline V sigmoid_v(V g) { return div(set1(1.0f), add(set1(1.0f), exp_v(sub(set1(0.0f), g)))); }

// Elements [i0, i1) of swiglu_forward / swiglu_backward (swiglu.h); the tail runs the scalar loop.
void forward_range(float* h, const float* g, const float* u, int64_t i0, int64_t i1) {
  int64_t i = i0;
  for (; i + V::kLanes <= i1; i += V::kLanes) {
    const V gv = load(g + i);
    store(h + i, mul(mul(gv, sigmoid_v(gv)), load(u + i)));
  }
  swiglu_detail::forward_range(h, g, u, i, i1);
}

void backward_range(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t i0, int64_t i1,
                    bool accumulate) {
  int64_t i = i0;
  for (; i + V::kLanes <= i1; i += V::kLanes) {
    const V gv = load(g + i), dhv = load(dh + i);
    const V s = sigmoid_v(gv);
    const V silu = mul(gv, s);
    const V dsilu = fma(silu, sub(set1(1.0f), s), s);  // s + silu (1 - s)
    const V dgv = mul(mul(dhv, load(u + i)), dsilu), duv = mul(dhv, silu);
    store(dg + i, accumulate ? add(dgv, load(dg + i)) : dgv);
    store(du + i, accumulate ? add(duv, load(du + i)) : duv);
  }
  swiglu_detail::backward_range(dg, du, dh, g, u, i, i1, accumulate);
}

}  // namespace
}  // namespace ecomllm::nn::swiglu_simd
