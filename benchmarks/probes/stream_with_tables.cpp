// Stand-alone probe (not part of the build): does the product-table kernel's reloading of its x
// tables keep the hardware prefetcher from streaming the weights? Two threads stream 1 GiB (8 MiB
// matrices) with the exact table kernel's work per 64-byte line (nf4_decode_layout_avx512vbmi.cpp:
// a shift, 2 ternary-logic ops, 6 vpermb, 6 vpdpbusd), with or without reloading 6 table vectors per
// 256 bytes from a table area walked like the kernel's (384 bytes per octet, `octets` of them), and
// with or without software prefetch. Variants take turns matrix by matrix, so that the VM's
// bandwidth swings hit all alike.
//
//   g++ -O3 -march=icelake-server -fopenmp benchmarks/probes/stream_with_tables.cpp -o /tmp/swt
//   OMP_NUM_THREADS=2 /tmp/swt          # the variants with work
//   OMP_NUM_THREADS=2 /tmp/swt read     # plain reads with the same prefetch choices
//
// Figures (Zen 4 VM, 2026-12-03): benchmarks/README.md, "fifth session".
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
#include <iterator>

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

enum Hint { kNone, kT0, kT1, kNta };
alignas(64) int8_t g_tables[2][512 * 384];  // one table area per thread: 512 octets (K = 4096)

// Streams `bytes` from `begin`; WORK: the table kernel's ops per line (else one add); OCTETS: table
// octets walked (0: no table loads, the tables stay in registers); HINT/DIST: a prefetch per line
// DIST bytes ahead.
template <bool WORK, int OCTETS, Hint HINT, int DIST>
int64_t stream(const uint8_t* begin, int64_t bytes) {
  const int8_t* tables = g_tables[omp_get_thread_num() & 1];
  const __m512i ones = _mm512_set1_epi8(1), low = _mm512_set1_epi8(15), bid = _mm512_set1_epi32(0x30201000);
  __m512i tab[3][2];
  for (int d = 0; d < 3; ++d)
    for (int h = 0; h < 2; ++h) tab[d][h] = _mm512_set1_epi8(static_cast<char>(d * 2 + h + 1));
  __m512i acc[4][3];
  for (auto& a : acc)
    for (auto& x : a) x = _mm512_setzero_si512();
  int64_t octet = 0;
  for (int64_t off = 0; off < bytes; off += 256) {
    const uint8_t* chunk = begin + off;
    if (OCTETS > 0) {
      const int8_t* t = tables + octet * 384;
      for (int d = 0; d < 3; ++d)
        for (int h = 0; h < 2; ++h) tab[d][h] = _mm512_load_si512(t + d * 128 + h * 64);
      octet = (octet + 1) % (OCTETS > 0 ? OCTETS : 1);
    }
    if (HINT != kNone)
      for (int l = 0; l < 4; ++l) {
        const char* p = reinterpret_cast<const char*>(chunk) + DIST + 64 * l;
        if (HINT == kT0) _mm_prefetch(p, _MM_HINT_T0);
        if (HINT == kT1) _mm_prefetch(p, _MM_HINT_T1);
        if (HINT == kNta) _mm_prefetch(p, _MM_HINT_NTA);
      }
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      const __m512i c = _mm512_load_si512(chunk + 64 * r);
      if (!WORK) {
        acc[r][0] = _mm512_add_epi32(acc[r][0], c);
        continue;
      }
      const __m512i lo = _mm512_ternarylogic_epi32(c, low, bid, 0xEA);
      const __m512i hi = _mm512_ternarylogic_epi32(_mm512_srli_epi16(c, 4), low, bid, 0xEA);
#pragma GCC unroll 3
      for (int d = 0; d < 3; ++d) {
        acc[r][d] = _mm512_dpbusd_epi32(acc[r][d], ones, _mm512_permutexvar_epi8(hi, tab[d][0]));
        acc[r][d] = _mm512_dpbusd_epi32(acc[r][d], ones, _mm512_permutexvar_epi8(lo, tab[d][1]));
      }
    }
  }
  __m512i s = _mm512_setzero_si512();
  for (auto& a : acc)
    for (auto& x : a) s = _mm512_add_epi32(s, x);
  return _mm512_reduce_add_epi32(s);
}

struct Variant {
  const char* name;
  int64_t (*fn)(const uint8_t*, int64_t);
};

}  // namespace

int main(int argc, char** argv) {
  const bool work = !(argc > 1 && std::strcmp(argv[1], "read") == 0);
  const int64_t bytes = int64_t{1} << 30, matrix = 8 << 20, matrices = bytes / matrix;
  auto* data = static_cast<uint8_t*>(std::aligned_alloc(1 << 21, bytes));
  madvise(data, bytes, MADV_HUGEPAGE);
  std::memset(data, 1, bytes);
  const Variant with_work[] = {
      {"tables in registers, no prefetch", stream<true, 0, kNone, 0>},
      {"tables in registers, T1 16 KiB", stream<true, 0, kT1, 16384>},
      {"512 octets (the kernel), no prefetch", stream<true, 512, kNone, 0>},
      {"512 octets, T1 16 KiB (the kernel)", stream<true, 512, kT1, 16384>},
      {"512 octets, T0 16 KiB", stream<true, 512, kT0, 16384>},
      {"512 octets, NTA 16 KiB", stream<true, 512, kNta, 16384>},
      {"16 octets (6 KiB), no prefetch", stream<true, 16, kNone, 0>},
      {"8 octets (3 KiB), no prefetch", stream<true, 8, kNone, 0>},
      {"8 octets, T1 16 KiB", stream<true, 8, kT1, 16384>},
      {"1 octet, no prefetch", stream<true, 1, kNone, 0>},
  };
  const Variant plain_read[] = {
      {"no prefetch", stream<false, 0, kNone, 0>},  {"T1 16 KiB", stream<false, 0, kT1, 16384>},
      {"T1 2 KiB", stream<false, 0, kT1, 2048>},   {"T0 16 KiB", stream<false, 0, kT0, 16384>},
      {"NTA 16 KiB", stream<false, 0, kNta, 16384>},
  };
  const Variant* v = work ? with_work : plain_read;
  const int nv = work ? static_cast<int>(std::size(with_work)) : static_cast<int>(std::size(plain_read));
  double seconds[16] = {}, moved[16] = {};
  int64_t sink = 0;
  for (int pass = 0; pass < 4 * nv / 2; ++pass)
    for (int64_t m = 0; m < matrices; ++m) {
      const int k = static_cast<int>((m + pass) % nv);
      const double t0 = now();
#pragma omp parallel reduction(+ : sink)
      {
        const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        sink += v[k].fn(data + m * matrix + matrix / nt * t, matrix / nt);
      }
      seconds[k] += now() - t0;
      moved[k] += static_cast<double>(matrix);
    }
  for (int k = 0; k < nv; ++k) std::printf("%-40s %6.2f GB/s\n", v[k].name, moved[k] / seconds[k] / 1e9);
  return sink == 42;
}
