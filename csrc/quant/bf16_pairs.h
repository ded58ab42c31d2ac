// The "medium" matmul precision (set_fp32_matmul_precision, quant/amx_tiles.h) on AVX-512 CPUs
// with AVX512-BF16 but no usable AMX (Zen 4, Cooper Lake; Sapphire Rapids below AMX's 32 rows):
// the tiled drivers round both operands to bf16 and multiply them with VDPBF16PS, which takes 32
// bf16 pairs per instruction at the FMA's rate (2x its products), accumulating in fp32. The same
// products as AMX at "medium": bf16(a) * bf16(b), fp32 sums (QLoRA's bnb_4bit_compute_dtype=bf16).
//
// Pair layouts (uint32 = two bf16, the even reduction index in the low half, as VDPBF16PS pairs them):
//   x panel (forward):   [ceil(K / 2)][kBf16GemmMR]  pair (x[i][2p], x[i][2p + 1]) of row i
//   W panel (forward):   [ceil(kc / 2)][kBf16GemmNR] pair (W[j][2p], W[j][2p + 1]) of W row j
//   dy panel (backward): [ceil(N / 2)][kBf16GemmTMR] pair (dy[i][2p], dy[i][2p + 1]) of row i
//   W tile (backward):   [ceil(nc / 2)][ldo]         pair (W[2p][k], W[2p + 1][k]) of column k
// An odd count's last pair holds a zero high half. Rounding is to nearest even, as VCVTNE2PS2BF16
// does; it treats denormal inputs as zero. Compiled with AVX512-BF16 (bf16_pairs_avx512bf16.cpp):
// call only where bf16_pair_products() is true.
#pragma once

#include <cstdint>

namespace ecomllm::quant {

constexpr int kBf16GemmMR = 12;   // forward micro-tile: x rows (as the AVX-512 fp32 kernel's)
constexpr int kBf16GemmNR = 32;   // forward micro-tile: W rows
constexpr int kBf16GemmTMR = 14;  // backward micro-tile: dy rows
constexpr int kBf16GemmTKR = 32;  // backward micro-tile: dx columns

// True where the active SIMD level is AVX-512 and the CPU has AVX512-BF16: the pair kernels can run.
bool bf16_pair_products_available();
// True when they are available and the precision is "medium": the tiled drivers then use the pair
// kernels below (AMX keeps its own path for the products it takes).
bool bf16_pair_products();

// x (forward) or dy (backward) panel: rows i < mv of a (row stride lda) over columns [0, cols)
// -> panel [ceil(cols / 2)][mr] of pairs (rows mv .. mr - 1 zero); mr <= 16.
void bf16_pack_pair_panel(const float* a, int64_t lda, int64_t cols, int mv, int mr, uint32_t* panel);
// Forward W panel from W rows: rows [kBf16GemmNR][ld] fp32, columns [0, kc) -> panel [ceil(kc / 2)][kBf16GemmNR]
// pairs (one pass: rounding, then 16 x 16 transposes of pairs; no fp32 panel in between).
void bf16_pack_pair_panel_rows(const float* rows, int64_t ld, int64_t kc, uint32_t* panel);
// Forward W panel, in place (for panel sources that write fp32 panels themselves): fp32 [kc][kBf16GemmNR] -> pairs [ceil(kc / 2)][kBf16GemmNR] in the
// same buffer (pair row p overwrites fp32 row p after rows 2p and 2p + 1 are read).
void bf16_pair_panel_in_place(float* panel, int64_t kc);
// Forward micro-kernel: y[i * ldy + j] (+)= sum_p dot(xp[p][i], wp[p][j]) for i < mv, j < nv.
void bf16_gemm_tile(int64_t pairs, const uint32_t* xp, const uint32_t* wp, float* y, int64_t ldy, int mv, int nv,
                    bool accumulate);
// Backward W tile: w [nc][ldw] fp32, columns [0, kw) -> out [ceil(nc / 2)][ldo] pairs of
// consecutive rows (columns past kw neither read nor written).
void bf16_pair_tile_rows(const float* w, int64_t ldw, int64_t nc, int64_t kw, uint32_t* out, int64_t ldo);
// The same backward W tile straight from NF4 codes in bitsandbytes' layout: rows [n0, n0 + nc) x
// columns [k0, k0 + kw) of dequant(W) -> out as above, bit for bit what dequantizing into an fp32
// tile and bf16_pair_tile_rows give (code * block scale in fp32, then rounded), in one pass.
// Needs W.cols % 32 == 0, k0 % 32 == 0, kw % 32 == 0, kw <= 1024 and n0 + nc <= W.rows (bf16_pair_tile_nf4_fits).
struct NF4Matrix;
bool bf16_pair_tile_nf4_fits(const NF4Matrix& W, int64_t n0, int64_t nc, int64_t k0, int64_t kw);
void bf16_pair_tile_nf4(const NF4Matrix& W, int64_t n0, int64_t nc, int64_t k0, int64_t kw, uint32_t* out,
                        int64_t ldo);
// Backward micro-kernel: dx[i * ldx + k] (+)= sum_p dot(dyp[p][i], wp[p * ldw + k]) for i < mv,
// k < kv, p < pairs; dyp a dy panel [pairs][kBf16GemmTMR].
void bf16_gemm_t_tile(int64_t pairs, const uint32_t* dyp, const uint32_t* wp, int64_t ldw, float* dx, int64_t ldx,
                      int mv, int kv, bool accumulate);

}  // namespace ecomllm::quant
