// Drivers for the NF4 products: pick the kernels of the active SIMD level, pack inputs, split the
// work over threads and walk the micro-tiles. Shapes follow the legend M rows of x, N rows of W
// (out_features), K columns of W (in_features).
#include "quant/nf4_matmul.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "base/buffer.h"
#include "base/error.h"
#include "base/parallel.h"

namespace ecomllm::quant {
namespace {

// Forward: at most this many x rows run as repeated fused GEMVs (W decoded per row of x) before
// the tiled GEMM (W decoded once per tile into a cache-resident buffer) wins.
constexpr int64_t kGemvMaxRows = 3;
constexpr int64_t kForwardKC = 2048;  // K chunk of a forward W tile: NR x 2048 fp32 stays in L2
// W tiles decoded together (4 x 6 x 2048 fp32 = 192 KiB at most, in L2). Measured on Zen 3, M = 128
// and 1024: 2-5% faster than one tile at a time; 8 no better than 4.
constexpr int64_t kForwardGroupTiles = 4;
// Backward W tile [kBackwardNC x kBackwardKW] fp32 = 128 KiB, in L2. Measured on Zen 3 (M = 1024,
// N, K in {256, 768, 2048}): 256 x 128 is 4-11% faster than 128 x 256; 512 or 1024 rows, no better.
constexpr int64_t kBackwardKW = 128;  // dx columns per backward chunk (a thread's unit of work)
constexpr int64_t kBackwardNC = 256;  // W rows per backward tile
constexpr int64_t kBackwardMinRows = 64;  // fewest dy rows per backward task

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

void gemv(const NF4Kernels& kern, const float* x, int64_t M, const NF4Matrix& W, const float* bias, float* y) {
  const int64_t K = W.cols, N = W.rows;
  AlignedBuffer split(sizeof(float) * K);
  float* x_even = split.as<float>();
  float* x_odd = x_even + K / 2;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t j = 0; j < K / 2; ++j) {
      x_even[j] = x[m * K + 2 * j];
      x_odd[j] = x[m * K + 2 * j + 1];
    }
    float* y_row = y + m * N;
    parallel_for(0, N, 8, [&](int64_t n0, int64_t n1) { kern.gemv_rows(W, x_even, x_odd, bias, n0, n1, y_row); });
  }
}

void gemm(const NF4Kernels& kern, const float* x, int64_t M, const NF4Matrix& W, const float* bias, float* y) {
  const int64_t K = W.cols, N = W.rows;
  const int64_t MR = kern.gemm_mr, NR = kern.gemm_nr, KC = std::min(K, kForwardKC);
  const int64_t panels = (M + MR - 1) / MR;

  // x packed as panels [panels][K][MR]: the micro-kernel loads MR consecutive x rows per k. The
  // buffer (MiBs in training) is kept per calling thread: a fresh one each call page-faulted.
  thread_local AlignedBuffer packed_x;
  const size_t packed_bytes = sizeof(float) * static_cast<size_t>(panels * K * MR);
  if (packed_x.size() < packed_bytes) packed_x = AlignedBuffer(packed_bytes);
  float* xp = packed_x.as<float>();
  parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float* dst = xp + p * K * MR;
      for (int64_t i = 0; i < MR; ++i) {
        const int64_t m = p * MR + i;
        if (m < M) {
          const float* src = x + m * K;
          for (int64_t k = 0; k < K; ++k) dst[k * MR + i] = src[k];
        } else {
          for (int64_t k = 0; k < K; ++k) dst[k * MR + i] = 0.0f;
        }
      }
    }
  });

  // W is walked in groups of G tiles (NR rows each), decoded together into a per-thread buffer
  // [G * NR][KC] that stays in L2. Each packed x panel is then used by all G tiles before the next
  // one is read, so x streams from the last-level cache once per group instead of once per tile
  // (for M = 1024, K = 768: 3 MiB per 4 tiles rather than per tile).
  const int64_t tiles = (N + NR - 1) / NR;
  const int64_t G = kForwardGroupTiles;
  parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {  // contiguous tile ranges: balanced to a tile
    AlignedBuffer group_buf(sizeof(float) * G * NR * KC, /*zero=*/true);
    float* wg = group_buf.as<float>();
    for (int64_t t_begin = t0; t_begin < t1; t_begin += G) {
      const int64_t t_end = std::min(t1, t_begin + G);
      for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = std::min(KC, K - k0);
        for (int64_t t = t_begin; t < t_end; ++t) {
          const int64_t n0 = t * NR, nv = std::min(NR, N - n0);
          float* w = wg + (t - t_begin) * NR * KC;
          kern.dequant_tile(W, n0, n0 + nv, k0, k0 + kc, w, KC);
          for (int64_t j = nv; j < NR; ++j) std::memset(w + j * KC, 0, sizeof(float) * kc);
        }
        for (int64_t p = 0; p < panels; ++p) {
          const int64_t m0 = p * MR;
          const int mv = static_cast<int>(std::min(MR, M - m0));
          for (int64_t t = t_begin; t < t_end; ++t) {
            const int64_t n0 = t * NR;
            kern.gemm_tile(kc, xp + (p * K + k0) * MR, wg + (t - t_begin) * NR * KC, KC, y + m0 * N + n0, N, mv,
                           static_cast<int>(std::min(NR, N - n0)), k0 > 0);
          }
        }
      }
      if (bias)
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = t_begin * NR; n < std::min(N, t_end * NR); ++n) y[m * N + n] += bias[n];
    }
  });
}

}  // namespace

