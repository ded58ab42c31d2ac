// fp32-accurate products on Intel AMX (AMX-BF16 tiles), for the tiled NF4 / fp32 / bf16 GEMM drivers.
//
// AMX multiplies bf16 pairs into fp32 accumulators, ~14x the fp32 FMA rate of AVX-512 on a
// Sapphire Rapids core. To keep fp32 accuracy ("bf16x3", as in FP32 emulation on matrix engines),
// every fp32 operand v is split into three bf16 planes, v = p0 + p1 + p2 exactly up to ~2^-27 |v|:
//   p0 = bf16(v), p1 = bf16(v - p0), p2 = bf16(v - p0 - p1)      (each subtraction exact in fp32)
// (|p1| <= 2^-9 |v|, |p2| <= 2^-18 |v|) and a product keeps the six cross terms down to ~2^-18:
//   a b ~ a0 b0 + a0 b1 + a1 b0 + a0 b2 + a1 b1 + a2 b0
// (the dropped terms are below ~2^-26 relative, under fp32's own rounding of 2^-24). Accumulation is
// fp32 in the tiles. Inputs must be finite and below ~3.38e38 (bf16's largest finite value), and
// values below ~1e-33 lose their low planes (the tiles treat bf16 denormals as zero).
//
// Layouts (uint16 = bf16 bits; one tile = 16 rows x 64 bytes = 512 bf16), with P = 1..3 planes
// (fewer planes: lower precision, see set_fp32_matmul_precision):
//   A panel of 16 rows over `steps` x 32 reduction columns: [steps][P planes][16 rows][32]
//   B panel of 32 output columns over `steps` x 32 reduction rows, AMX's pair-interleaved
//   ("VNNI") layout: [steps][P planes][2 column tiles][16 reduction pairs][16 columns][2]
// The functions here are compiled with AMX/AVX512-BF16 flags (amx_tiles_amx.cpp): call them only
// when amx_usable() is true.
#pragma once

#include <cstdint>

namespace ecomllm::quant {

constexpr int64_t kAmxStep = 32;       // reduction elements per tile step
constexpr int64_t kAmxTileElems = 512;  // bf16 per tile (16 x 32)
// One panel step holds `planes` planes (below): A 1 tile each, B 2 tiles each.
constexpr int64_t amx_a_step_elems(int planes) { return planes * kAmxTileElems; }
constexpr int64_t amx_b_step_elems(int planes) { return planes * 2 * kAmxTileElems; }

// How many bf16 planes each fp32 operand keeps, i.e. the precision of the AMX products, after
// torch.set_float32_matmul_precision's names:
//   "highest" (default): 3 planes, 6 cross products: fp32 accuracy (~1e-7 relative per product);
//   "high": 2 planes, 3 products (a0 b0 + a0 b1 + a1 b0): ~2^-16 (~1.5e-5) relative per product, 2x faster;
//   "medium": 1 plane, 1 product: plain bf16 inputs with fp32 accumulation, ~2^-8 (~4e-3) relative
//            per product -- the usual QLoRA compute dtype (bnb_4bit_compute_dtype=bfloat16) -- ~5x faster.
// Read when a product starts; the environment variable ECOMLLM_MATMUL_PRECISION sets the start
// value. The AMX path reads it, and at "medium" the AVX512-BF16 pair kernels (quant/bf16_pairs.h)
// take the tiled products AMX does not; elsewhere products are always fp32.
void set_fp32_matmul_precision(const char* name);  // ValueError on other names
const char* fp32_matmul_precision();
int amx_planes();  // 3, 2 or 1

// True where the CPU has AMX-TILE + AMX-BF16 + AVX512-BF16, the OS saves tile state and granted
// this process the tile data permission (Linux arch_prctl, asked once), the active SIMD level is
// AVX-512, and AMX is enabled (ECOMLLM_AMX=0 in the environment or set_amx_enabled(false) turn
// it off, e.g. to compare against the AVX-512 kernels).
bool amx_usable();
bool amx_supported();  // the hardware / OS part of amx_usable()
void set_amx_enabled(bool enabled);
bool amx_enabled();

// A panel: rows i < mv of a (row stride lda), reduction columns [0, red) of them; rows mv..15
// and columns red .. steps * 32 are zero.
void amx_pack_a(const float* a, int64_t lda, int mv, int64_t red, int64_t steps, int planes, uint16_t* out);
// B panel from W stored output-column-major (the forward's W rows): B[r][j] = w[j * ldw + r] for
// j < nv output columns, r < red; zero elsewhere.
void amx_pack_b_rows(const float* w, int64_t ldw, int nv, int64_t red, int64_t steps, int planes, uint16_t* out);
// B panel from W stored reduction-row-major (the backward's W): B[r][j] = w[r * ldw + j] for
// r < red, j < nv; zero elsewhere.
void amx_pack_b_cols(const float* w, int64_t ldw, int64_t red, int nv, int64_t steps, int planes, uint16_t* out);
// Loads the tile configuration amx_block uses (8 tiles of 16 rows x 64 bytes) on this thread. Call
// it at the start of each task that runs amx_block: other code on the thread (another library's
// AMX kernels) may have configured the tiles differently in between. LDTILECFG per block cost ~7%.
void amx_configure();
// A run of steps whose B panel keeps b_planes (<= planes) planes per step: 1 where B is exactly
// bf16 (bf16 weights), whose lower planes would be zeros -- half the products at 3 planes.
struct AmxRun {
  int64_t steps;
  int b_planes;
};
// c[32 x 32] block (+)= [A panel a0; A panel a1] x B panel over the runs' steps, A with `planes`
// planes per step; per step the cross products a_i b_j with i + j < planes (3 planes and 3 B
// planes: six). Only rows < mv and columns < nv of c (row stride ldc) are read or written. Needs
// amx_configure() on this thread.
void amx_block(const uint16_t* a0, const uint16_t* a1, const uint16_t* b, const AmxRun* runs, int nruns, int planes,
               float* c, int64_t ldc, int mv, int nv, bool accumulate);

}  // namespace ecomllm::quant
