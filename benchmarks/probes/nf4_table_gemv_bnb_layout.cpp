// Stand-alone probe (not part of the build): the product-table NF4 M = 1 kernel of
// nf4_lut_gemv.cpp, reading bitsandbytes' row-major layout directly (as the library's weights are
// stored) instead of its own repacked one, measured against the library's fp32 grouped kernel.
//
// After a release build of the library in build/py (`make build`), from the repository root:
//   g++ -O3 -std=c++20 -fopenmp -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vbmi -mavx512vnni -Icsrc benchmarks/probes/nf4_table_gemv_bnb_layout.cpp build/py/libecomllm_core.a $(pkg-config --libs openblas sentencepiece) -o /tmp/nf4_table_bnb
//   /tmp/nf4_table_bnb   # table build time; L2-resident speed, 1 thread; 1 GiB streamed, 2 threads
//
// Per call, x becomes tables (three signed-byte digits of code[c] * x[k] * 2^23 / max|x| per
// 64-column segment; see nf4_lut_gemv.cpp). The walk takes 64 rows ("supergroup") at a time; each
// 128-column step loads 16 rows x 64 bytes, transposes the 16 x 16 dwords in registers (64
// vpermt2d) so that a vector holds one octet (8 columns) of 16 rows, stores them to an L1 scratch
// one step ahead, and then looks products up exactly as the repacked probe does (3 index ops, 6
// vpermb, 6 vpdpbusd per 64 bytes, tables in registers for 4 x 16 rows). Block scales: the 8-bit
// scale codes of 16 rows x 16 segments are decoded with register permutes (no gathers) and
// transposed. The next supergroup (contiguous) is prefetched into L2 one 4 KiB slice per step.
// Results: benchmarks/README.md, "Zen 4" section. Exact: 2.6e-7 of the fp32 kernel.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "base/buffer.h"
#include "quant/nf4.h"
#include "quant/nf4_decode_layout.h"
#include "quant/nf4_matmul.h"

namespace probe {
using namespace ecomllm;
using namespace ecomllm::quant;

constexpr int64_t kTableRows = 64;  // rows of W per supergroup (4 vectors of 16 rows)

namespace {

constexpr int64_t kRowsPerVector = 16;
constexpr int64_t kVectorsPerSupergroup = kTableRows / kRowsPerVector;  // 4
constexpr int64_t kOctetsPerStep = 16;                                  // one 64-byte load per row
constexpr int64_t kOctetsPerSegment = 8;                                // 64 columns: one scale

// Index vectors of the transpose's exchange stages (below), for d = 1, 2, 4, 8: lane c of
// kKeepLow[d] picks row j's own dword c where bit d of c is clear, else row j + d's dword c - d;
// kKeepHigh[d] picks row j's dword c + d where the bit is clear, else row j + d's own dword c
// (a two-source permute numbers the second source's lanes 16..31).
struct ExchangeIndices {
  alignas(64) int32_t keep_low[4][16];
  alignas(64) int32_t keep_high[4][16];
  constexpr ExchangeIndices() : keep_low(), keep_high() {
    for (int stage = 0; stage < 4; ++stage) {
      const int d = 1 << stage;
      for (int c = 0; c < 16; ++c) {
        keep_low[stage][c] = (c & d) ? 16 + c - d : c;
        keep_high[stage][c] = (c & d) ? 16 + c : c + d;
      }
    }
  }
};
constexpr ExchangeIndices kExchange{};

// v[j] holds dwords 0..15 of row j; afterwards v[o] holds dword o of rows 0..15 (lane j = row j).
// Stage d swaps bit log2(d) of the row and column indices with one two-source permute per output
// vector: 64 vpermt2d for 16 vectors.
template <int kStage>
inline void exchange_stage(__m512i v[16]) {
  constexpr int d = 1 << kStage;
  const __m512i lo = _mm512_load_si512(kExchange.keep_low[kStage]);
  const __m512i hi = _mm512_load_si512(kExchange.keep_high[kStage]);
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) {
    if (j & d) continue;
    const __m512i a = v[j], b = v[j + d];
    v[j] = _mm512_permutex2var_epi32(a, lo, b);
    v[j + d] = _mm512_permutex2var_epi32(a, hi, b);
  }
}

inline void transpose16x16_dwords(__m512i v[16]) {
  exchange_stage<0>(v);
  exchange_stage<1>(v);
  exchange_stage<2>(v);
  exchange_stage<3>(v);
}

}  // namespace

