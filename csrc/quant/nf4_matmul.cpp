// Drivers for the NF4 products: pick the kernels of the active SIMD level, pack inputs, split the
// work over threads and walk the micro-tiles. Shapes follow the legend M rows of x, N rows of W
// (out_features), K columns of W (in_features).
#include "quant/nf4_matmul.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <numeric>
#include <concepts>
#include <vector>

#include "base/buffer.h"
#include "base/error.h"
#include "base/parallel.h"
#include "quant/amx_tiles.h"
#include "quant/bf16_pairs.h"
#include "quant/nf4_decode_layout.h"

namespace ecomllm::quant {
namespace {

// Forward: at most this many x rows run as repeated fused GEMVs (W decoded per row of x) before
// the tiled GEMM (W decoded once per tile into a cache-resident buffer) wins. With the AVX-512
// grouped kernel more: the GEMM's 12-row micro-tiles cost the same from 4 to 12 rows. Measured on
// Zen 4 (2 threads, 4096 x 4096 and 11008 x 4096): AVX-512 by rows 2.1 / 5.9 ms at 4 rows, 4.0 /
// 11.1 at 8, 5.1 / 12.9 at 10 against 4.9-5.1 / 12.3-12.7 for the GEMM; AVX2 by rows already
// slower at 4 rows (5.1 / 9.7 against 4.6 / 16.0, 7.5 / 20.2 against 4.7 / 11.5 at 6).
constexpr int64_t kGemvMaxRows = 3;
constexpr int64_t kGroupedGemvMaxRows = 8;
// The decode layout's product-table kernel (VBMI: up to 4 rows of x per pass since the seventh
// session, 1.1-1.2x faster again at 4-16 rows), beats the tiled GEMM up to
// about this many rows, even when every pass streams W from DRAM. Measured on Zen 4 (2 threads):
// 4096 x 4096 in cache, 16 rows 3.6 ms against 6.6 for the GEMM on bitsandbytes' layout (11008 x
// 4096: 10.3 against 17.5); 12 distinct 4096 x 4096 matrices streamed, 3.4 ms per matrix at 16
// rows against 5.3 for the GEMM on panels from the layout, even at 24 rows.
constexpr int64_t kDecodeMaxRows = 16;
// The AVX2 table kernel (DecodeLayoutKind::kAvx2) makes one pass per row at ~64 instructions per
// 128 weights, while the AVX2 GEMM decodes its panels from the same layout once for all rows: 12
// distinct 4096 x 4096 matrices at the avx2 level on Zen 4 (ms per matrix, table kernel / GEMM):
// 2.64 / 2.75 at 4 rows, 3.32 / 2.67 at 5, 5.09 / 3.66 at 8, 10.3 / 4.6 at 16. With the codes
// held the GEMM reads bitsandbytes' layout from 5 rows on as well (same bits), so releasing the
// codes changes no result.
constexpr int64_t kAvx2DecodeMaxRows = 4;
constexpr int64_t kForwardKC = 2048;  // K chunk of a forward W tile: NR x 2048 fp32 stays in L2
// W tiles decoded together (4 x NR x 2048 fp32: 512 KiB at most with AVX2's NR = 16, 1 MiB with
// AVX-512's 32, in L2). Measured on Zen 3, M = 128 and 1024: 2-5% faster than one tile at a time;
// 8 no better than 4. On Sapphire Rapids (NR = 32) 2 tiles were 5-10% slower than 4.
constexpr int64_t kForwardGroupTiles = 4;
// Backward W tile [kBackwardNC x kBackwardKW] fp32 = 128 KiB, in L2. Measured on Zen 3 (M = 1024,
// N, K in {256, 768, 2048}): 256 x 128 is 4-11% faster than 128 x 256; 512 or 1024 rows, no better.
constexpr int64_t kBackwardKW = 128;  // dx columns per backward chunk (a thread's unit of work)
constexpr int64_t kBackwardNC = 256;  // W rows per backward tile
constexpr int64_t kBackwardMinRows = 64;  // fewest dy rows per backward task
// Most bytes of dy packed at a time for the backward micro-kernels (a column block of dy; at least
// one W tile's worth): the lm_head's logits gradient is M x vocab, ~128 MiB at M = 1024.
constexpr int64_t kBackwardPanelBytes = int64_t{8} << 20;

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

void gemv(const NF4Kernels& kern, const float* x, int64_t M, const NF4Matrix& W, const float* bias, float* y) {
  const int64_t K = W.cols, N = W.rows;
  if (kern.gemv_rows_grouped && nf4_gemv_grouped_supported(W)) {
    AlignedBuffer grouped(sizeof(float) * K);
    float* xg = grouped.as<float>();
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t g = 0; g < K; g += 128)
        for (int64_t e = 0; e < 128; ++e) xg[g + gemv_group_position(e)] = x[m * K + g + e];
      float* y_row = y + m * N;
      parallel_for(0, N, 8, [&](int64_t n0, int64_t n1) { kern.gemv_rows_grouped(W, xg, bias, n0, n1, y_row); });
    }
    return;
  }
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

// Where the drivers get fp32 tiles of W[N, K] from. tile(n0, n1, k0, k1, scratch, ld_scratch, &ld)
// returns rows [n0, n1) x columns [k0, k1) with row stride ld, either decoded into scratch (NF4,
// bf16) or in place (fp32). `rows` / `cols` are what the micro-kernel will read: the tile must
// have that many readable rows / columns (zero where past n1 / k1) -- sources that read in place
// copy an edge tile into scratch instead.
struct NF4Source {
  static constexpr bool kExactBf16 = false;  // its fp32 tiles need all three AMX planes
  const NF4Kernels& kern;
  const NF4Matrix& W;
  const float* tile(int64_t n0, int64_t n1, int64_t k0, int64_t k1, int64_t rows, int64_t cols, float* scratch,
                    int64_t ld_scratch, int64_t* ld) const {
    kern.dequant_tile(W, n0, n1, k0, k1, scratch, ld_scratch);
    zero_edges(n1 - n0, k1 - k0, rows, cols, scratch, ld_scratch);
    *ld = ld_scratch;
    return scratch;
  }
  // The backward's tile at "medium" as bf16 pairs straight from the codes (bf16_pair_tile_nf4),
  // where its shape allows; false: the caller decodes an fp32 tile and pairs it (the same bits).
  bool pair_tile(int64_t n0, int64_t nc, int64_t k0, int64_t kw, uint32_t* out, int64_t ldo) const {
    if (!bf16_pair_tile_nf4_fits(W, n0, nc, k0, kw)) return false;
    bf16_pair_tile_nf4(W, n0, nc, k0, kw, out, ldo);
    return true;
  }
  // Rows [nv, rows) and columns [kv, cols) of a tile in scratch are zeroed (finite padding).
  static void zero_edges(int64_t nv, int64_t kv, int64_t rows, int64_t cols, float* t, int64_t ld) {
    if (kv < cols)
      for (int64_t n = 0; n < nv; ++n) std::memset(t + n * ld + kv, 0, sizeof(float) * (cols - kv));
    for (int64_t n = nv; n < rows; ++n) std::memset(t + n * ld, 0, sizeof(float) * cols);
  }
};

struct F32Source {
  static constexpr bool kExactBf16 = false;
  const float* W;
  int64_t N, K;
  // In place suits the forward (NR whole rows per tile); the backward's tiles are narrow column
  // strips of many rows, whose in-place rows lie a page apart: copied, the lm_head's backward is
  // 5-7% faster than OpenBLAS, in place 0-10% slower (Zen 3, interleaved runs).
  bool in_place;
  const float* tile(int64_t n0, int64_t n1, int64_t k0, int64_t k1, int64_t rows, int64_t cols, float* scratch,
                    int64_t ld_scratch, int64_t* ld) const {
    if (in_place && n0 + rows <= N && k0 + cols <= K) {  // every row and column the kernel reads is in W
      *ld = K;
      return W + n0 * K + k0;
    }
    for (int64_t n = n0; n < n1; ++n) std::memcpy(scratch + (n - n0) * ld_scratch, W + n * K + k0, sizeof(float) * (k1 - k0));
    NF4Source::zero_edges(n1 - n0, k1 - k0, rows, cols, scratch, ld_scratch);
    *ld = ld_scratch;
    return scratch;
  }
};

struct BF16Source {
  static constexpr bool kExactBf16 = true;  // widened bf16: one AMX plane holds it exactly
  const uint16_t* W;
  int64_t N, K;
  const float* tile(int64_t n0, int64_t n1, int64_t k0, int64_t k1, int64_t rows, int64_t cols, float* scratch,
                    int64_t ld_scratch, int64_t* ld) const {
    for (int64_t n = n0; n < n1; ++n) {
      const uint16_t* src = W + n * K + k0;
      float* dst = scratch + (n - n0) * ld_scratch;
      for (int64_t k = 0; k < k1 - k0; ++k) {
        const uint32_t bits = static_cast<uint32_t>(src[k]) << 16;  // bf16 -> fp32 is exact
        std::memcpy(dst + k, &bits, 4);
      }
    }
    NF4Source::zero_edges(n1 - n0, k1 - k0, rows, cols, scratch, ld_scratch);
    *ld = ld_scratch;
    return scratch;
  }
};

// The forward micro-kernel reads W tiles packed [kc][NR] (kern.pack_panel), its vector loads per k
// one contiguous stream, and keeps vectors along W rows so that a tile of y is written back as
// whole vector rows; with vectors along x rows it was written back one float at a time,
// transposed. Measured at M = 1024 on Sapphire Rapids (AVX-512, 2 threads): 236-291 -> 314-351
// GFLOP/s (of a 492 FMA peak).
// panel[k * nr + j] = rows[j * ld + k] for a tile of only nv <= nr readable rows (rows nv .. nr of
// the panel zero): the low-rank term's B rows, and the backward's dy and g panels.
void pack_panel(const float* rows, int64_t ld, int64_t nv, int64_t nr, int64_t kc, float* panel) {
  for (int64_t k = 0; k < kc; ++k)
    for (int64_t j = 0; j < nr; ++j) panel[k * nr + j] = j < nv ? rows[j * ld + k] : 0.0f;
}

// x[M, K] -> panels [ceil(M / MR)][K][MR] (rows past M zero), in parallel over panels.
void pack_x_panels(const NF4Kernels& kern, const float* x, int64_t M, int64_t K, float* xp) {
  const int64_t MR = kern.gemm_mr, panels = (M + MR - 1) / MR;
  parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      kern.pack_x_panel(x + p * MR * K, K, static_cast<int>(std::min(MR, M - p * MR)), xp + p * K * MR);
  });
}

