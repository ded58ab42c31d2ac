// Stand-alone probe (not part of the build): an exact NF4 M = 1 kernel that looks products up
// instead of decoding weights, measured streaming 1 GiB of weights with two threads.
//
//   g++ -O3 -march=sapphirerapids -fopenmp benchmarks/probes/nf4_lut_gemv.cpp -o /tmp/nf4_lut_gemv
//   /tmp/nf4_lut_gemv            # prints the error against a double-precision reference and GB/s
//
// Layout (ours, not bitsandbytes'): rows in groups of 64 ("supergroups"), each walked as 8-column
// octets; one 64-byte chunk holds 16 rows x 8 columns: byte j is row j / 4, kk = j % 4, low
// nibble the code of column 8 o + kk, high nibble that of column 8 o + 4 + kk.
// Per call, x becomes tables: for each column k and code c, q = round(code[c] * x[k] * 2^23 /
// max|x| over k's 64-column block), split into three signed bytes; one 64-byte vpermb table per
// (octet, digit, half) holds the digits of the 4 columns x 16 codes. A chunk then costs one load,
// a shift, two ternary-logic ops (index = code | kk << 4), 6 vpermb and 6 vpdpbusd (digit sums of
// 4 columns per row into int32): 15 vector uops per 128 weights against ~25 for the fp32 kernel.
// Every 64 columns the three digit sums are combined exactly in int32 and scaled in fp32.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

constexpr float kCode[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                             -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                             0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                             0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
constexpr int64_t kRows = 64;           // rows per supergroup (4 chunks of 16 per octet)
constexpr float kQMax = 8323072.0f;     // 2^23 - 2^16: the top digit stays within int8
constexpr int64_t kFarPrefetch = 16384;  // bytes ahead, to L2

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// codes [N][K], one code per byte -> out (layout above). N % 64 == 0, K % 64 == 0.
void repack(const uint8_t* codes, int64_t N, int64_t K, uint8_t* out) {
  for (int64_t sg = 0; sg < N / kRows; ++sg)
    for (int64_t o = 0; o < K / 8; ++o)
      for (int64_t j = 0; j < 256; ++j) {
        const int64_t row = sg * kRows + j / 4, kk = j % 4;
        out[(sg * (K / 8) + o) * 256 + j] = codes[row * K + 8 * o + kk] | (codes[row * K + 8 * o + 4 + kk] << 4);
      }
}

// tables [K / 8][digit 3][half 2][64]; block_scale[K / 64] = max|x| / kQMax.
void build_tables(const float* x, int64_t K, int8_t* tables, float* block_scale) {
  const __m512 code = _mm512_loadu_ps(kCode);
  for (int64_t b = 0; b < K / 64; ++b) {
    float m = 0.0f;
    for (int i = 0; i < 64; ++i) m = std::max(m, std::fabs(x[b * 64 + i]));
    block_scale[b] = m / kQMax;
    for (int i = 0; i < 64; ++i) {
      const int64_t k = b * 64 + i;
      const float r = m > 0.0f ? x[k] / m * kQMax : 0.0f;
      const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(code, _mm512_set1_ps(r)));
      const __m512i q1 = _mm512_srai_epi32(_mm512_sub_epi32(q, _mm512_srai_epi32(_mm512_slli_epi32(q, 24), 24)), 8);
      const __m512i q2 = _mm512_srai_epi32(_mm512_sub_epi32(q1, _mm512_srai_epi32(_mm512_slli_epi32(q1, 24), 24)), 8);
      int8_t* t = tables + (k / 8) * 384 + ((k % 8) / 4) * 64 + (k % 4) * 16;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(t), _mm512_cvtepi32_epi8(q));  // low bytes: the digits
      _mm_storeu_si128(reinterpret_cast<__m128i*>(t + 128), _mm512_cvtepi32_epi8(q1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(t + 256), _mm512_cvtepi32_epi8(q2));
    }
  }
}

// y for supergroups [sg0, sg1), `streams` of them walked in lockstep (one from each part of the
// range). absmax_t [sg][K / 64][64]. table_octets > 0 reuses only that many octets' tables (so they
// stay in L1: a speed probe, the result is then wrong).
template <int streams>
void gemv(const uint8_t* packed, const float* absmax_t, const int8_t* tables, const float* block_scale, int64_t K,
          int64_t sg0, int64_t sg1, int64_t table_octets, float* y) {
  const __m512i ones = _mm512_set1_epi8(1), low4 = _mm512_set1_epi8(0x0F);
  const __m512i kk_bits = _mm512_set1_epi32(0x30201000);  // kk << 4 in byte kk of every dword
  const int64_t blocks = K / 64, per_stream = (sg1 - sg0) / streams;
  for (int64_t i = 0; i < per_stream; ++i) {
    __m512 acc_y[streams][4] = {};
    for (int64_t b = 0; b < blocks; ++b)
      for (int s = 0; s < streams; ++s) {
        const int64_t sg = sg0 + i + s * per_stream;
        const uint8_t* rows = packed + sg * (K / 8) * 256;
        __m512i digit_sum[4][3];
        for (auto& r : digit_sum)
          for (auto& d : r) d = _mm512_setzero_si512();
        for (int64_t o = b * 8; o < b * 8 + 8; ++o) {
          const int8_t* t = tables + (table_octets ? o % table_octets : o) * 384;
          __m512i tab[3][2];
          for (int d = 0; d < 3; ++d)
            for (int h = 0; h < 2; ++h) tab[d][h] = _mm512_loadu_si512(t + d * 128 + h * 64);
          const uint8_t* c = rows + o * 256;
          for (int l = 0; l < 4; ++l) _mm_prefetch(reinterpret_cast<const char*>(c) + kFarPrefetch + 64 * l, _MM_HINT_T2);
#pragma GCC unroll 4
          for (int r = 0; r < 4; ++r) {
            const __m512i v = _mm512_load_si512(c + r * 64);
            const __m512i idx[2] = {_mm512_ternarylogic_epi32(v, low4, kk_bits, 0xEA),  // (v & 15) | kk << 4
                                    _mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 4), low4, kk_bits, 0xEA)};
            for (int h = 0; h < 2; ++h)
              for (int d = 0; d < 3; ++d)
                digit_sum[r][d] = _mm512_dpbusd_epi32(digit_sum[r][d], ones, _mm512_permutexvar_epi8(idx[h], tab[d][h]));
          }
        }
        const __m512 xs = _mm512_set1_ps(block_scale[b]);
        const float* am = absmax_t + (sg * blocks + b) * 64;
        for (int r = 0; r < 4; ++r) {
          const __m512i q = _mm512_add_epi32(digit_sum[r][0], _mm512_add_epi32(_mm512_slli_epi32(digit_sum[r][1], 8),
                                                                                _mm512_slli_epi32(digit_sum[r][2], 16)));
          acc_y[s][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), _mm512_mul_ps(_mm512_loadu_ps(am + r * 16), xs), acc_y[s][r]);
        }
      }
    for (int s = 0; s < streams; ++s)
      for (int r = 0; r < 4; ++r) _mm512_storeu_ps(y + (sg0 + i + s * per_stream) * kRows + r * 16, acc_y[s][r]);
  }
}

}  // namespace