// The x tables: the library's builder (quant/nf4_decode_layout.h), whose layout this walk shares;
// false where x holds inf/NaN (not exercised here).
bool nf4_build_product_tables(const float* code, const float* x, int64_t K, int8_t* tables, float* xscale) {
  for (int64_t k = 0; k < K; ++k)
    if (!std::isfinite(x[k])) return false;
  ecomllm::quant::nf4_build_product_tables(code, x, K, 0, K / 64, tables, xscale);
  return true;
}

namespace {

// The 256-entry map of the 8-bit scale codes in 16 registers, looked up 16 lanes at a time with
// two-source permutes (32 entries each) and blends on index bits 5-7. Vector gathers from the map
// measured ~22 cycles per 16 lanes on Zen 4; this is ~8 permutes and 7 blends.
struct ScaleCodeMap {
  __m512 part[16];
  explicit ScaleCodeMap(const float* map) {
    for (int i = 0; i < 16; ++i) part[i] = _mm512_loadu_ps(map + 16 * i);
  }
  __m512 lookup(__m512i q) const {
    const __mmask16 bit5 = _mm512_test_epi32_mask(q, _mm512_set1_epi32(32));
    const __mmask16 bit6 = _mm512_test_epi32_mask(q, _mm512_set1_epi32(64));
    const __mmask16 bit7 = _mm512_test_epi32_mask(q, _mm512_set1_epi32(128));
    __m512 quarter[4];
    for (int h = 0; h < 4; ++h) {  // entries 64 h .. 64 h + 63
      const __m512 low = _mm512_permutex2var_ps(part[4 * h], q, part[4 * h + 1]);
      const __m512 high = _mm512_permutex2var_ps(part[4 * h + 2], q, part[4 * h + 3]);
      quarter[h] = _mm512_mask_mov_ps(low, bit5, high);
    }
    const __m512 lower = _mm512_mask_mov_ps(quarter[0], bit6, quarter[1]);
    const __m512 upper = _mm512_mask_mov_ps(quarter[2], bit6, quarter[3]);
    return _mm512_mask_mov_ps(lower, bit7, upper);
  }
};

// Absmax of the 64-column segments s0 .. s0 + count - 1 (count <= 16) of row `row`, blocksize 64:
// blocks row * segments + s0 + i. Undone as dequantize() does it: code * nested, then + offset.
__m512 row_segment_absmax(const NF4Matrix& W, const ScaleCodeMap* map, int64_t row, int64_t s0, int64_t count) {
  const int64_t b0 = row * (W.cols / 64) + s0;
  const __mmask16 live = static_cast<__mmask16>((1u << count) - 1u);
  if (W.absmax) return _mm512_maskz_loadu_ps(live, W.absmax + b0);
  const __m512i q = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(live, W.qabsmax + b0));
  // Lanes at or past the next multiple of 256 take the next nested scale.
  const int64_t first_nested = b0 / kNestedBlocksize, last_nested = (b0 + count - 1) / kNestedBlocksize;
  const int64_t before_boundary = kNestedBlocksize - b0 % kNestedBlocksize;  // lanes still in first_nested
  const __mmask16 next =
      before_boundary >= 16 ? __mmask16{0} : static_cast<__mmask16>(live & ~((1u << before_boundary) - 1u));
  const __m512 nested = _mm512_mask_mov_ps(_mm512_set1_ps(W.nested_absmax[first_nested]), next,
                                           _mm512_set1_ps(W.nested_absmax[last_nested]));
  return _mm512_maskz_add_ps(live, _mm512_mul_ps(map->lookup(q), nested), _mm512_set1_ps(W.offset));
}