void check_low_rank(const LowRankOutput& e) {
  ECOM_CHECK_ARG(e.u && e.b && e.r > 0, "matmul: incomplete low-rank term (r = ", e.r, ")");
}

// y[m, n] += scale * sum_j u[m, j] b[n, j]: the low-rank term where no tiled driver runs (GEMV).
void add_low_rank_rows(const LowRankOutput& e, int64_t M, int64_t N, float* y) {
  parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = n0; n < n1; ++n) {
        float s = 0.0f;
        for (int64_t j = 0; j < e.r; ++j) s += e.u[m * e.r + j] * e.b[n * e.r + j];
        y[m * N + n] += e.scale * s;
      }
  });
}

// ---- AMX products (bf16x3, fp32-accurate; quant/amx_tiles.h) -----------------------------------
// Where AMX is usable, the tiled products below run here instead of on the AVX-512 micro-kernels:
// measured on Sapphire Rapids (2 cores, M = 1024, K and N in 768..2048) 460-590 GFLOP/s against
// 300-340 for the micro-kernels (fp32-equivalent flops: 2 M N K per product). Passes of 32 steps
// and groups of 4 column blocks measured best of 16/32/64 x 2/4/8 (8 leaves threads idle at 24
// column blocks); prefetching the next row pair's A panels into L2 gained nothing.
constexpr int64_t kAmxMinRows = 32;  // below this the 32-row blocks are mostly padding
// Reduction steps (of 32) per pass: a row pair's A panels and a column block's B panel are 192 KiB
// each, so a group of them stays in L2; C is re-loaded between passes.
constexpr int64_t kAmxChunkSteps = 32;
// Column blocks (of 32) per thread task: their B panels stay in L2 while each row pair's A panels
// (from the last-level cache) are used by all of them.
constexpr int64_t kAmxGroupBlocks = 4;