const NF4Kernels& nf4_kernels() {
  switch (simd_level()) {
    case SimdLevel::AVX512: return nf4_kernels_avx512();
    case SimdLevel::AVX2: return nf4_kernels_avx2();
    default: return nf4_kernels_scalar();
  }
}

void nf4_matmul(const float* x, int64_t M, const NF4Matrix& W, const float* bias, float* y) {
  W.validate();
  ECOM_CHECK_ARG(M > 0, "nf4 matmul: x has no rows");
  const NF4Kernels& kern = nf4_kernels();
  if (M <= kGemvMaxRows && W.rows_group_aligned())
    gemv(kern, x, M, W, bias, y);
  else
    gemm(kern, x, M, W, bias, y);
}

void nf4_matmul_t(const float* dy, int64_t M, const NF4Matrix& W, float* dx, bool accumulate) {
  W.validate();
  ECOM_CHECK_ARG(M > 0, "nf4 matmul_t: dy has no rows");
  const NF4Kernels& kern = nf4_kernels();
  const int64_t K = W.cols, N = W.rows;
  const int64_t MR = kern.gemm_t_mr, KR = kern.gemm_t_kr;
  const int64_t KW = round_up(kBackwardKW, KR), NC = kBackwardNC;
  const int64_t chunks = (K + KW - 1) / KW;
  // Tasks are (dx column chunk, dy row block) pairs. With K chunks alone, 3 chunks (K = 768) on 2
  // threads left one thread idle a third of the time; splitting the rows into threads / gcd
  // blocks makes the task count a multiple of the thread count. Each row block decodes its W
  // tiles again, which is cheap next to the block's FMAs (decode ~0.2 cycle per weight, FMAs
  // rows / 16 cycles per weight), so blocks keep at least kBackwardMinRows rows.
  const int64_t threads = max_threads();
  int64_t row_blocks = threads / std::gcd(chunks, threads);
  row_blocks = std::max<int64_t>(1, std::min(row_blocks, M / kBackwardMinRows));
  const int64_t block_rows = round_up((M + row_blocks - 1) / row_blocks, MR);
  row_blocks = (M + block_rows - 1) / block_rows;
  parallel_for(0, chunks * row_blocks, 1, [&](int64_t t0, int64_t t1) {
    AlignedBuffer tile(sizeof(float) * NC * KW, /*zero=*/true);
    float* w = tile.as<float>();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c = t / row_blocks, rb = t % row_blocks;
      const int64_t k0 = c * KW, kw = std::min(KW, K - k0);
      const int64_t m_begin = rb * block_rows, m_end = std::min(M, m_begin + block_rows);
      for (int64_t n0 = 0; n0 < N; n0 += NC) {
        const int64_t nc = std::min(NC, N - n0);
        kern.dequant_tile(W, n0, n0 + nc, k0, k0 + kw, w, KW);
        // Columns past kw are read by the last micro-tile (results dropped): keep them finite.
        if (kw % KR != 0)
          for (int64_t n = 0; n < nc; ++n) std::memset(w + n * KW + kw, 0, sizeof(float) * (round_up(kw, KR) - kw));
        for (int64_t m0 = m_begin; m0 < m_end; m0 += MR) {
          const int mv = static_cast<int>(std::min(MR, m_end - m0));
          for (int64_t kk = 0; kk < kw; kk += KR)
            kern.gemm_t_tile(nc, dy + m0 * N + n0, N, w + kk, KW, dx + m0 * K + k0 + kk, K, mv,
                             static_cast<int>(std::min(KR, kw - kk)), accumulate || n0 > 0);
        }
      }
    }
  });
}

}  // namespace ecomllm::quant