// seg_scale[s * kTableRows + r] = scale of the absmax block holding row r0 + r's columns
// [64 s, 64 s + 64), times xscale[s], for r < live_rows (0 for the rest). Blocksize 64 decodes 16
// rows x 16 segments at a time and transposes them; other blocksizes take a scalar loop.
void segment_scales(const NF4Matrix& W, const ScaleCodeMap* map, const float* xscale, int64_t r0,
                    int64_t live_rows, float* seg_scale) {
  const int64_t K = W.cols, segments = K / 64, bs = W.blocksize;
  if (bs != 64) {
    for (int64_t r = 0; r < kTableRows; ++r)
      for (int64_t s = 0; s < segments; ++s) {
        float absmax = 0.0f;
        if (r < live_rows) W.block_scales(((r0 + r) * K + 64 * s) / bs, ((r0 + r) * K + 64 * s) / bs + 1, &absmax);
        seg_scale[s * kTableRows + r] = absmax * xscale[s];
      }
    return;
  }
  for (int64_t rv = 0; rv < kVectorsPerSupergroup; ++rv)
    for (int64_t s0 = 0; s0 < segments; s0 += 16) {
      const int64_t count = std::min<int64_t>(16, segments - s0);
      __m512i v[16];
      for (int64_t j = 0; j < 16; ++j) {
        const int64_t r = rv * 16 + j;
        v[j] = r < live_rows ? _mm512_castps_si512(row_segment_absmax(W, map, r0 + r, s0, count))
                             : _mm512_setzero_si512();
      }
      transpose16x16_dwords(v);  // v[i]: segment s0 + i of the 16 rows
      for (int64_t i = 0; i < count; ++i)
        _mm512_store_ps(seg_scale + (s0 + i) * kTableRows + rv * 16,
                        _mm512_mul_ps(_mm512_castsi512_ps(v[i]), _mm512_set1_ps(xscale[s0 + i])));
    }
}

}  // namespace

