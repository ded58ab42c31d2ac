// Fused NF4 matrix products. The weight W[N, K] stays 4-bit; kernels decode it block by block into
// registers (M small) or into a small per-thread tile (M large) and never materialise all of it.
//
//   nf4_matmul   : y[M, N]  = x[M, K] @ dequant(W)^T (+ bias[N])     (forward, fp32 accumulation)
//   nf4_matmul_t : dx[M, K] = dy[M, N] @ dequant(W)                   (backward w.r.t. the input)
//
// Each SIMD level (scalar reference, AVX2+FMA, AVX-512) provides the same leaf kernels; the level
// is picked at run time from base/cpu_features.h.
#pragma once

#include <cstdint>

#include "base/cpu_features.h"

namespace ecomllm::quant {

// A read-only view of an NF4 weight W[rows = N, cols = K] in bitsandbytes layout (see nf4.h).
// Exactly one of `absmax` (plain) or `qabsmax` (+ nested_absmax, nested_code, offset) is set.
struct NF4Matrix {
  int64_t rows = 0;       // N (out_features)
  int64_t cols = 0;       // K (in_features)
  int64_t blocksize = 64;
  const uint8_t* packed = nullptr;       // [(N*K+1)/2]
  const float* code = nullptr;           // [16] NF4 values (the file's quant_map)
  const float* absmax = nullptr;         // [nblocks] fp32 scales, or nullptr when double-quantized
  const uint8_t* qabsmax = nullptr;      // [nblocks] 8-bit scale codes (double quantization)
  const float* nested_absmax = nullptr;  // [ceil(nblocks/256)]
  const float* nested_code = nullptr;    // [256]
  float offset = 0.0f;

  int64_t numel() const { return rows * cols; }
  int64_t num_blocks() const { return (numel() + blocksize - 1) / blocksize; }
  // True when every row starts on a 32-element boundary. Then a group of 32 consecutive elements
  // of a row never straddles a byte or a block (blocksizes are multiples of 32): the SIMD fast
  // paths decode whole groups and need this.
  bool rows_group_aligned() const { return cols % 32 == 0; }
  // Writes the fp32 scales of blocks [b0, b1) to out[0 .. b1-b0).
  void block_scales(int64_t b0, int64_t b1, float* out) const;
  // Throws ValueError if the pointers or sizes are inconsistent. need_packed = false: `packed` may
  // be null (its owner keeps the codes in a decode layout instead, quant/nf4_decode_layout.h).
  void validate(bool need_packed = true) const;
  // Whether `code` is set and every code-book value lies in [-1, 1] (NaN fails), as NF4's do: the
  // integer kernels (q16, the decode layout's tables) size their digits for |code| <= 1, and a
  // file's quant_map may hold anything.
  bool code_within_unit() const {
    if (!code) return false;
    for (int c = 0; c < 16; ++c)
      if (!(code[c] >= -1.0f && code[c] <= 1.0f)) return false;
    return true;
  }
};

// Leaf kernels of one SIMD level. All ranges are half-open; all matrices are row-major.
struct NF4Kernels {
  SimdLevel level;
  // Vector width in floats of the GEMM micro-kernels (along M for forward, along K for backward).
  int gemm_mr;  // forward: rows of x per micro-tile (a multiple of the vector width)
  int gemm_nr;  // forward: rows of W per micro-tile
  int gemm_t_mr;  // backward: rows of dy per micro-tile
  int gemm_t_kr;  // backward: columns of dx per micro-tile

