// The row walk and the block scales shared by the AVX-512 grouped M = 1 kernels
// (nf4_gemv_avx512.cpp, nf4_gemv_q16_avx512vnni.cpp). Include only from files built with the AVX-512 flags and without
// FMA contraction; internal linkage, so each such file has its own copy.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "quant/nf4_matmul.h"

namespace ecomllm::quant {
namespace {

// out[i] = scale of the block holding weights [start + 64 i, start + 64 (i + 1)) for i < count
// (<= 16), out[count ..] = 0. Double quantization is undone as dequantize() does it: code * nested,
// then + offset, two roundings (this file is compiled without FMA contraction).
void half_group_scales(const NF4Matrix& W, int64_t start, int64_t count, float* out) {
  const int64_t bs = W.blocksize;
  if (bs == 64) {
    const int64_t b0 = start / 64;
    const __mmask16 live = static_cast<__mmask16>((1u << count) - 1u);
    if (W.absmax) {
      _mm512_storeu_ps(out, _mm512_maskz_loadu_ps(live, W.absmax + b0));
      return;
    }
    const __m512i q = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(live, W.qabsmax + b0));
    const __m512 code = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, q, W.nested_code, 4);
    const __m512i lane = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(b0 % 256)),
                                          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    const __m512 nested = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, _mm512_srli_epi32(lane, 8),
                                                   W.nested_absmax + b0 / 256, 4);
    const __m512 scaled = _mm512_mul_ps(code, nested);
    _mm512_storeu_ps(out, _mm512_maskz_add_ps(live, scaled, _mm512_set1_ps(W.offset)));
    return;
  }
  for (int64_t i = 0; i < 16; ++i) out[i] = 0.0f;
  for (int64_t i = 0; i < count; ++i) W.block_scales((start + 64 * i) / bs, (start + 64 * i) / bs + 1, out + i);
}

constexpr int64_t kGroup = 128;        // weights per 64-byte load
constexpr int64_t kSegmentGroups = 8;  // groups per vector of 16 half-group scales
// Software prefetch distance in the packed stream (one line per group). Measured streaming 1 GB of
// 4096 x 4096 matrices on Sapphire Rapids, 2 threads: none 13.5 GB/s, 512 B 12.9, 2-4 KiB 17-20
// (run-to-run noise decides between them), 8 KiB 19.5; _MM_HINT_T1 no better, NTA worse.
constexpr int64_t kGroupPrefetchBytes = 2048;

// y[n] = sum over groups of dot_group(group bytes, g) * scale(lanes), reduced (+ bias[n]), for
// n in [n0, n1). dot_group(p, g) returns 16 fp32 lane sums of group g (lanes 0-7: its first 64
// weights, 8-15: the next 64); segment(g0, scales) turns the 16 half-group block scales of groups
// g0 .. g0+7 into the lane scales (the int16 kernel multiplies in its x scales).
template <typename Segment, typename DotGroup>
void walk_grouped_rows(const NF4Matrix& W, const float* bias, int64_t n0, int64_t n1, float* y, Segment&& segment,
                       DotGroup&& dot_group) {
  const int64_t K = W.cols, groups = K / kGroup;
  // select[g]: lanes 0-7 take half-group scale 2g, lanes 8-15 take 2g + 1.
  __m512i select[kSegmentGroups];
  for (int g = 0; g < kSegmentGroups; ++g)
    select[g] = _mm512_inserti64x4(_mm512_set1_epi32(2 * g), _mm256_set1_epi32(2 * g + 1), 1);
  alignas(64) float scales[16];
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = W.packed + n * (K / 2);
    __m512 total = _mm512_setzero_ps();
    for (int64_t g0 = 0; g0 < groups; g0 += kSegmentGroups) {
      const int64_t count = std::min(kSegmentGroups, groups - g0);
      half_group_scales(W, n * K + g0 * kGroup, 2 * count, scales);
      const __m512 segment_scales = segment(g0, count, _mm512_load_ps(scales));
      for (int64_t g = 0; g < count; ++g)
        total = _mm512_fmadd_ps(dot_group(row + (g0 + g) * (kGroup / 2), g0 + g),
                                _mm512_permutexvar_ps(select[g], segment_scales), total);
    }
    y[n] = _mm512_reduce_add_ps(total) + (bias ? bias[n] : 0.0f);
  }
}

}  // namespace
}  // namespace ecomllm::quant
