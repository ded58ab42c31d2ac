// An NF4 matrix's codes (and block scales) laid out for the product-table kernels: exact (~3e-7 of
// fp32 dequantize-then-matmul) token-by-token decoding at close to memory speed, ~4.13 bits per
// weight (8-bit scale codes, DecodeScales::kU8) or 4.5 (fp32 scales). Two kernels, each with its own byte order (DecodeLayoutKind): AVX-512 with VBMI and VNNI
// (64-entry vpermb tables, digit sums by vpdpbusd), and AVX2 (16-entry vpshufb tables per 128-bit
// lane, digit sums in 16-bit lanes). Its owner keeps it as a second copy of the codes or,
// releasing bitsandbytes' packed codes, as the only one (nf4_restore_packed gives them back).
// The forward GEMM also reads its W panels from it (nf4_decode_panel, nf4_decode_panel_avx2).
//
// Why a layout of its own: a table kernel looks products up a register at a time with one table
// per 64 bytes (VBMI) or per 16 bytes (AVX2), so a load must hold the same few columns of many
// rows; bitsandbytes' row-major layout holds 128 columns of one row. Transposing on the fly costs
// as much as the lookups (benchmarks/probes/nf4_table_gemv_bnb_layout.cpp). Streaming the copy
// from DRAM measured 1.6-1.9x the default kernel and 1.1-1.3x bitsandbytes' bf16 one on a 2-core
// Zen 4 (benchmarks/README.md has the figures).
//
// Layout, for rows in "supergroups" of 64 (the last one zero-padded), one contiguous run of
// segment_bytes() per supergroup and 64-column segment, so that one prefetch stream covers codes and
// scales (a separate scale stream measured a few % slower). Segments go in blocks of `block`
// supergroups (kVbmi: kVbmiSegmentBlock = 8, the last block shorter; kAvx2: 1), segment-major within
// a block: (g, s) at NF4DecodeLayout::segment_offset. The kVbmi walk takes segment s of each of a
// block's supergroups in turn, a contiguous stream whose segment tables stay in L1 (Zen 4, 4096 x
// 4096: cache-hot +3-8%, streamed +1-3% against supergroup-major; benchmarks/README.md). A segment holds 2048 bytes of codes
// (64 rows x 8 "octets" of 8 columns, 4 bytes per row and octet) and then the rows' 64 block scales:
// fp32 (DecodeScales::kF32: double quantization undone as dequantize() does; 0 for padding rows),
// or, in a kVbmi layout of a double-quantized W, their 8-bit codes (kU8: see DecodeScales). Row 64 g + 16 r + j
// (chunk r, j < 16), byte i < 4 of its dword for octet o = byte 4 (8 s + o) + i of the row in
// bitsandbytes' layout (high nibble: column 8 (8 s + o) + 2 i, low nibble: the next column):
//   kVbmi: codes at o * 256 + 64 r + 4 j + i (a 64-byte chunk: 16 rows x 4 dwords);
//          scale at 4 (16 r + j) (kF32), its 8-bit code at u8_scale_slot(16 r + j) (kU8).
//   kAvx2: codes at 512 r + 64 o + 16 i + j (a 128-bit lane: one column pair of 16 rows; a chunk's
//          8 octets contiguous, so that its 16-row accumulators finish before the next chunk);
//          scale at 4 (16 r + p) with p = avx2_scale_slot(j), the order the kernel's sums come out in.
// The x side: per call, for every column k and code c, q = round(code[c] * x[k] * kQMax / xmax),
// xmax = max |x| over k's segment, as byte digits in lookup tables (nf4_build_product_tables; the
// AVX2 kernel's in nf4_decode_layout_avx2.cpp); digit sums are combined exactly in int32 every 64
// columns, so both kinds give bit-identical results.
#pragma once

#include <algorithm>
#include <cstdint>

#include "base/buffer.h"
#include "quant/nf4_matmul.h"