  // y[n] = dot(W[n, :], x) (+ bias[n]) for n in [n0, n1). Needs W.rows_group_aligned().
  // x is split into x_even[K/2] (x[0], x[2], ...) and x_odd[K/2] to match the nibble order.
  void (*gemv_rows)(const NF4Matrix& W, const float* x_even, const float* x_odd, const float* bias, int64_t n0,
                    int64_t n1, float* y);
  // out[(n - n0) * ldo + (k - k0)] = dequant(W)[n, k] for n in [n0, n1), k in [k0, k1).
  void (*dequant_tile)(const NF4Matrix& W, int64_t n0, int64_t n1, int64_t k0, int64_t k1, float* out, int64_t ldo);
  // Forward micro-kernel: for i < mv, j < nv:
  //   y[i * ldy + j] (+)= sum_k xp[k * gemm_mr + i] * wp[k * gemm_nr + j],  k in [0, kc)
  // xp is a packed x panel [kc][gemm_mr] (zero-padded rows), wp a packed W panel [kc][gemm_nr]
  // (gemm_nr rows of W side by side per k, zero-padded): both are read as one contiguous stream.
  void (*gemm_tile)(int64_t kc, const float* xp, const float* wp, float* y, int64_t ldy, int mv, int nv,
                    bool accumulate);
  // Backward micro-kernel: for i < mv, k < kv:
  //   dx[i * ldx + k] (+)= sum_n dyp[n * gemm_t_mr + i] * w[n * ldw + k],  n in [0, nc)
  // dyp a panel of gemm_t_mr rows of dy packed along n (rows past mv zero).
  void (*gemm_t_tile)(int64_t nc, const float* dyp, const float* w, int64_t ldw, float* dx, int64_t ldx, int mv,
                      int kv, bool accumulate);
  // Forward W panel: panel[k * gemm_nr + j] = rows[j * ld + k] for j < gemm_nr, k < kc.
  void (*pack_panel)(const float* rows, int64_t ld, int64_t kc, float* panel);
  // Forward x panel: panel[k * gemm_mr + i] = x[i * K + k] for i < mv (0 for mv <= i < gemm_mr).
  void (*pack_x_panel)(const float* x, int64_t K, int mv, float* panel);
  // Optional (null where the level has none): y[n] = dot(W[n, :], x) (+ bias[n]) for n in [n0, n1)
  // over 128-weight groups, x in group order (gemv_group_position). Needs nf4_gemv_grouped_supported(W).
  void (*gemv_rows_grouped)(const NF4Matrix& W, const float* xg, const float* bias, int64_t n0, int64_t n1, float* y);
};

// The grouped M = 1 kernel reads a row as 64-byte groups of 128 weights whose halves of 64 each lie
// in one absmax block: in_features % 128 == 0 and blocksize % 64 == 0.
inline bool nf4_gemv_grouped_supported(const NF4Matrix& W) { return W.cols % 128 == 0 && W.blocksize % 64 == 0; }
// Position of element e (0..127) of a group in the grouped kernel's x order: dword lane e / 8 of the
// group's 64 bytes holds elements 8 (e / 8) .. + 7, and shifting it right by 4 j bits brings
// element j ^ 1 of those 8 (high nibble first) to the low bits, so x vector j holds them.
constexpr int64_t gemv_group_position(int64_t e) { return ((e % 8) ^ 1) * 16 + e / 8; }
void gemv_rows_grouped_avx512(const NF4Matrix& W, const float* xg, const float* bias, int64_t n0, int64_t n1,
                              float* y);

// How the AVX-512 M = 1 kernels decode double-quantized block scales: with two vector gathers
// per 16 blocks, or (true) with register permutes of the 256-entry map. Same values either way.
// Default: permutes on AMD (a 16-lane gather costs ~22 cycles on Zen 4; the whole exact kernel
// measured +20%), gathers elsewhere (measured better than a table variant on Sapphire Rapids; the
// permutes were not measured there). The setter is for tests and A/B runs (not thread-safe against
// running kernels).
bool nf4_scale_lookup_by_permutes();
void set_nf4_scale_lookup_by_permutes(bool on);

const NF4Kernels& nf4_kernels_scalar();
const NF4Kernels& nf4_kernels_avx2();
const NF4Kernels& nf4_kernels_avx512();
// The kernels of the active SIMD level.
const NF4Kernels& nf4_kernels();

// A low-rank term the forward products add in the same pass over y: y += scale * u b^T with
// u[M, r] and b[N, r] fp32 row-major (LoRA's scale * (x A^T) B^T, u = x A^T), instead of a
// separate thin GEMM that reads and writes all of y again. The tiled drivers treat it as r more
// reduction steps per tile of y, run while the tile is still in cache.
struct LowRankOutput {
  const float* u = nullptr;
  const float* b = nullptr;
  int64_t r = 0;
  float scale = 1.0f;
};

struct NF4DecodeLayout;  // quant/nf4_decode_layout.h

// y[M, N] = x[M, K] @ dequant(W)^T + bias (+ extra's term; bias and extra may be null). x, y fp32
// row-major. `decode`, W's decode layout if it has one, takes the few rows of token-by-token
// decoding where its kernel runs (nf4_decode_matmul); it must have been built from W. W.packed
// may be null when `decode` is given (an owner that keeps only the decode layout): the other
// paths then read codes restored from it for the call (nf4_with_codes).
void nf4_matmul(const float* x, int64_t M, const NF4Matrix& W, const float* bias, float* y,
                const LowRankOutput* extra = nullptr, const NF4DecodeLayout* decode = nullptr);
// A low-rank term the backward products can add in the same pass over dx: dx += g A with
// g[M, r] and A[r, K] fp32 row-major (LoRA's input gradient), instead of a separate GEMM that
// reads and writes all of dx again.
struct LowRankTerm {
  const float* g = nullptr;
  const float* a = nullptr;
  int64_t r = 0;
};

// dx[M, K] = dy[M, N] @ dequant(W) (accumulate: dx += ...) (+ extra->g extra->a). fp32 row-major.
// W.packed may be null when `decode` holds W's codes (as for nf4_matmul).
void nf4_matmul_t(const float* dy, int64_t M, const NF4Matrix& W, float* dx, bool accumulate = false,
                  const LowRankTerm* extra = nullptr, const NF4DecodeLayout* decode = nullptr);

// Dense weights W[N, K] (row-major fp32, or bf16 bit patterns) through the same drivers and
// micro-kernels: fp32 tiles are read in place, bf16 tiles widened per tile. For M in the tens and
// up (training, prefill); below that BLAS gemv is the better call.
//   y[M, N] = x[M, K] W^T          dx[M, K] (+)= dy[M, N] W
void f32_matmul(const float* x, int64_t M, const float* W, int64_t N, int64_t K, float* y,
                const LowRankOutput* extra = nullptr);
void f32_matmul_t(const float* dy, int64_t M, const float* W, int64_t N, int64_t K, float* dx, bool accumulate,
                  const LowRankTerm* extra = nullptr);
void bf16_matmul(const float* x, int64_t M, const uint16_t* W, int64_t N, int64_t K, float* y,
                 const LowRankOutput* extra = nullptr);
void bf16_matmul_t(const float* dy, int64_t M, const uint16_t* W, int64_t N, int64_t K, float* dx, bool accumulate,
                   const LowRankTerm* extra = nullptr);

}  // namespace ecomllm::quant
