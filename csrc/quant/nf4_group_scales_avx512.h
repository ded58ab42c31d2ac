// The row walk and the block scales shared by the AVX-512 grouped M = 1 kernels
// (nf4_gemv_avx512.cpp, nf4_gemv_q16_avx512vnni.cpp). Include only from files built with the
// AVX-512 flags and without FMA contraction; internal linkage, so each such file has its own copy.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "quant/nf4.h"
#include "quant/nf4_matmul.h"

namespace ecomllm::quant {
namespace {

constexpr int64_t kGroup = 128;  // weights per 64-byte load

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

// The 256 possible fp32 block scales of one nested chunk (256 blocks) of a double-quantized
// matrix, undone as dequantize() does it: code256[q] * nested, then + offset, two roundings (this
// file is compiled without FMA contraction). Tabulated once per chunk instead of gathering
// code256[q] per block, as this walk did before: vgatherdps is slow on CPUs with the gather data
// sampling mitigation. In a stand-alone replica the gathers and the per-group scale permute cost
// ~2 cycles of ~19 per 128-weight group; through the library the change measured +6% cache-hot
// with fp32 absmax and within noise with double quantization and when streamed.
class NestedScaleTable {
 public:
  explicit NestedScaleTable(const NF4Matrix& W) : W_(W) {}

  // table[q] = the scale of a block of nested chunk `chunk` whose 8-bit code is q.
  const float* of(int64_t chunk) {
    if (chunk != chunk_) {
      const __m512 nested = _mm512_set1_ps(W_.nested_absmax[chunk]), offset = _mm512_set1_ps(W_.offset);
      for (int q = 0; q < 256; q += 16) {
        const __m512 scaled = _mm512_mul_ps(_mm512_loadu_ps(W_.nested_code + q), nested);
        _mm512_store_ps(table_ + q, _mm512_add_ps(scaled, offset));
      }
      chunk_ = chunk;
    }
    return table_;
  }

 private:
  const NF4Matrix& W_;
  int64_t chunk_ = -1;
  alignas(64) float table_[256];
};

// y[n] = sum over 128-weight groups g of row n of dot_group(group bytes, g), lanes 0-7 times the
// scale of the block holding the group's first 64 weights, lanes 8-15 times that of the next 64,
// all 16 lanes reduced (+ bias[n]), for n in [n0, n1). Needs nf4_gemv_grouped_supported(W): both
// halves of a group then lie in one block each, and a nested chunk (256 blocks of a power-of-two
// blocksize >= 64) starts on a group boundary, so each run of groups below reads one table.
template <typename DotGroup>
void walk_grouped_rows(const NF4Matrix& W, const float* bias, int64_t n0, int64_t n1, float* y, DotGroup&& dot_group) {
  const int64_t K = W.cols, groups = K / kGroup;
  const int shift = __builtin_ctzll(static_cast<uint64_t>(W.blocksize));  // block of flat index i: i >> shift
  NestedScaleTable nested(W);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = W.packed + n * (K / 2);
    const int64_t row_start = n * K;
    // Two accumulators, one per half: each masked multiply-add scales its 8 lanes by a scale
    // broadcast from memory (no per-group permute to build a two-scale vector).
    __m512 first = _mm512_setzero_ps(), second = _mm512_setzero_ps();
    // Groups [g0, g1) with scale(b) = pointer to the scale of block b.
    auto run = [&](int64_t g0, int64_t g1, auto&& scale) {
      for (int64_t g = g0; g < g1; ++g) {
        const uint8_t* p = row + g * (kGroup / 2);
        _mm_prefetch(reinterpret_cast<const char*>(p) + kGroupPrefetchFarBytes, _MM_HINT_T2);
        _mm_prefetch(reinterpret_cast<const char*>(p) + kGroupPrefetchNearBytes, _MM_HINT_T0);
        const __m512 d = dot_group(p, g);
        const int64_t start = row_start + g * kGroup;
        first = _mm512_mask3_fmadd_ps(d, _mm512_set1_ps(*scale(start >> shift)), first, 0x00FF);
        second = _mm512_mask3_fmadd_ps(d, _mm512_set1_ps(*scale((start + kGroup / 2) >> shift)), second, 0xFF00);
      }
    };
    if (W.absmax) {
      run(0, groups, [&](int64_t b) { return W.absmax + b; });
    } else {
      for (int64_t g = 0; g < groups;) {
        const int64_t chunk = ((row_start + g * kGroup) >> shift) / kNestedBlocksize;
        const int64_t next_chunk_start = ((chunk + 1) * kNestedBlocksize) << shift;  // flat index
        const int64_t g_end = std::min(groups, (next_chunk_start - row_start) / kGroup);
        const float* table = nested.of(chunk);
        run(g, g_end, [&](int64_t b) { return table + W.qabsmax[b]; });
        g = g_end;
      }
    }
    y[n] = _mm512_reduce_add_ps(_mm512_add_ps(first, second)) + (bias ? bias[n] : 0.0f);
  }
}

}  // namespace
}  // namespace ecomllm::quant
