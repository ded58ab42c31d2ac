// How many 512-bit operations per cycle a core runs, for the mixes the exact M = 1 table kernel
// (csrc/quant/nf4_decode_layout_avx512vbmi.cpp) is made of: the arithmetic behind its ceiling.
// Register-only loops, 8 independent chains per mix, no memory traffic; the median of 9 runs in
// TSC ticks per set (one set = the listed instructions once), and in units of one 512-bit FMA.
//
//   g++ -O2 -march=native -o /tmp/op_mix benchmarks/probes/op_mix_throughput.cpp && /tmp/op_mix
//
// Needs AVX-512 VBMI + VNNI. Each mix is inline asm over fixed registers (chain k: zmm k and zmm 1k,
// i.e. 10 + k; the kernel's chunk: zmm0-23; constants zmm25-31), so the compiler can neither drop
// nor reorder the work; all vector registers are declared clobbered. Results are in
// benchmarks/README.md ("sixth session"; the two 7-bit digit mixes and the AVX2 octet: "eighth
// session").
#include <x86intrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>

#define CLOBBERS                                                                                                 \
  "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",      \
      "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", \
      "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31"
// SET(k) expands to one set of a mix for chain k (k < 8): its value in zmm k, its sum in zmm 1k.
#define X8(SET) SET(0) SET(1) SET(2) SET(3) SET(4) SET(5) SET(6) SET(7)

constexpr long kIterations = 100000;
// This VM's TSC (dmesg: "tsc: Detected 2596.128 MHz"); set yours to read the GB/s line.
constexpr double kTscGhz = 2.596;

template <class Loop>
double ticks_per_set(Loop loop) {
  double runs[9];
  for (double& r : runs) {
    const uint64_t t0 = __rdtsc();
    loop();
    r = static_cast<double>(__rdtsc() - t0) / kIterations / 8;
  }
  std::sort(runs, runs + 9);
  return runs[4];
}

#define MIX(name, SET)                                                                              \
  {                                                                                                 \
    const double t = ticks_per_set([] {                                                             \
      for (long i = 0; i < kIterations; ++i) asm volatile(X8(SET)::: "memory", CLOBBERS);          \
    });                                                                                             \
    if (unit == 0) unit = t;                                                                        \
    std::printf("%-58s %5.2f ticks  %5.2f FMA\n", name, t, t / unit);                               \
  }

// One chain's set for each mix (k: 0..7). The lookups chain through A (index = previous result),
// so they cannot be hoisted; the sums accumulate into S.
#define FMA(k) "vfmadd231ps %%zmm30, %%zmm31, %%zmm" #k "\n\t"
#define PERMB(k) "vpermb %%zmm30, %%zmm" #k ", %%zmm" #k "\n\t"
#define DPBUSD(k) "vpdpbusd %%zmm30, %%zmm31, %%zmm" #k "\n\t"
#define ADDD(k) "vpaddd %%zmm30, %%zmm" #k ", %%zmm" #k "\n\t"
#define PERMB_DPBUSD(k) PERMB(k) "vpdpbusd %%zmm31, %%zmm" #k ", %%zmm1" #k "\n\t"
#define PERMB_ADDB(k) PERMB(k) "vpaddb %%zmm" #k ", %%zmm1" #k ", %%zmm1" #k "\n\t"
#define PERMB_ADDD(k) PERMB(k) "vpaddd %%zmm" #k ", %%zmm1" #k ", %%zmm1" #k "\n\t"
#define PERMB_TERNLOG(k) PERMB(k) "vpternlogd $0xEA, %%zmm" #k ", %%zmm31, %%zmm1" #k "\n\t"
// The kernel's whole 64-byte chunk, 4 chunks in flight as in its octet loop (registers: lo, hi, a
// scratch and 3 digit accumulators per chunk; tables in zmm28-30, ones in zmm31): the code load,
// the index preparation (the high nibbles shifted down, each index's byte position or-ed in), then
// per digit two lookups (the high nibbles' table, the low nibbles') and their digit sums.
#define CHUNK_INDEX(LO, HI)                                              \
  "vmovdqa64 (%[codes]), %%zmm" #LO "\n\t"                              \
  "vpsrlw $4, %%zmm" #LO ", %%zmm" #HI "\n\t"                           \
  "vpternlogd $0xEA, %%zmm25, %%zmm26, %%zmm" #HI "\n\t"                \
  "vpternlogd $0xEA, %%zmm25, %%zmm26, %%zmm" #LO "\n\t"
