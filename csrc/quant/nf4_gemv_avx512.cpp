// AVX-512 M = 1 NF4 kernel over 128-weight groups (see nf4_gemv_grouped_supported in nf4_matmul.h).
//
// Why a second GEMV: the generic one (nf4_kernels_simd.h) widens 16 bytes to 16 dwords, shifts,
// and looks up 2 x 16 weights per step in a table scaled per block, with a block loop around each
// 64 weights; measured on Sapphire Rapids that runs at ~4.7 weights per cycle, half of what the
// vector ports allow and well under DRAM bandwidth with two cores. Here one 64-byte load holds
// a group of 128 weights; dword lane i holds weights 8i .. 8i+7 as nibbles, so shifting the whole
// vector by 4j bits puts weight 8i + (j ^ 1) in the low 4 bits of every lane and vpermps looks
// all 16 up at once in the unscaled code table (it reads only those 4 bits). x is pre-permuted to
// that order once per call (gemv_group_position). Lanes 0-7 cover the group's first 64 weights,
// lanes 8-15 the next 64; both halves lie in one absmax block each (blocksize % 64 == 0), so the
// group's code . x sums are scaled per lane by a vector of two block scales.
//
// Per group: 1 load, 7 shifts, 8 permutes, 8 multiply-adds against x, and a permute + FMA for the
// scales: ~13 cycles on the two 512-bit ports. Measured single-threaded in L2: ~7.5 weights per
// cycle (1.6x the generic kernel). Loading from bytes 1-3 instead of shifting by 8/16/24 (the
// same low bits) was slower: those loads split cache lines. AMX int8 at M = 1 (codes as three
// int8 digits in A tiles, x digits in B) was exact enough but 2x slower: C must be stored and
// rescaled every 64-weight block, a serial chain per block (benchmarks/README.md has the figures).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "quant/nf4_group_scales_avx512.h"
#include "quant/nf4_matmul.h"

namespace ecomllm::quant {

void gemv_rows_grouped_avx512(const NF4Matrix& W, const float* xg, const float* bias, int64_t n0, int64_t n1,
                              float* y) {
  const __m512 table = _mm512_loadu_ps(W.code);
  walk_grouped_rows(
      W, bias, n0, n1, y, [](int64_t, int64_t, __m512 scales) { return scales; },
      [&](const uint8_t* p, int64_t g) {
        const float* xv = xg + g * kGroup;
        const __m512i v = _mm512_loadu_si512(p);
        // lookup(s) = table[bits s .. s+3 of every lane]: element 8 i + (s / 4 ^ 1) of the group.
        auto lookup = [&](int s) { return _mm512_permutexvar_ps(_mm512_srli_epi32(v, s), table); };
        // Two chains (even / odd shifts) halve the multiply-add latency per group.
        __m512 even = _mm512_mul_ps(_mm512_permutexvar_ps(v, table), _mm512_loadu_ps(xv));
        __m512 odd = _mm512_mul_ps(lookup(4), _mm512_loadu_ps(xv + 16));
        even = _mm512_fmadd_ps(lookup(8), _mm512_loadu_ps(xv + 32), even);
        odd = _mm512_fmadd_ps(lookup(12), _mm512_loadu_ps(xv + 48), odd);
        even = _mm512_fmadd_ps(lookup(16), _mm512_loadu_ps(xv + 64), even);
        odd = _mm512_fmadd_ps(lookup(20), _mm512_loadu_ps(xv + 80), odd);
        even = _mm512_fmadd_ps(lookup(24), _mm512_loadu_ps(xv + 96), even);
        odd = _mm512_fmadd_ps(lookup(28), _mm512_loadu_ps(xv + 112), odd);
        return _mm512_add_ps(even, odd);
      });
}

}  // namespace ecomllm::quant