// One reduction segment of C[M, cols] (+)= A[M, red] B[red, cols]. pack_b(col0, nv, r0, r1, steps,
// planes, scratch, out) writes the B panel of columns [col0, col0 + nv) over reduction rows
// [r0, r1); scratch holds kAmxChunkSteps * 32 * 32 floats. b_planes: the most bf16 planes B needs
// (1 for bf16 weights: exact in one plane; 3 otherwise).
struct AmxSegment {
  const float* a;
  int64_t lda, red;
  std::function<void(int64_t, int, int64_t, int64_t, int64_t, int, float*, uint16_t*)> pack_b;
  int b_planes = 3;
};

// A short last segment (LoRA's rank-r term: r <= 128) joins the last pass of the segment before it
// as extra steps of the same blocks, instead of a pass of its own that would load and store all
// of C again for one or two steps.
constexpr int64_t kAmxTailSteps = 4;

// C[M, cols] (row stride cols) = (accumulate: +=) the sum over the segments.
void amx_product(int64_t M, int64_t cols, const AmxSegment* segs, int nsegs, float* c, bool accumulate) {
  const int planes = amx_planes();  // fp32 accuracy (3) unless set_fp32_matmul_precision lowered it
  // The passes: each a list of pieces (segment, reduction range) run as one block of steps, with
  // the B planes of each piece's run and the pass's panel sizes.
  struct Piece {
    const AmxSegment* seg;
    int64_t r0, r1;
  };
  struct Pass {
    std::vector<Piece> pieces;
    std::vector<AmxRun> runs;
    int64_t steps = 0, b_panel = 0;  // b_panel: B elements per column block
    void add(const Piece& piece, int planes) {
      const int64_t n = (piece.r1 - piece.r0 + kAmxStep - 1) / kAmxStep;
      const int bp = std::min(planes, piece.seg->b_planes);
      pieces.push_back(piece);
      runs.push_back({n, bp});
      steps += n;
      b_panel += n * amx_b_step_elems(bp);
    }
  };
  std::vector<Pass> passes;
  for (int si = 0; si < nsegs; ++si) {
    const AmxSegment& seg = segs[si];
    const int64_t seg_steps = (seg.red + kAmxStep - 1) / kAmxStep;
    const bool joins = si > 0 && si == nsegs - 1 && seg_steps <= kAmxTailSteps && !passes.empty();
    for (int64_t r0 = 0; r0 < seg.red; r0 += kAmxChunkSteps * kAmxStep) {
      if (!joins) passes.emplace_back();
      passes.back().add({&seg, r0, std::min(seg.red, r0 + kAmxChunkSteps * kAmxStep)}, planes);
    }
  }
  int64_t max_steps = 0, max_b_panel = 0;  // over the passes (steps <= kAmxChunkSteps + kAmxTailSteps)
  for (const Pass& pass : passes) {
    max_steps = std::max(max_steps, pass.steps);
    max_b_panel = std::max(max_b_panel, pass.b_panel);
  }
  const int64_t row_pairs = (M + 31) / 32, col_blocks = (cols + 31) / 32;
  const int64_t groups = (col_blocks + kAmxGroupBlocks - 1) / kAmxGroupBlocks;
  // A panels of every 16 rows for one pass (1.5x the fp32 A of a pass at 3 planes: 4.5 MiB for
  // M = 1024, K = 768), kept per calling thread.
  thread_local AlignedBuffer a_buf;
  const size_t a_bytes =
      sizeof(uint16_t) * static_cast<size_t>(2 * row_pairs * max_steps * amx_a_step_elems(planes));
  if (a_buf.size() < a_bytes) a_buf = AlignedBuffer(a_bytes);
  uint16_t* ap = a_buf.as<uint16_t>();
  bool acc = accumulate;
  for (const Pass& pass : passes) {
    const int64_t steps = pass.steps, b_panel = pass.b_panel, a_panel = steps * amx_a_step_elems(planes);
    parallel_for(0, 2 * row_pairs, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t rb = b0; rb < b1; ++rb) {
        const int mv = static_cast<int>(std::clamp<int64_t>(M - rb * 16, 0, 16));
        uint16_t* out = ap + rb * a_panel;
        for (size_t i = 0; i < pass.pieces.size(); ++i) {
          const Piece& piece = pass.pieces[i];
          const AmxSegment& seg = *piece.seg;
          amx_pack_a(mv > 0 ? seg.a + rb * 16 * seg.lda + piece.r0 : seg.a, seg.lda, mv, piece.r1 - piece.r0,
                     pass.runs[i].steps, planes, out);
          out += pass.runs[i].steps * amx_a_step_elems(planes);
        }
      }
    });
    parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
      // Per worker thread, kept: ~1 MiB allocated per call came from mmap and page-faulted each time.
      thread_local AlignedBuffer b_buf, scratch_buf;
      const size_t b_bytes = sizeof(uint16_t) * static_cast<size_t>(kAmxGroupBlocks * max_b_panel);
      if (b_buf.size() < b_bytes) b_buf = AlignedBuffer(b_bytes);
      if (scratch_buf.size() == 0) scratch_buf = AlignedBuffer(sizeof(float) * kAmxChunkSteps * kAmxStep * 32);
      uint16_t* bp = b_buf.as<uint16_t>();
      float* scratch = scratch_buf.as<float>();
      amx_configure();
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t cb0 = g * kAmxGroupBlocks, cb1 = std::min(col_blocks, cb0 + kAmxGroupBlocks);
        for (int64_t cb = cb0; cb < cb1; ++cb) {
          uint16_t* out = bp + (cb - cb0) * b_panel;
          for (size_t i = 0; i < pass.pieces.size(); ++i) {
            const Piece& piece = pass.pieces[i];
            const AmxRun& run = pass.runs[i];
            piece.seg->pack_b(cb * 32, static_cast<int>(std::min<int64_t>(32, cols - cb * 32)), piece.r0, piece.r1,
                              run.steps, run.b_planes, scratch, out);
            out += run.steps * amx_b_step_elems(run.b_planes);
          }
        }
        for (int64_t rp = 0; rp < row_pairs; ++rp) {
          const int mv = static_cast<int>(std::min<int64_t>(32, M - rp * 32));
          for (int64_t cb = cb0; cb < cb1; ++cb)
            amx_block(ap + 2 * rp * a_panel, ap + (2 * rp + 1) * a_panel, bp + (cb - cb0) * b_panel, pass.runs.data(),
                      static_cast<int>(pass.runs.size()), planes, c + rp * 32 * cols + cb * 32, cols, mv,
                      static_cast<int>(std::min<int64_t>(32, cols - cb * 32)), acc);
        }
      }
    });
    acc = true;
  }
}