// A digit as the kernel sums it: one vpdpbusd per lookup.
#define DIGIT_SUMS(TH, TL, LO, HI, TMP, A)                               \
  "vpermb %%zmm" #TH ", %%zmm" #HI ", %%zmm" #TMP "\n\t"                \
  "vpdpbusd %%zmm" #TMP ", %%zmm31, %%zmm" #A "\n\t"                    \
  "vpermb %%zmm" #TL ", %%zmm" #LO ", %%zmm" #TMP "\n\t"                \
  "vpdpbusd %%zmm" #TMP ", %%zmm31, %%zmm" #A "\n\t"
// A 7-bit digit: the two lookups added bytewise first (two 7-bit fields fit a byte), then one sum.
#define DIGIT_PAIRED(TH, TL, LO, HI, TMP, A)                             \
  "vpermb %%zmm" #TH ", %%zmm" #HI ", %%zmm" #TMP "\n\t"                \
  "vpermb %%zmm" #TL ", %%zmm" #LO ", %%zmm24\n\t"                     \
  "vpaddb %%zmm24, %%zmm" #TMP ", %%zmm" #TMP "\n\t"                    \
  "vpdpbusd %%zmm" #TMP ", %%zmm31, %%zmm" #A "\n\t"
// The kernel's chunk: 6 vpermb, 6 vpdpbusd.
#define CHUNK(LO, HI, TMP, A0, A1, A2)                                                       \
  CHUNK_INDEX(LO, HI) DIGIT_SUMS(28, 29, LO, HI, TMP, A0) DIGIT_SUMS(30, 28, LO, HI, TMP, A1) \
  DIGIT_SUMS(29, 30, LO, HI, TMP, A2)
// All three digits 7-bit: 6 vpermb, 3 vpaddb, 3 vpdpbusd.
#define CHUNK7(LO, HI, TMP, A0, A1, A2)                                                          \
  CHUNK_INDEX(LO, HI) DIGIT_PAIRED(28, 29, LO, HI, TMP, A0) DIGIT_PAIRED(30, 28, LO, HI, TMP, A1) \
  DIGIT_PAIRED(29, 30, LO, HI, TMP, A2)
// 8-bit low digits as the kernel, only the top digit 7-bit: 6 vpermb, 1 vpaddb, 5 vpdpbusd.
#define CHUNK_TOP7(LO, HI, TMP, A0, A1, A2)                                                    \
  CHUNK_INDEX(LO, HI) DIGIT_SUMS(28, 29, LO, HI, TMP, A0) DIGIT_SUMS(30, 28, LO, HI, TMP, A1) \
  DIGIT_PAIRED(29, 30, LO, HI, TMP, A2)
// Four chunks of one of these shapes in flight (zmm0-23).
#define FOUR(CH) CH(0, 1, 2, 3, 4, 5) CH(6, 7, 8, 9, 10, 11) CH(12, 13, 14, 15, 16, 17) CH(18, 19, 20, 21, 22, 23)
#define FOUR_CHUNKS FOUR(CHUNK)
#define FOUR_CHUNKS7 FOUR(CHUNK7)
#define FOUR_CHUNKS_TOP7 FOUR(CHUNK_TOP7)

alignas(64) static uint8_t chunk_codes[64];
alignas(64) static uint8_t avx2_tables[512];

// The AVX2 kernel's octet (csrc/quant/nf4_decode_layout_avx2.cpp: 128 weights, 16 ymm registers):
// 2 code loads, 6 index ops, then per 6-bit digit 4 table loads, 4 vpshufb, 3 vpaddb and the
// carry into 16-bit lanes (acc_w += s, s >>= 8, acc_h += s). Index vectors in ymm0-3, the
// accumulators of the 4 digits in ymm8-14 and 5 (as registers, unlike GCC's build: see
// benchmarks/README.md, "eighth session"), the nibble mask in ymm15.
#define AVX2_DIGIT(OFF, S, T, AW, AH)                                                              \
  "vmovdqa " #OFF "+0(%[tables]), %%ymm" #S "\n\t vpshufb %%ymm0, %%ymm" #S ", %%ymm" #S "\n\t"     \
  "vmovdqa " #OFF "+32(%[tables]), %%ymm" #T "\n\t vpshufb %%ymm1, %%ymm" #T ", %%ymm" #T "\n\t"    \
  "vpaddb %%ymm" #T ", %%ymm" #S ", %%ymm" #S "\n\t"                                               \
  "vmovdqa " #OFF "+64(%[tables]), %%ymm" #T "\n\t vpshufb %%ymm2, %%ymm" #T ", %%ymm" #T "\n\t"    \
  "vpaddb %%ymm" #T ", %%ymm" #S ", %%ymm" #S "\n\t"                                               \
  "vmovdqa " #OFF "+96(%[tables]), %%ymm" #T "\n\t vpshufb %%ymm3, %%ymm" #T ", %%ymm" #T "\n\t"    \
  "vpaddb %%ymm" #T ", %%ymm" #S ", %%ymm" #S "\n\t"                                               \
  "vpaddw %%ymm" #S ", %%ymm" #AW ", %%ymm" #AW "\n\t vpsrlw $8, %%ymm" #S ", %%ymm" #S "\n\t"       \
  "vpaddw %%ymm" #S ", %%ymm" #AH ", %%ymm" #AH "\n\t"
