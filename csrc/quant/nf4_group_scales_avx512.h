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
    const __m512i lane = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(b0 % 256)),
                                          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    __m512 code, nested;
    if (nf4_scale_lookup_by_permutes()) {
      // The 256-entry map in 16 registers: two-source permutes of 32 entries, blended on index
      // bits 5-7; 16 consecutive blocks span at most two nested chunks. Same values as the
      // gathers below.
      const float* map = W.nested_code;
      const __mmask16 bit5 = _mm512_test_epi32_mask(q, _mm512_set1_epi32(32));
      const __mmask16 bit6 = _mm512_test_epi32_mask(q, _mm512_set1_epi32(64));
      const __mmask16 bit7 = _mm512_test_epi32_mask(q, _mm512_set1_epi32(128));
      __m512 quarter[4];
      for (int h = 0; h < 4; ++h) {
        const __m512 low = _mm512_permutex2var_ps(_mm512_loadu_ps(map + 64 * h), q, _mm512_loadu_ps(map + 64 * h + 16));
        const __m512 high =
            _mm512_permutex2var_ps(_mm512_loadu_ps(map + 64 * h + 32), q, _mm512_loadu_ps(map + 64 * h + 48));
        quarter[h] = _mm512_mask_mov_ps(low, bit5, high);
      }
      code = _mm512_mask_mov_ps(_mm512_mask_mov_ps(quarter[0], bit6, quarter[1]), bit7,
                                _mm512_mask_mov_ps(quarter[2], bit6, quarter[3]));
      nested = _mm512_mask_mov_ps(_mm512_set1_ps(W.nested_absmax[b0 / 256]),
                                  _mm512_cmpge_epi32_mask(lane, _mm512_set1_epi32(256)),
                                  _mm512_set1_ps(W.nested_absmax[(b0 + count - 1) / 256]));
    } else {
      code = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, q, W.nested_code, 4);
      nested = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, _mm512_srli_epi32(lane, 8),
                                        W.nested_absmax + b0 / 256, 4);
    }
    const __m512 scaled = _mm512_mul_ps(code, nested);
    _mm512_storeu_ps(out, _mm512_maskz_add_ps(live, scaled, _mm512_set1_ps(W.offset)));
    return;
  }
  for (int64_t i = 0; i < 16; ++i) out[i] = 0.0f;
  for (int64_t i = 0; i < count; ++i) W.block_scales((start + 64 * i) / bs, (start + 64 * i) / bs + 1, out + i);
}

constexpr int64_t kGroup = 128;        // weights per 64-byte load
constexpr int64_t kSegmentGroups = 8;  // groups per vector of 16 half-group scales
// Software prefetches in the packed stream, one line per group: to L2 16 KiB ahead and from there
// to L1 512 bytes ahead. Prefetches never fault, so the last 16 KiB of rows prefetch past the end
// (a bounds test per group measured no better). One core keeps only ~16 L1 misses in flight, and
// a T0 prefetch holds one; a T2 prefetch reaches DRAM through L2's deeper queue. Measured
// streaming 1 GiB of 4096 x 4096 matrices on Sapphire Rapids, 2 threads: a light-compute probe
// reads 24-25 GB/s with T0 alone (1-16 KiB ahead), 26.5-27.4 with T1/T2 8-16 KiB ahead; the exact
// kernel 19.3-20.1 GB/s against 18.8-20.0 with T0 2 KiB ahead (its decode is the limit), the
// int16 kernel 23.6-24.2 against 21.1-21.6. No prefetch: 13 GB/s; NTA: worse.
constexpr int64_t kGroupPrefetchFarBytes = 16384;
constexpr int64_t kGroupPrefetchNearBytes = 512;

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
      for (int64_t g = 0; g < count; ++g) {
        const uint8_t* p = row + (g0 + g) * (kGroup / 2);
        _mm_prefetch(reinterpret_cast<const char*>(p) + kGroupPrefetchFarBytes, _MM_HINT_T2);
        _mm_prefetch(reinterpret_cast<const char*>(p) + kGroupPrefetchNearBytes, _MM_HINT_T0);
        total = _mm512_fmadd_ps(dot_group(p, g0 + g), _mm512_permutexvar_ps(select[g], segment_scales), total);
      }
    }
    y[n] = _mm512_reduce_add_ps(total) + (bias ? bias[n] : 0.0f);
  }
}

}  // namespace
}  // namespace ecomllm::quant