// y[M, N] = x[M, K] W^T (+ bias) (+ extra) on AMX.
template <typename Source>
void gemm_amx(const float* x, int64_t M, int64_t N, int64_t K, const Source& src, const float* bias, float* y,
              const LowRankOutput* extra) {
  AmxSegment segs[2];
  segs[0] = {x, K, K,
             [&](int64_t n0, int nv, int64_t k0, int64_t k1, int64_t steps, int planes, float* scratch, uint16_t* out) {
               int64_t ld = 0;
               const float* rows = src.tile(n0, n0 + nv, k0, k1, nv, k1 - k0, scratch, k1 - k0, &ld);
               amx_pack_b_rows(rows, ld, nv, k1 - k0, steps, planes, out);
             },
             Source::kExactBf16 ? 1 : 3};
  int nsegs = 1;
  if (extra) {  // y += u (scale b)^T: r more reduction steps, scale applied to b as the tiled path does
    segs[nsegs++] = {extra->u, extra->r, extra->r,
                     [&](int64_t n0, int nv, int64_t j0, int64_t j1, int64_t steps, int planes, float* scratch,
                         uint16_t* out) {
                       for (int64_t n = 0; n < nv; ++n)
                         for (int64_t j = j0; j < j1; ++j)
                           scratch[n * (j1 - j0) + j - j0] = extra->b[(n0 + n) * extra->r + j] * extra->scale;
                       amx_pack_b_rows(scratch, j1 - j0, nv, j1 - j0, steps, planes, out);
                     }};
  }
  amx_product(M, N, segs, nsegs, y, false);
  if (bias)
    parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m)
        for (int64_t n = 0; n < N; ++n) y[m * N + n] += bias[n];
    });
}

// dx[M, K] (+)= dy[M, N] W (+ extra) on AMX.
template <typename Source>
void gemm_t_amx(const float* dy, int64_t M, int64_t N, int64_t K, const Source& src, float* dx, bool accumulate,
                const LowRankTerm* extra) {
  AmxSegment segs[2];
  segs[0] = {dy, N, N,
             [&](int64_t k0, int kv, int64_t n0, int64_t n1, int64_t steps, int planes, float* scratch, uint16_t* out) {
               int64_t ld = 0;
               const float* rows = src.tile(n0, n1, k0, k0 + kv, n1 - n0, kv, scratch, 32, &ld);
               amx_pack_b_cols(rows, ld, n1 - n0, kv, steps, planes, out);
             },
             Source::kExactBf16 ? 1 : 3};
  int nsegs = 1;
  if (extra)  // dx += g A: r more reduction rows
    segs[nsegs++] = {extra->g, extra->r, extra->r,
                     [&](int64_t k0, int kv, int64_t j0, int64_t j1, int64_t steps, int planes, float*, uint16_t* out) {
                       amx_pack_b_cols(extra->a + j0 * K + k0, K, j1 - j0, kv, steps, planes, out);
                     }};
  amx_product(M, K, segs, nsegs, dx, accumulate);
}