#define AVX2_OCTET                                                                                  \
  "vmovdqa (%[codes]), %%ymm1\n\t vmovdqa 32(%[codes]), %%ymm3\n\t"                                \
  "vpsrlw $4, %%ymm1, %%ymm0\n\t vpsrlw $4, %%ymm3, %%ymm2\n\t"                                    \
  "vpand %%ymm15, %%ymm0, %%ymm0\n\t vpand %%ymm15, %%ymm1, %%ymm1\n\t"                            \
  "vpand %%ymm15, %%ymm2, %%ymm2\n\t vpand %%ymm15, %%ymm3, %%ymm3\n\t"                            \
  AVX2_DIGIT(0, 4, 6, 8, 9) AVX2_DIGIT(128, 7, 6, 10, 11) AVX2_DIGIT(256, 4, 6, 12, 13)            \
  AVX2_DIGIT(384, 7, 6, 14, 5)


// One of the chunk mixes above, 4 chunks per set.
#define CHUNK_MIX(name, FOUR)                                                                         \
  {                                                                                                   \
    const double t = ticks_per_set([] {                                                               \
      for (long i = 0; i < kIterations; ++i) asm volatile(FOUR::[codes] "r"(chunk_codes) : "memory", CLOBBERS); \
    }) * 8 / 4; /* ticks_per_set divides by 8 sets; this loop runs 4 chunks */                       \
    std::printf("%-58s %5.2f ticks  %5.2f FMA  -> %.1f GB/s for 2 cores at %.3f GHz TSC\n", name, t, t / unit, \
                2 * 64 / t * kTscGhz, kTscGhz);                                                       \
  }

int main() {
  double unit = 0;
  MIX("vfmadd231ps (the unit)", FMA)
  MIX("vpermb (64-entry byte lookup)", PERMB)
  MIX("vpdpbusd (4-byte dot product into int32)", DPBUSD)
  MIX("vpaddd", ADDD)
  MIX("vpermb + vpdpbusd (a lookup and its digit sum)", PERMB_DPBUSD)
  MIX("vpermb + vpaddb (a lookup and the cheapest byte sum)", PERMB_ADDB)
  MIX("vpermb + vpaddd", PERMB_ADDD)
  MIX("vpermb + vpternlogd", PERMB_TERNLOG)
  CHUNK_MIX("the kernel's chunk: load, 3 index ops, 6 vpermb, 6 vpdpbusd", FOUR_CHUNKS)
  CHUNK_MIX("7-bit digits: 6 vpermb, 3 vpaddb, 3 vpdpbusd", FOUR_CHUNKS7)
  CHUNK_MIX("7-bit top digit: 6 vpermb, 1 vpaddb, 5 vpdpbusd", FOUR_CHUNKS_TOP7)
  {
    const double t = ticks_per_set([] {
      for (long i = 0; i < kIterations; ++i)
        asm volatile(AVX2_OCTET AVX2_OCTET AVX2_OCTET AVX2_OCTET::[codes] "r"(chunk_codes), [tables] "r"(avx2_tables)
                     : "memory", CLOBBERS);
    }) * 8 / 4;  // per octet (128 weights, as a VBMI chunk)
    std::printf("%-58s %5.2f ticks  %5.2f FMA  -> %.1f GB/s for 2 cores at %.3f GHz TSC\n",
                "AVX2 octet: 18 loads, 16 vpshufb, 12 vpaddb, 18 other", t, t / unit, 2 * 64 / t * kTscGhz, kTscGhz);
  }
  return 0;
}