int main() {
  const int64_t N = 4096, K = 4096, bytes = N * K / 2, copies = (int64_t{1} << 30) / bytes;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<uint8_t> codes(N * K);
  for (auto& c : codes) c = rng() % 16;
  std::vector<float> absmax(N * K / 64), x(K), absmax_t(N * K / 64), block_scale(K / 64), y(N);
  for (auto& a : absmax) a = 0.5f + (rng() % 1000) / 1000.0f;
  for (auto& v : x) v = normal(rng);
  const int64_t blocks = K / 64;
  for (int64_t sg = 0; sg < N / kRows; ++sg)
    for (int64_t b = 0; b < blocks; ++b)
      for (int64_t r = 0; r < kRows; ++r) absmax_t[(sg * blocks + b) * kRows + r] = absmax[(sg * kRows + r) * blocks + b];
  auto* packed = static_cast<uint8_t*>(std::aligned_alloc(64, bytes * copies));
  repack(codes.data(), N, K, packed);
  for (int64_t i = 1; i < copies; ++i) std::memcpy(packed + i * bytes, packed, bytes);
  std::vector<int8_t> tables(K / 8 * 384);
  double t0 = now();
  for (int i = 0; i < 100; ++i) build_tables(x.data(), K, tables.data(), block_scale.data());
  std::printf("tables: %.1f us per call (K = %ld)\n", (now() - t0) / 100 * 1e6, static_cast<long>(K));
  gemv<1>(packed, absmax_t.data(), tables.data(), block_scale.data(), K, 0, N / kRows, 0, y.data());
  double max_err = 0.0, max_ref = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    double ref = 0.0;
    for (int64_t k = 0; k < K; ++k) ref += double(kCode[codes[n * K + k]]) * absmax[n * blocks + k / 64] * x[k];
    max_err = std::max(max_err, std::fabs(ref - y[n]));
    max_ref = std::max(max_ref, std::fabs(ref));
  }
  std::printf("max|y - ref| / max|ref| = %.3g\n", max_err / max_ref);
  for (int streams : {1, 2})
    for (int64_t table_octets : {int64_t{0}, int64_t{8}}) {
      double best = 0.0;
      for (int rep = 0; rep < 3; ++rep) {
        t0 = now();
        for (int64_t m = 0; m < copies; ++m) {
#pragma omp parallel
          {
            const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads(), sgs = N / kRows;
            auto* run = streams == 1 ? gemv<1> : gemv<2>;
            run(packed + m * bytes, absmax_t.data(), tables.data(), block_scale.data(), K, sgs * t / nt,
                sgs * (t + 1) / nt, table_octets, y.data());
          }
        }
        best = std::max(best, double(bytes) * copies / (now() - t0) / 1e9);
      }
      std::printf("streamed, %d threads, %d stream(s) per thread, tables %s: %.2f GB/s\n", omp_get_max_threads(),
                  streams, table_octets ? "in L1 (probe only)" : "from L2", best);
    }
  // A plain read of the same bytes, same split and prefetch, for reference.
  double best = 0.0;
  int64_t sink = 0;
  for (int rep = 0; rep < 3; ++rep) {
    t0 = now();
#pragma omp parallel reduction(+ : sink)
    {
      const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
      __m512i v = _mm512_setzero_si512();
      for (int64_t m = 0; m < copies; ++m) {
        const uint8_t* p = packed + m * bytes;
        for (int64_t i = bytes * t / nt; i < bytes * (t + 1) / nt; i += 64) {
          _mm_prefetch(reinterpret_cast<const char*>(p + i) + kFarPrefetch, _MM_HINT_T2);
          v = _mm512_xor_si512(v, _mm512_load_si512(p + i));
        }
      }
      sink += _mm512_reduce_add_epi32(v);
    }
    best = std::max(best, double(bytes) * copies / (now() - t0) / 1e9);
  }
  std::printf("plain read: %.2f GB/s%s\n", best, sink == 42 ? " " : "");
}