// Where the FMA GEMM's packed W panels come from: the source's row-major tiles packed by
// kern.pack_panel, or (PanelSource) panels the source writes itself.
struct DecodeLayoutPanels {  // the decode layout: kVbmi for AVX-512 (NR == kDecodePanelRows), kAvx2 for AVX2 (16)
  const NF4DecodeLayout& L;
  const float* code;
  void panel(int64_t n0, int64_t k0, int64_t kc, float* out) const {
    if (L.kind == DecodeLayoutKind::kVbmi)
      nf4_decode_panel(L, code, n0, k0, kc, out);
    else
      nf4_decode_panel_avx2(L, code, n0, k0, kc, out);
  }
};
// Whether the FMA GEMM at this level takes its W panels from `decode`: its kind's kernel runs
// here and the micro-tile has the rows its panels give.
bool decode_layout_panels_fit(const NF4Kernels& kern, const NF4DecodeLayout& decode) {
  if (!nf4_decode_kernel_available(decode.kind)) return false;
  if (decode.kind == DecodeLayoutKind::kVbmi)
    return kern.level == SimdLevel::AVX512 && kern.gemm_nr == kDecodePanelRows;
  return kern.level == SimdLevel::AVX2 && kern.gemm_nr == kAvx2DecodePanelRows;
}
template <typename Source>
concept PanelSource = requires(const Source& s, float* p) { s.panel(int64_t{0}, int64_t{0}, int64_t{0}, p); };

// y[M, N] = x[M, K] W^T (+ bias) with the FMA micro-kernels, for a tile or panel source over W[N, K].
template <typename Source>
void gemm_tiled(const NF4Kernels& kern, const float* x, int64_t M, int64_t N, int64_t K, const Source& src,
                const float* bias, float* y, const LowRankOutput* extra) {
  if (extra) check_low_rank(*extra);
  const int64_t MR = kern.gemm_mr, NR = kern.gemm_nr, KC = std::min(K, kForwardKC);
  const int64_t panels = (M + MR - 1) / MR;

  // x packed as panels [panels][K][MR]: the micro-kernel broadcasts MR consecutive x rows per k. The
  // buffer (MiBs in training) is kept per calling thread: a fresh one each call page-faulted.
  // At the "medium" precision on AVX512-BF16 (bf16_pairs.h) x and the W panels are bf16 pairs,
  // [panels][ceil(K / 2)][MR] and [ceil(kc / 2)][NR], multiplied by the pair micro-kernel.
  const bool pairs = bf16_pair_products() && MR == kBf16GemmMR && NR == kBf16GemmNR;
  const int64_t KP = (K + 1) / 2;
  thread_local AlignedBuffer packed_x;
  const size_t packed_bytes = pairs ? sizeof(uint32_t) * static_cast<size_t>(panels * KP * MR)
                                    : sizeof(float) * static_cast<size_t>(panels * K * MR);
  if (packed_x.size() < packed_bytes) packed_x = AlignedBuffer(packed_bytes);
  float* xp = packed_x.as<float>();
  uint32_t* xpp = packed_x.as<uint32_t>();
  if (pairs) {
    parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p)
        bf16_pack_pair_panel(x + p * MR * K, K, K, static_cast<int>(std::min(MR, M - p * MR)), kBf16GemmMR,
                             xpp + p * KP * MR);
    });
  } else {
    pack_x_panels(kern, x, M, K, xp);
  }

  // The low-rank term's u packed like x ([panels][r][MR]): its r steps follow each tile's K steps.
  const int64_t r = extra ? extra->r : 0;
  thread_local AlignedBuffer packed_u;
  if (extra) {
    const size_t u_bytes = sizeof(float) * static_cast<size_t>(panels * r * MR);
    if (packed_u.size() < u_bytes) packed_u = AlignedBuffer(u_bytes);
    pack_x_panels(kern, extra->u, M, r, packed_u.as<float>());
  }
  const float* up = packed_u.as<float>();

  // W is walked in groups of G tiles (NR rows each), decoded together into a per-thread buffer
  // [G * NR][KC] that stays in L2. Each packed x panel is then used by all G tiles before the next
  // one is read, so x streams from the last-level cache once per group instead of once per tile
  // (for M = 1024, K = 768: 3 MiB per 4 tiles rather than per tile).
  const int64_t tiles = (N + NR - 1) / NR;
  const int64_t G = kForwardGroupTiles;
  parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {  // contiguous tile ranges: balanced to a tile
    // rows: one tile as the source gives it ([NR][KC]); group: the G tiles packed [KC][NR] each.
    AlignedBuffer rows_buf = PanelSource<Source> ? AlignedBuffer() : AlignedBuffer(sizeof(float) * NR * KC, true);
    AlignedBuffer group_buf(sizeof(float) * G * NR * KC);
    AlignedBuffer low_rank_buf(sizeof(float) * G * NR * std::max<int64_t>(r, 1));  // [G][r][NR]
    for (int64_t t_begin = t0; t_begin < t1; t_begin += G) {
      const int64_t t_end = std::min(t1, t_begin + G);
      for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = std::min(KC, K - k0);
        for (int64_t t = t_begin; t < t_end; ++t) {
          const int64_t n0 = t * NR, nv = std::min(NR, N - n0);
          float* panel = group_buf.as<float>() + (t - t_begin) * NR * KC;
          if constexpr (PanelSource<Source>) {
            src.panel(n0, k0, kc, panel);
            if (pairs) bf16_pair_panel_in_place(panel, kc);
          } else {
            int64_t ld = 0;
            const float* rows = src.tile(n0, n0 + nv, k0, k0 + kc, NR, kc, rows_buf.as<float>(), KC, &ld);
            if (pairs)
              bf16_pack_pair_panel_rows(rows, ld, kc, reinterpret_cast<uint32_t*>(panel));
            else
              kern.pack_panel(rows, ld, kc, panel);
          }
        }
        for (int64_t p = 0; p < panels; ++p) {
          const int64_t m0 = p * MR;
          const int mv = static_cast<int>(std::min(MR, M - m0));
          for (int64_t t = t_begin; t < t_end; ++t) {
            const int64_t n0 = t * NR;
            const float* panel = group_buf.as<float>() + (t - t_begin) * NR * KC;
            const int nv = static_cast<int>(std::min(NR, N - n0));
            if (pairs)  // KC is even: chunk k0 starts at pair k0 / 2
              bf16_gemm_tile((kc + 1) / 2, xpp + (p * KP + k0 / 2) * MR, reinterpret_cast<const uint32_t*>(panel),
                             y + m0 * N + n0, N, mv, nv, k0 > 0);
            else
              kern.gemm_tile(kc, xp + (p * K + k0) * MR, panel, y + m0 * N + n0, N, mv, nv, k0 > 0);
          }
        }
      }
      if (extra) {  // y tiles += u (scale b)^T, r more reduction steps per tile
        for (int64_t t = t_begin; t < t_end; ++t) {
          const int64_t n0 = t * NR, nv = std::min(NR, N - n0);
          float* panel = low_rank_buf.as<float>() + (t - t_begin) * NR * r;
          pack_panel(extra->b + n0 * r, r, nv, NR, r, panel);
          for (int64_t i = 0; i < NR * r; ++i) panel[i] *= extra->scale;
        }
        for (int64_t p = 0; p < panels; ++p) {
          const int64_t m0 = p * MR;
          const int mv = static_cast<int>(std::min(MR, M - m0));
          for (int64_t t = t_begin; t < t_end; ++t) {
            const int64_t n0 = t * NR;
            kern.gemm_tile(r, up + p * r * MR, low_rank_buf.as<float>() + (t - t_begin) * NR * r, y + m0 * N + n0, N,
                           mv, static_cast<int>(std::min(NR, N - n0)), /*accumulate=*/true);
          }
        }
      }
      if (bias)
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = t_begin * NR; n < std::min(N, t_end * NR); ++n) y[m * N + n] += bias[n];
    }
  });
}