void nf4_gemv_table_rows(const NF4Matrix& W, const int8_t* tables, const float* xscale, const float* bias,
                         int64_t n0, int64_t n1, float* y) {
  const int64_t K = W.cols, row_bytes = K / 2, steps = K / 128, segments = K / 64;
  thread_local AlignedBuffer seg_scale_buffer;  // [segments][kTableRows], reused across calls
  if (seg_scale_buffer.size() < sizeof(float) * static_cast<size_t>(segments * kTableRows))
    seg_scale_buffer = AlignedBuffer(sizeof(float) * static_cast<size_t>(segments * kTableRows));
  float* seg_scale = seg_scale_buffer.as<float>();
  const __m512i ones = _mm512_set1_epi8(1);
  const __m512i low_nibble = _mm512_set1_epi8(0x0f);
  const __m512i byte_in_dword = _mm512_set1_epi32(0x30201000);  // (byte index i) << 4
  alignas(64) static const uint8_t kZeroRow[64] = {};
  alignas(64) uint8_t chunks[2][kOctetsPerStep][kVectorsPerSupergroup][64];  // two steps, transposed
  alignas(64) static const float kNoMap[256] = {};
  const ScaleCodeMap map(W.nested_code ? W.nested_code : kNoMap);

  for (int64_t r0 = n0; r0 < n1; r0 += kTableRows) {
    const int64_t live_rows = std::min(kTableRows, n1 - r0);
    segment_scales(W, &map, xscale, r0, live_rows, seg_scale);
    const uint8_t* group = W.packed + r0 * row_bytes;
    // While this supergroup is computed, its successor (the next 64 rows, contiguous) is
    // prefetched into L2 one 4 KiB slice per step. Prefetches never fault, so the last
    // supergroup's run past the end of the weights is harmless. Measured on Zen 4, 2 threads,
    // 1 GiB of 4096 x 4096 weights: ~24 GB/s (compute only) against 17-19 with T0/T2 hints or
    // prefetches 2-8 lines ahead in each row, 10-11 with none.
    const uint8_t* next_group = group + kTableRows * row_bytes;
    __m512 total[kVectorsPerSupergroup];
    for (auto& t : total) t = _mm512_setzero_ps();

    // Transposes step `step` of the 64 rows into buffer (octet o of rows 16 rv .. at [o][rv]).
    auto transpose_step = [&](int64_t step, uint8_t (*buffer)[kVectorsPerSupergroup][64]) {
#pragma GCC unroll 1
      for (int64_t rv = 0; rv < kVectorsPerSupergroup; ++rv) {
        __m512i v[16];
#pragma GCC unroll 16
        for (int64_t j = 0; j < 16; ++j) {
          const int64_t r = rv * 16 + j;
          v[j] = _mm512_loadu_si512(r < live_rows ? group + r * row_bytes + step * 64 : kZeroRow);
          _mm_prefetch(reinterpret_cast<const char*>(next_group + step * 4096 + r * 64), _MM_HINT_T1);
        }
        transpose16x16_dwords(v);
#pragma GCC unroll 16
        for (int64_t o = 0; o < kOctetsPerStep; ++o) _mm512_store_si512(buffer[o][rv], v[o]);
      }
    };
    // Software-pipelined by one step: the step computed next is transposed a whole step earlier,
    // so its chunks are reloaded long after their stores retired (a 64-byte reload right behind
    // its store measured slower).
    transpose_step(0, chunks[0]);
    for (int64_t step = 0; step < steps; ++step) {
      if (step + 1 < steps) transpose_step(step + 1, chunks[(step + 1) & 1]);
      uint8_t (*current)[kVectorsPerSupergroup][64] = chunks[step & 1];
      // Then one octet's six tables (in registers) serve the 4 x 16 rows.
#pragma GCC unroll 1
      for (int64_t half = 0; half < 2; ++half) {  // one 64-column segment each
        __m512i acc[kVectorsPerSupergroup][3];
        for (auto& a : acc) a[0] = a[1] = a[2] = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int64_t o = half * kOctetsPerSegment; o < (half + 1) * kOctetsPerSegment; ++o) {
          const int8_t* t = tables + (step * kOctetsPerStep + o) * kTableBytesPerOctet;
          __m512i tab[3][2];
          for (int d = 0; d < 3; ++d)
            for (int h = 0; h < 2; ++h) tab[d][h] = _mm512_load_si512(t + d * 128 + h * 64);
#pragma GCC unroll 4
          for (int64_t rv = 0; rv < kVectorsPerSupergroup; ++rv) {
            const __m512i c = _mm512_load_si512(current[o][rv]);
            const __m512i lo = _mm512_ternarylogic_epi32(c, low_nibble, byte_in_dword, 0xEA);  // (c & 15) | i << 4
            const __m512i hi = _mm512_ternarylogic_epi32(_mm512_srli_epi16(c, 4), low_nibble, byte_in_dword, 0xEA);
#pragma GCC unroll 3
            for (int d = 0; d < 3; ++d) {
              acc[rv][d] = _mm512_dpbusd_epi32(acc[rv][d], ones, _mm512_permutexvar_epi8(hi, tab[d][0]));
              acc[rv][d] = _mm512_dpbusd_epi32(acc[rv][d], ones, _mm512_permutexvar_epi8(lo, tab[d][1]));
            }
          }
        }
        const float* scale = seg_scale + (2 * step + half) * kTableRows;
#pragma GCC unroll 4
        for (int64_t rv = 0; rv < kVectorsPerSupergroup; ++rv) {
          // Digit sums of 64 columns: |sum q| <= 64 x 2^23, exact in int32.
          const __m512i q = _mm512_add_epi32(
              _mm512_add_epi32(_mm512_slli_epi32(acc[rv][2], 16), _mm512_slli_epi32(acc[rv][1], 8)), acc[rv][0]);
          total[rv] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), _mm512_load_ps(scale + rv * 16), total[rv]);
        }
      }
    }
    for (int64_t rv = 0; rv < kVectorsPerSupergroup; ++rv) {
      const int64_t first = rv * 16;
      if (first >= live_rows) break;
      const __mmask16 live = static_cast<__mmask16>(live_rows - first >= 16 ? 0xffff : (1u << (live_rows - first)) - 1u);
      __m512 out = total[rv];
      if (bias) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(live, bias + r0 + first));
      _mm512_mask_storeu_ps(y + r0 + first, live, out);
    }
  }
}

}  // namespace probe

