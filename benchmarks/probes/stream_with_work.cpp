// Stand-alone probe (not part of the build): how much busy work per 64-byte line slows a
// streamed read of 1 GiB, with two threads, as the M = 1 NF4 kernels stream their weights.
//
//   g++ -O3 -march=sapphirerapids -fopenmp -DWORK=2 -DSTREAMS=2 benchmarks/probes/stream_with_work.cpp -o /tmp/sww
//   /tmp/sww
//
// WORK: 0 none (a plain read); 1 scalar adds that do not use the data, SCALAR_ADDS per line;
//       2 the product-table kernel's shape (nf4_lut_gemv.cpp): 3 index ops, LOOKUPS vpermb and
//       LOOKUPS vpdpbusd per line into independent accumulators, tables in registers.
// STREAMS: row ranges per thread walked in lockstep (a power of two). BURST: 0 prefetches 4 lines
//       per 256 bytes; else a power of two >= 256: all lines of each BURST bytes at once. Prefetches
//       go to L2, 16 KiB ahead.
// Prints GB/s for five passes. Figures: benchmarks/README.md, "Why the work per byte matters".
#pragma GCC diagnostic ignored "-Wuninitialized"  // both from inside GCC's intrinsic headers
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>
#include <sys/mman.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#ifndef WORK
#define WORK 2
#endif
#ifndef SCALAR_ADDS
#define SCALAR_ADDS 16
#endif
#ifndef LOOKUPS
#define LOOKUPS 6
#endif
#ifndef STREAMS
#define STREAMS 1
#endif
#ifndef BURST
#define BURST 0
#endif

namespace {
constexpr int64_t kFar = 16384;
constexpr int64_t kStep = BURST ? BURST : 256;  // bytes walked per stream between switches
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
}  // namespace

int main() {
  const int64_t bytes = int64_t{1} << 30, matrix = 8 << 20, matrices = bytes / matrix;
  auto* data = static_cast<uint8_t*>(std::aligned_alloc(1 << 21, bytes));
  madvise(data, bytes, MADV_HUGEPAGE);
  std::memset(data, 1, bytes);
  alignas(64) uint8_t table_bytes[6][64];
  for (int i = 0; i < 384; ++i) table_bytes[i / 64][i % 64] = static_cast<uint8_t>(i * 7);
  for (int pass = 0; pass < 5; ++pass) {
    const double t0 = now();
    int64_t sink = 0;
    for (int64_t m = 0; m < matrices; ++m) {
#pragma omp parallel reduction(+ : sink)
      {
        const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        const uint8_t* begin = data + m * matrix + matrix / nt * t;
        const int64_t part = matrix / nt / STREAMS;
        __m512i tab[6];
        for (int i = 0; i < 6; ++i) tab[i] = _mm512_load_si512(table_bytes[i]);
        const __m512i ones = _mm512_set1_epi8(1), low4 = _mm512_set1_epi8(15), kk = _mm512_set1_epi32(0x30201000);
        __m512i acc[4][6], seen = _mm512_setzero_si512();
        for (auto& a : acc)
          for (auto& d : a) d = _mm512_setzero_si512();
        int64_t s1 = 0, s2 = 0, s3 = 0, s4 = 0;
        for (int64_t off = 0; off < part; off += kStep)
          for (int s = 0; s < STREAMS; ++s) {
            const uint8_t* chunk = begin + s * part + off;
            if (BURST)
              for (int64_t j = 0; j < kStep; j += 64) _mm_prefetch(reinterpret_cast<const char*>(chunk) + kFar + j, _MM_HINT_T2);
            for (const uint8_t* c = chunk; c < chunk + kStep; c += 256) {
              if (!BURST)
                for (int j = 0; j < 4; ++j) _mm_prefetch(reinterpret_cast<const char*>(c) + kFar + 64 * j, _MM_HINT_T2);
#pragma GCC unroll 4
              for (int r = 0; r < 4; ++r) {
                const __m512i v = _mm512_load_si512(c + 64 * r);
                seen = _mm512_xor_si512(seen, v);
                if (WORK == 1)
                  for (int q = 0; q < SCALAR_ADDS / 4; ++q) {
                    s1 += q, s2 ^= s1, s3 += s2, s4 ^= s3;
                    asm volatile("" : "+r"(s1), "+r"(s2), "+r"(s3), "+r"(s4));
                  }
                if (WORK == 2) {
                  const __m512i idx[2] = {_mm512_ternarylogic_epi32(v, low4, kk, 0xEA),
                                          _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 4), low4, kk, 0xEA)};
#pragma GCC unroll 6
                  for (int p = 0; p < LOOKUPS; ++p)
                    acc[r][p] = _mm512_dpbusd_epi32(acc[r][p], ones, _mm512_permutexvar_epi8(idx[p & 1], tab[p]));
                }
              }
            }
          }
        for (auto& a : acc)
          for (auto& d : a) seen = _mm512_add_epi32(seen, d);
        sink += _mm512_reduce_add_epi32(seen) + s1 + s2 + s3 + s4;
      }
    }
    std::printf("%.2f%s", double(bytes) / (now() - t0) / 1e9, sink == 42 ? "*" : " ");
  }
  std::printf("GB/s\n");
}