// y[M, N] = x[M, K] W^T (+ bias) for a tile source over W[N, K]: on AMX tiles where they pay.
template <typename Source>
void gemm(const NF4Kernels& kern, const float* x, int64_t M, int64_t N, int64_t K, const Source& src,
          const float* bias, float* y, const LowRankOutput* extra) {
  if (M >= kAmxMinRows && amx_usable()) {
    if (extra) check_low_rank(*extra);
    gemm_amx(x, M, N, K, src, bias, y, extra);
    return;
  }
  gemm_tiled(kern, x, M, N, K, src, bias, y, extra);
}

// Sources that write the backward's bf16 pair tiles themselves (NF4Source::pair_tile).
template <typename Source>
concept PairTileSource = requires(const Source& s, uint32_t* out) {
  { s.pair_tile(int64_t{0}, int64_t{0}, int64_t{0}, int64_t{0}, out, int64_t{0}) } -> std::same_as<bool>;
};
static_assert(PairTileSource<NF4Source> && !PairTileSource<F32Source>);

// dx[M, K] (+)= dy[M, N] W for a tile source over W[N, K].
template <typename Source>
void gemm_t(const NF4Kernels& kern, const float* dy, int64_t M, int64_t N, int64_t K, const Source& src, float* dx,
            bool accumulate, const LowRankTerm* extra) {
  if (extra) {
    ECOM_CHECK_ARG(extra->g && extra->a && extra->r > 0, "matmul_t: incomplete low-rank term (r = ", extra->r, ")");
  }
  if (M >= kAmxMinRows && amx_usable()) {
    gemm_t_amx(dy, M, N, K, src, dx, accumulate, extra);
    return;
  }
  const int64_t MR = kern.gemm_t_mr, KR = kern.gemm_t_kr;
  const int64_t KW = round_up(kBackwardKW, KR), NC = kBackwardNC;
  const int64_t chunks = (K + KW - 1) / KW;
  // dy (and the low-rank term's g) is packed as panels [ceil(M / MR)][columns][MR], so that a
  // micro-tile reads its MR rows as one contiguous stream: read in place, rows N floats apart share
  // L1 sets when N is a multiple of 1024 (4096: 14 rows on 8 ways), which halved the backward's
  // speed (Zen 4, M = 128: 61-118 GFLOP/s at N = 4096 against 144-158 at N = 4112). The columns go
  // in blocks of whole NC-row W tiles whose panels take at most kBackwardPanelBytes (the logits'
  // gradient of an lm_head is M x vocab: a copy of all of it would cost as much memory again); each
  // block is one pass of the tasks below, W rows decoded once either way.
  // At the "medium" precision on AVX512-BF16 dy's panels hold bf16 pairs instead, [ceil(cols / 2)][MR],
  // and each W tile becomes pairs of its rows (bf16_pairs.h); NC is even, so tiles start on a pair.
  static_assert(kBackwardNC % 2 == 0);
  const bool pairs = bf16_pair_products() && MR == kBf16GemmTMR && KR == kBf16GemmTKR;
  const int64_t dy_panels = (M + MR - 1) / MR, r = extra ? extra->r : 0;
  const int64_t block_cols =
      std::min(N, std::max<int64_t>(NC, kBackwardPanelBytes / (sizeof(float) * dy_panels * MR) / NC * NC));
  thread_local AlignedBuffer dy_panel_buf, g_panel_buf;
  const size_t dy_bytes = sizeof(float) * static_cast<size_t>(dy_panels * block_cols * MR);
  if (dy_panel_buf.size() < dy_bytes) dy_panel_buf = AlignedBuffer(dy_bytes);
  const size_t g_bytes = sizeof(float) * static_cast<size_t>(dy_panels * r * MR);
  if (extra && g_panel_buf.size() < g_bytes) g_panel_buf = AlignedBuffer(g_bytes);
  // Plain pointers for the workers: inside their lambda the thread_local names would be their own.
  float* dyp = dy_panel_buf.as<float>();
  uint32_t* dy_pairs = dy_panel_buf.as<uint32_t>();
  float* gp = g_panel_buf.as<float>();
  if (extra)
    parallel_for(0, dy_panels, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p)
        pack_panel(extra->g + p * MR * r, r, std::min(MR, M - p * MR), MR, r, gp + p * r * MR);
    });
  // Tasks are (dx column chunk, dy row block) pairs. With K chunks alone, 3 chunks on 2 threads
  // left one thread idle a third of the time; splitting the rows into threads / gcd blocks makes
  // the task count a multiple of the thread count. Each row block produces its W tiles again,
  // which is cheap next to the block's FMAs (decode ~0.2 cycle per weight, FMAs rows / 16 cycles
  // per weight), so blocks keep at least kBackwardMinRows rows.
  const int64_t threads = max_threads();
  int64_t row_blocks = threads / std::gcd(chunks, threads);
  row_blocks = std::max<int64_t>(1, std::min(row_blocks, M / kBackwardMinRows));
  const int64_t block_rows = round_up((M + row_blocks - 1) / row_blocks, MR);
  row_blocks = (M + block_rows - 1) / block_rows;
  for (int64_t nb0 = 0; nb0 < N; nb0 += block_cols) {
    const int64_t nb1 = std::min(N, nb0 + block_cols), cols = nb1 - nb0, col_pairs = (cols + 1) / 2;
    const bool last_block = nb1 == N;
    parallel_for(0, dy_panels, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int mv = static_cast<int>(std::min(MR, M - p * MR));
        if (pairs)
          bf16_pack_pair_panel(dy + p * MR * N + nb0, N, cols, mv, kBf16GemmTMR, dy_pairs + p * col_pairs * MR);
        else
          pack_panel(dy + p * MR * N + nb0, N, mv, MR, cols, dyp + p * cols * MR);
      }
    });
    parallel_for(0, chunks * row_blocks, 1, [&](int64_t t0, int64_t t1) {
      AlignedBuffer tile(sizeof(float) * NC * KW, /*zero=*/true);
      AlignedBuffer pair_tile(pairs ? sizeof(uint32_t) * NC / 2 * KW : 0);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t c = t / row_blocks, rb = t % row_blocks;
        const int64_t k0 = c * KW, kw = std::min(KW, K - k0);
        const int64_t m_begin = rb * block_rows, m_end = std::min(M, m_begin + block_rows);
        // dx[rows, chunk] (+)= lhs[rows, j0 + n] w[n, chunk] for one tile w of n reduction rows, lhs
        // the panels of dy or g (width columns per panel row) from their column j0 on.
        auto apply_tile = [&](int64_t n, const float* panels, int64_t width, int64_t j0, const float* w, int64_t ldw,
                              bool acc) {
          for (int64_t m0 = m_begin; m0 < m_end; m0 += MR) {
            const int mv = static_cast<int>(std::min(MR, m_end - m0));
            for (int64_t kk = 0; kk < kw; kk += KR)
              kern.gemm_t_tile(n, panels + (m0 / MR * width + j0) * MR, w + kk, ldw, dx + m0 * K + k0 + kk, K, mv,
                               static_cast<int>(std::min(KR, kw - kk)), acc);
          }
        };
        for (int64_t n0 = nb0; n0 < nb1; n0 += NC) {
          const int64_t nc = std::min(NC, nb1 - n0);
          const bool acc = accumulate || n0 > 0;
          // Columns past kw are read by the last micro-tile (results dropped): they must be finite.
          auto fp32_tile = [&](int64_t* ldw) {
            return src.tile(n0, n0 + nc, k0, k0 + kw, nc, round_up(kw, KR), tile.as<float>(), KW, ldw);
          };
          if (pairs) {
            uint32_t* wp = pair_tile.as<uint32_t>();
            bool direct = false;
            if constexpr (PairTileSource<Source>) direct = src.pair_tile(n0, nc, k0, kw, wp, KW);
            if (!direct) {
              int64_t ldw = 0;
              const float* w = fp32_tile(&ldw);
              bf16_pair_tile_rows(w, ldw, nc, kw, wp, KW);
            }
            for (int64_t m0 = m_begin; m0 < m_end; m0 += MR)
              for (int64_t kk = 0; kk < kw; kk += KR)
                bf16_gemm_t_tile((nc + 1) / 2, dy_pairs + (m0 / MR * col_pairs + (n0 - nb0) / 2) * MR, wp + kk, KW,
                                 dx + m0 * K + k0 + kk, K, static_cast<int>(std::min(MR, m_end - m0)),
                                 static_cast<int>(std::min(KR, kw - kk)), acc);
          } else {
            int64_t ldw = 0;
            const float* w = fp32_tile(&ldw);
            apply_tile(nc, dyp, cols, n0 - nb0, w, ldw, acc);
          }
        }
        // The low-rank term as further reduction rows: dx[:, chunk] += g A[:, chunk], NC rows at a
        // time, with the last column block.
        if (extra && last_block) {
          const F32Source a_rows{extra->a, r, K, false};
          for (int64_t r0 = 0; r0 < r; r0 += NC) {
            const int64_t rc = std::min(NC, r - r0);
            int64_t ldw = 0;
            const float* w = a_rows.tile(r0, r0 + rc, k0, k0 + kw, rc, round_up(kw, KR), tile.as<float>(), KW, &ldw);
            apply_tile(rc, gp, r, r0, w, ldw, true);
          }
        }
      }
    });
  }
}

}  // namespace