using namespace ecomllm;
using namespace ecomllm::quant;
static const float kCode[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
 -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
 0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
struct Mat { AlignedBuffer packed, q; std::vector<float> nested, ncode; NF4Matrix m; };
Mat make(int64_t N, int64_t K, std::mt19937& g) {
  Mat t; t.packed = AlignedBuffer::with_huge_pages(N*K/2, false); t.q = AlignedBuffer(N*K/64);
  auto* p = t.packed.as<uint8_t>(); for (int64_t i=0;i<N*K/2;i++) p[i]=g();
  auto* q = t.q.as<uint8_t>(); for (int64_t i=0;i<N*K/64;i++) q[i]=g();
  t.nested.resize((N*K/64+255)/256); for (auto& v: t.nested) v = 0.01f + (g()%100)*1e-4f;
  t.ncode.resize(256); for (int i=0;i<256;i++) t.ncode[i] = (i-128)/128.0f;
  t.m.rows=N; t.m.cols=K; t.m.blocksize=64; t.m.packed=p; t.m.code=kCode; t.m.qabsmax=q; t.m.nested_absmax=t.nested.data(); t.m.nested_code=t.ncode.data(); t.m.offset=0.05f;
  return t;
}
int main() {
  const int64_t K = 4096; std::mt19937 g(1);
  std::vector<float> x(K); for (auto& v: x) v = (g()%2001-1000)/1000.0f;
  AlignedBuffer tables(K/8*kTableBytesPerOctet); AlignedBuffer xs(sizeof(float)*K/64);
  std::vector<float> xg(K); for (int64_t gg=0; gg<K; gg+=128) for (int e=0;e<128;e++) xg[gg+gemv_group_position(e)] = x[gg+e];
  auto run_table = [&](const NF4Matrix& W, float* y, int threads) {
    probe::nf4_build_product_tables(W.code, x.data(), K, tables.as<int8_t>(), xs.as<float>());
    int64_t sg = (W.rows+63)/64;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int t=0;t<threads;t++){ int64_t a=sg*t/threads, b=sg*(t+1)/threads; probe::nf4_gemv_table_rows(W, tables.as<int8_t>(), xs.as<float>(), nullptr, a*64, std::min(W.rows,b*64), y);} };
  auto run_grouped = [&](const NF4Matrix& W, float* y, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int t=0;t<threads;t++){ int64_t a=W.rows*t/threads, b=W.rows*(t+1)/threads; gemv_rows_grouped_avx512(W, xg.data(), nullptr, a, b, y);} };
  { auto t0=std::chrono::steady_clock::now(); for (int r=0;r<1000;r++) probe::nf4_build_product_tables(kCode, x.data(), K, tables.as<int8_t>(), xs.as<float>());
    double s=std::chrono::duration<double>(std::chrono::steady_clock::now()-t0).count(); printf("build tables K=4096: %.2f us\n", s*1e3); }
  // L2 resident: 256 x 4096 (512 KiB), 1 thread
  { Mat t = make(256, K, g); std::vector<float> y1(256), y2(256);
    for (int pass=0; pass<3; pass++) for (int which=0; which<2; which++) {
      auto t0=std::chrono::steady_clock::now(); int reps=400;
      for (int r=0;r<reps;r++) which? run_grouped(t.m, y2.data(), 1) : run_table(t.m, y1.data(), 1);
      double s=std::chrono::duration<double>(std::chrono::steady_clock::now()-t0).count();
      printf("L2 1thr %-8s %.2f GB/s  (%.1f cycles/64B at 3.61)\n", which?"grouped":"table", 256*K/2*reps/s/1e9, s/reps*3.61e9/(256*K/2/64));
    }
    double md=0, mr=0; for (int i=0;i<256;i++){ md=std::max(md,(double)std::abs(y1[i]-y2[i])); mr=std::max(mr,(double)std::abs(y2[i]));} printf("table vs grouped max diff / max %.2e\n", md/mr);
  }
  // streamed: 1 GiB of 4096x4096 matrices, 2 threads
  { int nm = 128; std::vector<Mat> ms; for (int i=0;i<nm;i++) ms.push_back(make(4096,K,g)); std::vector<float> y(4096);
    std::vector<double> r[2];
    for (int pass=0; pass<12; pass++) for (int which=0; which<2; which++) {
      auto t0=std::chrono::steady_clock::now();
      for (auto& t: ms) which? run_grouped(t.m, y.data(), 2) : run_table(t.m, y.data(), 2);
      double s=std::chrono::duration<double>(std::chrono::steady_clock::now()-t0).count();
      if (pass) r[which].push_back((double)nm*4096*K/2/s/1e9);
    }
    for (int w=0; w<2; w++){ std::sort(r[w].begin(), r[w].end()); printf("stream 2thr %-8s median %.2f  min %.2f max %.2f GB/s\n", w?"grouped":"table", r[w][r[w].size()/2], r[w][0], r[w].back()); }
  }
}
