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
// scratch and 3 digit accumulators per chunk): the code load, the index preparation (the high
// nibbles shifted down, each index's byte position or-ed in), 6 lookups, 6 digit sums.
#define CHUNK(LO, HI, TMP, A0, A1, A2)                                   \
  "vmovdqa64 (%[codes]), %%zmm" #LO "\n\t"                              \
  "vpsrlw $4, %%zmm" #LO ", %%zmm" #HI "\n\t"                           \
  "vpternlogd $0xEA, %%zmm25, %%zmm26, %%zmm" #HI "\n\t"                \
  "vpternlogd $0xEA, %%zmm25, %%zmm26, %%zmm" #LO "\n\t"                \
  "vpermb %%zmm28, %%zmm" #HI ", %%zmm" #TMP "\n\t"                     \
  "vpdpbusd %%zmm" #TMP ", %%zmm31, %%zmm" #A0 "\n\t"                   \
  "vpermb %%zmm29, %%zmm" #LO ", %%zmm" #TMP "\n\t"                     \
  "vpdpbusd %%zmm" #TMP ", %%zmm31, %%zmm" #A0 "\n\t"                   \
  "vpermb %%zmm30, %%zmm" #HI ", %%zmm" #TMP "\n\t"                     \
  "vpdpbusd %%zmm" #TMP ", %%zmm31, %%zmm" #A1 "\n\t"                   \
  "vpermb %%zmm28, %%zmm" #LO ", %%zmm" #TMP "\n\t"                     \
  "vpdpbusd %%zmm" #TMP ", %%zmm31, %%zmm" #A1 "\n\t"                   \
  "vpermb %%zmm29, %%zmm" #HI ", %%zmm" #TMP "\n\t"                     \
  "vpdpbusd %%zmm" #TMP ", %%zmm31, %%zmm" #A2 "\n\t"                   \
  "vpermb %%zmm30, %%zmm" #LO ", %%zmm" #TMP "\n\t"                     \
  "vpdpbusd %%zmm" #TMP ", %%zmm31, %%zmm" #A2 "\n\t"
#define FOUR_CHUNKS                                                      \
  CHUNK(0, 1, 2, 3, 4, 5) CHUNK(6, 7, 8, 9, 10, 11) CHUNK(12, 13, 14, 15, 16, 17) CHUNK(18, 19, 20, 21, 22, 23)
// The same chunk with 7-bit digits: the two nibbles' lookups of a digit added bytewise (a sum of
// two 7-bit fields fits a byte), then one digit sum per digit: 6 vpermb, 3 vpaddb, 3 vpdpbusd.
#define CHUNK7(LO, HI, TMP, A0, A1, A2)                                  \
  "vmovdqa64 (%[codes]), %%zmm" #LO "\n\t"                              \
  "vpsrlw $4, %%zmm" #LO ", %%zmm" #HI "\n\t"                           \
  "vpternlogd $0xEA, %%zmm25, %%zmm26, %%zmm" #HI "\n\t"                \
  "vpternlogd $0xEA, %%zmm25, %%zmm26, %%zmm" #LO "\n\t"                \
  "vpermb %%zmm28, %%zmm" #HI ", %%zmm" #TMP "\n\t"                     \
  "vpermb %%zmm29, %%zmm" #LO ", %%zmm24\n\t"                          \
  "vpaddb %%zmm24, %%zmm" #TMP ", %%zmm" #TMP "\n\t"                    \
  "vpdpbusd %%zmm31, %%zmm" #TMP ", %%zmm" #A0 "\n\t"                   \
  "vpermb %%zmm30, %%zmm" #HI ", %%zmm" #TMP "\n\t"                     \
  "vpermb %%zmm28, %%zmm" #LO ", %%zmm24\n\t"                          \
  "vpaddb %%zmm24, %%zmm" #TMP ", %%zmm" #TMP "\n\t"                    \
  "vpdpbusd %%zmm31, %%zmm" #TMP ", %%zmm" #A1 "\n\t"                   \
  "vpermb %%zmm29, %%zmm" #HI ", %%zmm" #TMP "\n\t"                     \
  "vpermb %%zmm30, %%zmm" #LO ", %%zmm24\n\t"                          \
  "vpaddb %%zmm24, %%zmm" #TMP ", %%zmm" #TMP "\n\t"                    \
  "vpdpbusd %%zmm31, %%zmm" #TMP ", %%zmm" #A2 "\n\t"
// 8-bit low digits as the kernel, only the top digit 7-bit: its two nibbles' lookups added
// bytewise: 6 vpermb, 1 vpaddb, 5 vpdpbusd.
#define CHUNK_TOP7(LO, HI, TMP, A0, A1, A2)                              \
  "vmovdqa64 (%[codes]), %%zmm" #LO "\n\t"                              \
  "vpsrlw $4, %%zmm" #LO ", %%zmm" #HI "\n\t"                           \
  "vpternlogd $0xEA, %%zmm25, %%zmm26, %%zmm" #HI "\n\t"                \
  "vpternlogd $0xEA, %%zmm25, %%zmm26, %%zmm" #LO "\n\t"                \
  "vpermb %%zmm28, %%zmm" #HI ", %%zmm" #TMP "\n\t"                     \
  "vpdpbusd %%zmm" #TMP ", %%zmm31, %%zmm" #A0 "\n\t"                   \
  "vpermb %%zmm29, %%zmm" #LO ", %%zmm" #TMP "\n\t"                     \
  "vpdpbusd %%zmm" #TMP ", %%zmm31, %%zmm" #A0 "\n\t"                   \
  "vpermb %%zmm30, %%zmm" #HI ", %%zmm" #TMP "\n\t"                     \
  "vpdpbusd %%zmm" #TMP ", %%zmm31, %%zmm" #A1 "\n\t"                   \
  "vpermb %%zmm28, %%zmm" #LO ", %%zmm" #TMP "\n\t"                     \
  "vpdpbusd %%zmm" #TMP ", %%zmm31, %%zmm" #A1 "\n\t"                   \
  "vpermb %%zmm29, %%zmm" #HI ", %%zmm" #TMP "\n\t"                     \
  "vpermb %%zmm30, %%zmm" #LO ", %%zmm24\n\t"                          \
  "vpaddb %%zmm24, %%zmm" #TMP ", %%zmm" #TMP "\n\t"                    \
  "vpdpbusd %%zmm31, %%zmm" #TMP ", %%zmm" #A2 "\n\t"
#define FOUR_CHUNKS_TOP7                                                 \
  CHUNK_TOP7(0, 1, 2, 3, 4, 5) CHUNK_TOP7(6, 7, 8, 9, 10, 11) CHUNK_TOP7(12, 13, 14, 15, 16, 17) CHUNK_TOP7(18, 19, 20, 21, 22, 23)
#define FOUR_CHUNKS7                                                     \
  CHUNK7(0, 1, 2, 3, 4, 5) CHUNK7(6, 7, 8, 9, 10, 11) CHUNK7(12, 13, 14, 15, 16, 17) CHUNK7(18, 19, 20, 21, 22, 23)

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