namespace {
std::atomic<bool>& scale_lookup_flag() {
  static std::atomic<bool> flag{cpu_features().vendor_amd};
  return flag;
}
}  // namespace

bool nf4_scale_lookup_by_permutes() { return scale_lookup_flag().load(std::memory_order_relaxed); }
void set_nf4_scale_lookup_by_permutes(bool on) { scale_lookup_flag().store(on); }

const NF4Kernels& nf4_kernels() {
  switch (simd_level()) {
    case SimdLevel::AVX512: return nf4_kernels_avx512();
    case SimdLevel::AVX2: return nf4_kernels_avx2();
    default: return nf4_kernels_scalar();
  }
}

void nf4_matmul(const float* x, int64_t M, const NF4Matrix& W, const float* bias, float* y,
                const LowRankOutput* extra, const NF4DecodeLayout* decode) {
  W.validate(/*need_packed=*/!decode);
  ECOM_CHECK_ARG(M > 0, "nf4 matmul: x has no rows");
  if (decode) ECOM_CHECK_ARG(decode->rows == W.rows && decode->cols == W.cols, "nf4 matmul: decode layout is of ",
                             "another shape");
  auto add_extra_rows = [&] {
    if (!extra) return;
    check_low_rank(*extra);
    add_low_rank_rows(*extra, M, W.rows, y);
  };
  // A few rows: one pass over W per row (the decode layout's kernel where it runs, else the
  // fused GEMV), then the low-rank term; otherwise the tiled GEMM, which fuses the term itself
  // (with W panels from the decode layout where there is one: no restored codes needed).
  const int64_t decode_max_rows =
      decode && decode->kind == DecodeLayoutKind::kAvx2 ? kAvx2DecodeMaxRows : kDecodeMaxRows;
  if (M <= decode_max_rows && decode && nf4_decode_matmul(*decode, W.code, x, M, bias, y)) {
    add_extra_rows();
    return;
  }
  const NF4Kernels& kern = nf4_kernels();
  if (M > kGemvMaxRows && decode && decode_layout_panels_fit(kern, *decode) && !(M >= kAmxMinRows && amx_usable())) {
    gemm_tiled(kern, x, M, W.rows, W.cols, DecodeLayoutPanels{*decode, W.code}, bias, y, extra);
    return;
  }
  AlignedBuffer restored;  // W's codes restored from `decode` when its owner released them
  const NF4Matrix Wc = nf4_with_codes(W, decode, restored);
  const bool grouped = kern.gemv_rows_grouped && nf4_gemv_grouped_supported(Wc);
  if (M <= (grouped ? kGroupedGemvMaxRows : kGemvMaxRows) && Wc.rows_group_aligned()) {
    gemv(kern, x, M, Wc, bias, y);
    add_extra_rows();
    return;
  }
  gemm(kern, x, M, Wc.rows, Wc.cols, NF4Source{kern, Wc}, bias, y, extra);
}

