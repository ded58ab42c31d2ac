// AVX2 kernel of the int16-activation NF4 GEMV (see nf4_gemv_q16.h); compiled with -mavx2 -mfma.
// Also used at the AVX-512 level: the step is bound by the byte shuffles, which AVX-512 only widens.
#include <immintrin.h>

#include <vector>

#include "quant/nf4.h"
#include "quant/nf4_gemv_q16.h"

namespace ecomllm::quant {
namespace {

// One 64-weight chunk of a row: 32 packed bytes -> four vectors of 16 int16 code values in
// q16_position order (even elements' words: A then B; odd elements': C then D).
struct ChunkDecoder {
  __m256i lo_plane, hi_plane, nibble_mask;
  explicit ChunkDecoder(const int16_t* table) {
    alignas(16) uint8_t lo[16], hi[16];
    for (int c = 0; c < 16; ++c) {
      const uint16_t v = static_cast<uint16_t>(table[c]);
      lo[c] = static_cast<uint8_t>(v & 0xff);
      hi[c] = static_cast<uint8_t>(v >> 8);
    }
    lo_plane = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(lo)));
    hi_plane = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(hi)));
    nibble_mask = _mm256_set1_epi8(0x0f);
  }
  // Words of the codes whose 4-bit indices are the bytes of idx (each < 16).
  void words(__m256i idx, __m256i* first, __m256i* second) const {
    const __m256i l = _mm256_shuffle_epi8(lo_plane, idx), h = _mm256_shuffle_epi8(hi_plane, idx);
    *first = _mm256_unpacklo_epi8(l, h);
    *second = _mm256_unpackhi_epi8(l, h);
  }
  // sum over the chunk of code * xq as 8 int32 lanes (exact: see the overflow bound in the header).
  __m256i dot(const uint8_t* packed, const int16_t* xq) const {
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(packed));
    __m256i a, b, c, d;
    words(_mm256_and_si256(_mm256_srli_epi16(bytes, 4), nibble_mask), &a, &b);  // even elements
    words(_mm256_and_si256(bytes, nibble_mask), &c, &d);                        // odd elements
    const __m256i* x = reinterpret_cast<const __m256i*>(xq);
    const __m256i ab = _mm256_add_epi32(_mm256_madd_epi16(a, _mm256_loadu_si256(x)),
                                        _mm256_madd_epi16(b, _mm256_loadu_si256(x + 1)));
    const __m256i cd = _mm256_add_epi32(_mm256_madd_epi16(c, _mm256_loadu_si256(x + 2)),
                                        _mm256_madd_epi16(d, _mm256_loadu_si256(x + 3)));
    return _mm256_add_epi32(ab, cd);
  }
};

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// scale[c] = absmax(block of row n, chunk c) * xscale[c] for the row's K / 64 chunks.
void chunk_scales(const NF4Matrix& W, int64_t n, const float* xscale, std::vector<float>& block, float* scale) {
  const int64_t K = W.cols, bs = W.blocksize, chunks = K / kQ16Chunk;
  const int64_t b0 = n * K / bs, b1 = (n * K + K - 1) / bs + 1;
  block.resize(static_cast<size_t>(b1 - b0));
  if (W.absmax) {
    for (int64_t b = b0; b < b1; ++b) block[b - b0] = W.absmax[b];
  } else {  // double quantization undone inline (NF4Matrix::block_scales per row cost ~10%)
    for (int64_t b = b0; b < b1; ++b) {
      const float scaled = W.nested_code[W.qabsmax[b]] * W.nested_absmax[b / kNestedBlocksize];
      block[b - b0] = scaled + W.offset;  // two roundings, as bitsandbytes (no FMA contraction)
    }
  }
  // Walk the chunks block by block (a division per chunk cost as much as the decode).
  const int64_t chunks_per_block = bs / kQ16Chunk;
  int64_t b = b0, in_block = (n * K - b0 * bs) / kQ16Chunk;
  for (int64_t c = 0; c < chunks; ++c) {
    scale[c] = block[b - b0] * xscale[c];
    if (++in_block == chunks_per_block) in_block = 0, ++b;
  }
}

constexpr int64_t kPrefetchBytes = 2048;  // ahead in each row's packed stream

}  // namespace

// Two rows per pass: their chains of fp32 multiply-adds interleave, and each x load serves both.
void gemv_q16_rows_avx2(const NF4Matrix& W, const int16_t* table, const int16_t* xq, const float* xscale,
                        const float* bias, int64_t n0, int64_t n1, float* y) {
  const int64_t K = W.cols, chunks = K / kQ16Chunk, row_bytes = K / 2;
  const ChunkDecoder dec(table);
  std::vector<float> block, scales(static_cast<size_t>(2 * chunks));
  float* s0 = scales.data();
  float* s1 = s0 + chunks;
  for (int64_t n = n0; n < n1; n += 2) {
    const bool pair = n + 1 < n1;
    const uint8_t* r0 = W.packed + n * row_bytes;
    const uint8_t* r1 = pair ? r0 + row_bytes : r0;
    chunk_scales(W, n, xscale, block, s0);
    if (pair) chunk_scales(W, n + 1, xscale, block, s1);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t off = c * (kQ16Chunk / 2);
      _mm_prefetch(reinterpret_cast<const char*>(r0 + off) + kPrefetchBytes, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(r1 + off) + kPrefetchBytes, _MM_HINT_T0);
      const int16_t* xc = xq + c * kQ16Chunk;
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dec.dot(r0 + off, xc)), _mm256_set1_ps(s0[c]), acc0);
      if (pair) acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dec.dot(r1 + off, xc)), _mm256_set1_ps(s1[c]), acc1);
    }
    y[n] = hsum(acc0) + (bias ? bias[n] : 0.0f);
    if (pair) y[n + 1] = hsum(acc1) + (bias ? bias[n + 1] : 0.0f);
  }
}

}  // namespace ecomllm::quant