namespace ecomllm::quant {

constexpr int64_t kDecodeRows = 64;             // rows per supergroup
constexpr int64_t kSegmentCodeBytes = 8 * 4 * 64;  // 8 octets x 4 chunks of 16 rows
constexpr int64_t kSegmentBytes = kSegmentCodeBytes + kDecodeRows * 4;     // + 64 fp32 scales (kF32)
constexpr int64_t kSegmentBytesU8 = kSegmentCodeBytes + kDecodeRows;       // + 64 scale codes (kU8)
// Products are looked up as signed-byte digits: 3 for the exact kernel (24-bit products, ~6e-7
// of max |y|), 2 for int16 activations (16-bit products, ~6e-5: activations="int16").
constexpr int kTableDigitsExact = 3;
constexpr int kTableDigitsInt16 = 2;
constexpr int64_t kTableBytesPerOctet = 384;    // VBMI: at most 3 digits x 2 nibbles x 64 bytes
constexpr int64_t kAvx2TableBytesPerOctet = 512;  // AVX2: 4 six-bit digits x 8 columns x 16 bytes
// Largest |q| for `digits` digits, 2^(8 d - 1) - 2^(8 d - 8) (2^23 - 2^16 for 3): the top digit
// stays within int8.
constexpr float table_qmax(int digits) { return digits == kTableDigitsExact ? 8323072.0f : 32512.0f; }
constexpr float kMinSegmentMax = 0x1p-100f;      // smallest non-zero segment max |x| the tables take

// Which kernel a layout's byte order serves (see above); sizes are the same.
enum class DecodeLayoutKind : uint8_t { kVbmi, kAvx2 };
// Output position p of row j of a 16-row chunk in the AVX2 kernel's sums (rows 0, 2, 4, 6, 1, 3, 5,
// 7, then 8-15 alike): p = 8 (j / 8) + 4 (j % 2) + (j % 8) / 2.
constexpr int64_t avx2_scale_slot(int64_t j) { return 8 * (j / 8) + 4 * (j % 2) + (j % 8) / 2; }

// How a layout holds its block scales. kF32: as fp32 values, 4.5 bits per weight in all. kU8 (a
// kVbmi layout of a double-quantized W, where nf4_decode_scales_u8_supported): as the 8-bit codes
// of double quantization, ~4.13 bits per weight as bitsandbytes' own state, so a memory-bound walk
// reads 8% fewer bytes. The layout then keeps the second level (nested absmax, the 256-entry map as
// 4 byte planes, the offset) and the kernels undo it as dequantize() does, code * nested then +
// offset in two fp32 roundings: the same scales, so the same bits as kF32. The walk looks the 64
// codes of a segment up in the byte planes (8 two-table byte permutes) and interleaves the planes
// into fp32 with 8 unpacks; for that, the code of row j (< 64) lies at byte u8_scale_slot(j) of
// the segment's 64, so that the unpacks leave rows 16 r .. 16 r + 15 in order in vector r. A row's
// nested scale comes from a 32-entry window of the nested absmax with one permute per 16 rows.
enum class DecodeScales : uint8_t { kF32, kU8 };
constexpr int64_t u8_scale_slot(int64_t j) { return 16 * ((j % 16) / 4) + 4 * (j / 16) + j % 4; }
// Entries of the nested absmax one 16-row permute reaches (nf4_decode_scales_u8_supported).
constexpr int64_t kNestedWindow = 32;

// Software prefetch distance of the walks in their stream (T1: to L2 and up), one line per line
// read. Measured on Zen 4 streaming 1 GiB of 4096 x 4096 weights with 2 threads: 16-32 KiB best,
// 8 KiB -15%; T1 a few % faster than T2; T0 4 KiB ahead -30% (one core keeps few L1 misses in
// flight). nf4_decode_matmul prefetches the first this many bytes of each thread's walk before it
// builds the tables.
constexpr int64_t kDecodePrefetchBytes = 16384;
// Supergroups per block of a kVbmi layout (kAvx2: 1): 8 segments (8 x 2112 or 2304 bytes) between
// two uses of a segment's x tables, which stay in L1.
constexpr int64_t kVbmiSegmentBlock = 8;

struct NF4DecodeLayout {
  int64_t rows = 0, cols = 0, supergroups = 0;
  DecodeLayoutKind kind = DecodeLayoutKind::kVbmi;
  int64_t block = 1;   // supergroups per block of the segment order (above)
  DecodeScales scales = DecodeScales::kF32;
  AlignedBuffer data;  // supergroups * cols / 64 * segment_bytes()
  // kU8 only, the second level of double quantization: nested absmax [ceil(blocks / 256)], then
  // zeros up to the padded rows' windows and kNestedWindow past them (a window may start at the
  // last entry); the map's byte planes [4][256]
  // (byte p of map[c] at 256 p + c, little-endian); the offset; and nested_shift =
  // log2(blocksize * 256): element (n, k)'s nested scale is nested[(n * cols + k) >> nested_shift].
  AlignedBuffer nested, map_planes;
  float offset = 0.0f;
  int nested_shift = 0;
  int64_t nbytes() const { return static_cast<int64_t>(data.size() + nested.size() + map_planes.size()); }
  int64_t segment_bytes() const { return scales == DecodeScales::kU8 ? kSegmentBytesU8 : kSegmentBytes; }
  // Byte offset of segment s of supergroup g: blocks of `block` supergroups (the last one may be
  // shorter), each segment-major.
  int64_t segment_offset(int64_t g, int64_t s) const {
    const int64_t first = g / block * block, in_block = std::min(block, supergroups - first);
    return (first * (cols / 64) + s * in_block + (g - first)) * segment_bytes();
  }
  const uint8_t* segment(int64_t g, int64_t s) const { return data.as<uint8_t>() + segment_offset(g, s); }
};

// cols % 64 == 0 and blocksize % 64 == 0 (a 64-column segment of a row lies in one block), and
// every code-book value in [-1, 1] (NF4Matrix::code_within_unit; other code books take the other
// kernels).
inline bool nf4_decode_layout_supported(const NF4Matrix& W) {
  return W.cols % 64 == 0 && W.blocksize % 64 == 0 && W.code_within_unit();
}
// Whether this CPU, at the active SIMD level, runs the kernel of `kind`: kVbmi at the AVX-512 level
// with VBMI and VNNI present, kAvx2 at the AVX2 level.
bool nf4_decode_kernel_available(DecodeLayoutKind kind);
// The kind decoded with here, if any: kVbmi or kAvx2 as above. None at the scalar level, and none
// at the AVX-512 level without VBMI/VNNI, where the default AVX-512 kernel should be the faster
// (~25 512-bit ops per 128 weights against ~64 256-bit instructions for the AVX2 one; not measured).
bool nf4_decode_kind_here(DecodeLayoutKind* kind);
// Whether a decode layout of W would be used here; if so, *kind (when given) is the one to build.
inline bool nf4_decode_layout_useful(const NF4Matrix& W, DecodeLayoutKind* kind = nullptr) {
  DecodeLayoutKind here;
  if (!nf4_decode_layout_supported(W) || !nf4_decode_kind_here(&here)) return false;
  if (kind) *kind = here;
  return true;
}

// Whether a kVbmi layout of W may hold 8-bit scale codes (kU8): W is double-quantized and a
// 16-row chunk's nested scales lie within one window of kNestedWindow entries (the rows of a
// chunk span 15 * cols + 1 elements; at blocksize 64 cols up to ~33000), with element offsets in
// int32 lanes.
bool nf4_decode_scales_u8_supported(const NF4Matrix& W);

// The repacked copy of W for `kind` (multi-threaded): kU8 scales where kind is kVbmi and
// nf4_decode_scales_u8_supported(W), else kF32; or the `scales` asked for (ValueError when kU8 is
// not supported). ValueError unless nf4_decode_layout_supported(W).
NF4DecodeLayout nf4_build_decode_layout(const NF4Matrix& W, DecodeLayoutKind kind);
NF4DecodeLayout nf4_build_decode_layout(const NF4Matrix& W, DecodeLayoutKind kind, DecodeScales scales);
// ... for the kind decoded with here (kVbmi where there is none).
NF4DecodeLayout nf4_build_decode_layout(const NF4Matrix& W);
// The exact inverse of the repacking: bitsandbytes' packed codes [rows * cols / 2] from L
// (multi-threaded). For weights whose owner released its packed codes (compact decoding).
void nf4_restore_packed(const NF4DecodeLayout& L, uint8_t* packed);
// W itself when it holds its packed codes; else W over codes restored from `decode` into
// `storage` (a transient copy, rows * cols / 2 bytes), for the paths that read bitsandbytes'
// layout. ValueError when W has neither codes nor a decode layout of its shape.
NF4Matrix nf4_with_codes(const NF4Matrix& W, const NF4DecodeLayout* decode, AlignedBuffer& storage);

// y[M, N] = x[M, K] @ dequant(W)^T (+ bias) from the copy, for the few rows of x of token-by-token
// decoding (kVbmi: passes over the codes of up to kDecodeRowsPerPass rows each, nf4_decode_rows_multi;
// kAvx2: one pass per row). Returns false, computing nothing, when the
// kernel of L.kind does not run here or a row of x holds inf/NaN or a segment so small (0 < max|x| <
// 2^-100) that its scale would be a denormal: the caller then uses nf4_matmul. digits:
// kTableDigitsExact, or kTableDigitsInt16 for the int16-activation product (nf4_matmul_int16); the
// AVX2 kernel always computes the exact product (it has no 16-bit variant).
bool nf4_decode_matmul(const NF4DecodeLayout& L, const float* code, const float* x, int64_t M, const float* bias,
                       float* y, int digits = kTableDigitsExact);

// Kernel pieces (nf4_decode_layout_avx512vbmi.cpp). Whether one row of x [K] meets the tables'
// preconditions: finite, and every 64-element segment's max |x| either 0 or >= kMinSegmentMax.
bool nf4_product_tables_usable(const float* x, int64_t K);
// tables [K / 8 * digits * 128] and xscale [K / 64] for segments [s0, s1) of x; x must meet the
// preconditions above.
void nf4_build_product_tables(const float* code, const float* x, int64_t K, int64_t s0, int64_t s1, int8_t* tables,
                              float* xscale, int digits);
// y[64 g ..] for supergroups [g0, g1) (rows past L.rows are not written), from tables of `digits`.
void nf4_decode_rows(const NF4DecodeLayout& L, const int8_t* tables, const float* xscale, const float* bias,
                     int64_t g0, int64_t g1, float* y, int digits);
// The same for `rows` (2 to kDecodeRowsPerPass) rows of x in one pass over the layout: tables[m],
// xscale[m] as built for row m, output row m to y[m]. Each row's result has the bits
// nf4_decode_rows gives it; the codes stream once for all.
constexpr int kDecodeRowsPerPass = 4;
void nf4_decode_rows_multi(const NF4DecodeLayout& L, const int8_t* const* tables, const float* const* xscale,
                           const float* bias, int64_t g0, int64_t g1, float* const* y, int rows, int digits);
// AVX2 counterparts (nf4_decode_layout_avx2.cpp): the same checks; tables [K / 8 *
// kAvx2TableBytesPerOctet] of four 6-bit digits per product; rows of a kAvx2 layout.
bool nf4_product_tables_usable_avx2(const float* x, int64_t K);
void nf4_build_product_tables_avx2(const float* code, const float* x, int64_t K, int64_t s0, int64_t s1,
                                   uint8_t* tables, float* xscale);
void nf4_decode_rows_avx2(const NF4DecodeLayout& L, const uint8_t* tables, const float* xscale, const float* bias,
                          int64_t g0, int64_t g1, float* y);
// The AVX-512 forward GEMM's W panel straight from a kVbmi layout: panel[k * 32 + j] = dequant(W)[n0 +
// j, k0 + k] for j < 32, k < kc (code * block scale, the values dequantize() gives; rows past
// L.rows are -0.0: code[0] * a zero scale). n0 % 32 == 0, k0 % 64 == 0, kc % 64 == 0. A 64-byte chunk holds 16 rows x 8
// columns, so each looked-up vector is already a half row of the panel: no transpose, ~1/3 of
// the work of decoding bitsandbytes' rows and packing them.
constexpr int64_t kDecodePanelRows = 32;
void nf4_decode_panel(const NF4DecodeLayout& L, const float* code, int64_t n0, int64_t k0, int64_t kc, float* panel);
// The AVX2 forward GEMM's W panel (16 rows) from a kAvx2 layout, as above with n0 % 16 == 0: a
// 128-bit lane holds a column pair of the chunk's 16 rows, so each nibble column is a panel row.
constexpr int64_t kAvx2DecodePanelRows = 16;
void nf4_decode_panel_avx2(const NF4DecodeLayout& L, const float* code, int64_t n0, int64_t k0, int64_t kc,
                           float* panel);

}  // namespace ecomllm::quant