void nf4_matmul_t(const float* dy, int64_t M, const NF4Matrix& W, float* dx, bool accumulate,
                  const LowRankTerm* extra, const NF4DecodeLayout* decode) {
  W.validate(/*need_packed=*/!decode);
  ECOM_CHECK_ARG(M > 0, "nf4 matmul_t: dy has no rows");
  AlignedBuffer restored;  // as in nf4_matmul
  const NF4Matrix Wc = nf4_with_codes(W, decode, restored);
  const NF4Kernels& kern = nf4_kernels();
  gemm_t(kern, dy, M, Wc.rows, Wc.cols, NF4Source{kern, Wc}, dx, accumulate, extra);
}

namespace {
void check_dense(const void* W, int64_t M, int64_t N, int64_t K, const char* what) {
  ECOM_CHECK_ARG(W != nullptr, what, ": the weight is null");
  ECOM_CHECK_ARG(M > 0 && N > 0 && K > 0, what, ": sizes must be positive, got M=", M, " N=", N, " K=", K);
}
}  // namespace

void f32_matmul(const float* x, int64_t M, const float* W, int64_t N, int64_t K, float* y,
                const LowRankOutput* extra) {
  check_dense(W, M, N, K, "f32 matmul");
  gemm(nf4_kernels(), x, M, N, K, F32Source{W, N, K, true}, nullptr, y, extra);
}

void f32_matmul_t(const float* dy, int64_t M, const float* W, int64_t N, int64_t K, float* dx, bool accumulate,
                  const LowRankTerm* extra) {
  check_dense(W, M, N, K, "f32 matmul_t");
  gemm_t(nf4_kernels(), dy, M, N, K, F32Source{W, N, K, false}, dx, accumulate, extra);
}

void bf16_matmul(const float* x, int64_t M, const uint16_t* W, int64_t N, int64_t K, float* y,
                 const LowRankOutput* extra) {
  check_dense(W, M, N, K, "bf16 matmul");
  gemm(nf4_kernels(), x, M, N, K, BF16Source{W, N, K}, nullptr, y, extra);
}

void bf16_matmul_t(const float* dy, int64_t M, const uint16_t* W, int64_t N, int64_t K, float* dx, bool accumulate,
                   const LowRankTerm* extra) {
  check_dense(W, M, N, K, "bf16 matmul_t");
  gemm_t(nf4_kernels(), dy, M, N, K, BF16Source{W, N, K}, dx, accumulate, extra);
}

}  // namespace ecomllm::quant
