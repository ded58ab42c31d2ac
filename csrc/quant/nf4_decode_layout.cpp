// Building the decode layout (nf4_decode_layout.h), restoring the packed codes from it, and the driver
// of its row kernel.
#include "quant/nf4_decode_layout.h"

#include <emmintrin.h>  // SSE2: baseline x86-64

#include <algorithm>
#include <bit>
#include <cstring>
#include <vector>

#include "base/error.h"
#include "base/parallel.h"
#include "quant/nf4.h"

namespace ecomllm::quant {

bool nf4_decode_kernel_available(DecodeLayoutKind kind) {
  if (kind == DecodeLayoutKind::kAvx2) return simd_level() == SimdLevel::AVX2;
  const CpuFeatures& f = cpu_features();
  return simd_level() == SimdLevel::AVX512 && f.avx512_vbmi && f.avx512_vnni;
}

bool nf4_decode_kind_here(DecodeLayoutKind* kind) {
  for (const DecodeLayoutKind k : {DecodeLayoutKind::kVbmi, DecodeLayoutKind::kAvx2})
    if (nf4_decode_kernel_available(k)) {
      *kind = k;
      return true;
    }
  return false;
}

namespace {

// Where byte i (< 4) of row j (< 64) of a supergroup's dword for octet o lies in a segment, and
// where the row's block scale lies (nf4_decode_layout.h).
int64_t code_offset(DecodeLayoutKind kind, int64_t j, int64_t o, int64_t i) {
  if (kind == DecodeLayoutKind::kVbmi) return o * 256 + (j / 16) * 64 + (j % 16) * 4 + i;
  return (j / 16) * 512 + o * 64 + i * 16 + j % 16;
}
// Copies a row's dword for octet o from bitsandbytes' layout into a segment.
void copy_dword(DecodeLayoutKind kind, int64_t j, int64_t o, const uint8_t* from_row, uint8_t* segment) {
  if (kind == DecodeLayoutKind::kVbmi) {
    std::memcpy(segment + code_offset(kind, j, o, 0), from_row, 4);  // contiguous
  } else {
    for (int64_t i = 0; i < 4; ++i) segment[code_offset(kind, j, o, i)] = from_row[i];
  }
}
int64_t scale_offset(DecodeLayoutKind kind, int64_t j) {
  const int64_t slot = kind == DecodeLayoutKind::kVbmi ? j : (j / 16) * 16 + avx2_scale_slot(j % 16);
  return kSegmentCodeBytes + 4 * slot;
}

// The first kDecodePrefetchBytes of the walk over supergroups [g0, g1), in its order (block by
// block, segment-major within a block), to L2: they arrive while the thread builds its tables (~7 us
// for K = 4096); the walk's own prefetches run that far ahead, so without these the first lines
// of every call were demand misses (4096 x 4096, 1 GiB cycled: +5-6% streamed).
void prefetch_walk_start(const NF4DecodeLayout& L, int64_t g0, int64_t g1) {
  int64_t left = kDecodePrefetchBytes;
  for (int64_t b0 = g0; b0 < g1 && left > 0;) {
    const int64_t b1 = std::min(g1, (b0 / L.block + 1) * L.block);
    for (int64_t s = 0; s < L.cols / 64 && left > 0; ++s)
      for (int64_t g = b0; g < b1 && left > 0; ++g, left -= L.segment_bytes()) {
        const char* segment = reinterpret_cast<const char*>(L.segment(g, s));
        for (int64_t line = 0; line < L.segment_bytes(); line += 64) _mm_prefetch(segment + line, _MM_HINT_T1);
      }
    b0 = b1;
  }
}

}  // namespace

NF4DecodeLayout nf4_build_decode_layout(const NF4Matrix& W) {
  DecodeLayoutKind kind = DecodeLayoutKind::kVbmi;
  nf4_decode_kind_here(&kind);
  return nf4_build_decode_layout(W, kind);
}

namespace {
// log2 of the elements per nested block (blocksize and kNestedBlocksize are powers of 2).
int nested_shift_of(const NF4Matrix& W) {
  return std::countr_zero(static_cast<uint64_t>(W.blocksize * kNestedBlocksize));
}
}  // namespace

bool nf4_decode_scales_u8_supported(const NF4Matrix& W) {
  if (!W.qabsmax || !nf4_decode_layout_supported(W)) return false;
  // The elements from a chunk's window start to its last row's segment: (2^shift - 1) + 15 K.
  const int shift = nested_shift_of(W);
  const int64_t span = (int64_t{1} << shift) - 1 + 15 * W.cols;
  return span < (int64_t{1} << 31) && (span >> shift) < kNestedWindow;
}

NF4DecodeLayout nf4_build_decode_layout(const NF4Matrix& W, DecodeLayoutKind kind) {
  const bool u8 = kind == DecodeLayoutKind::kVbmi && nf4_decode_scales_u8_supported(W);
  return nf4_build_decode_layout(W, kind, u8 ? DecodeScales::kU8 : DecodeScales::kF32);
}

NF4DecodeLayout nf4_build_decode_layout(const NF4Matrix& W, DecodeLayoutKind kind, DecodeScales scales) {
  W.validate();
  ECOM_CHECK_ARG(nf4_decode_layout_supported(W), "NF4 decode layout: needs in_features and the blocksize to be ",
                 "multiples of 64 and code-book values in [-1, 1], got ", W.cols, " and ", W.blocksize);
  const bool u8 = scales == DecodeScales::kU8;
  ECOM_CHECK_ARG(!u8 || (kind == DecodeLayoutKind::kVbmi && nf4_decode_scales_u8_supported(W)),
                 "NF4 decode layout: 8-bit scale codes need the VBMI kind and a double-quantized weight whose ",
                 "rows' nested scales fit the kernel's window, got in_features ", W.cols, ", blocksize ", W.blocksize,
                 W.qabsmax ? "" : ", plain fp32 scales");
  NF4DecodeLayout L;
  L.rows = W.rows;
  L.cols = W.cols;
  L.supergroups = (W.rows + kDecodeRows - 1) / kDecodeRows;
  L.kind = kind;
  L.block = kind == DecodeLayoutKind::kVbmi ? kVbmiSegmentBlock : 1;
  L.scales = scales;
  const int64_t K = W.cols, segments = K / 64, row_bytes = K / 2;
  if (u8) {
    L.offset = W.offset;
    L.nested_shift = nested_shift_of(W);
    // Windows start at most at the nested scale of the padded last supergroup's rows.
    const int64_t nested_count = (W.num_blocks() + kNestedBlocksize - 1) / kNestedBlocksize;
    const int64_t reach = ((L.supergroups * kDecodeRows * K - 1) >> L.nested_shift) + 1;
    L.nested = AlignedBuffer(sizeof(float) * static_cast<size_t>(std::max(nested_count, reach) + kNestedWindow), true);
    std::memcpy(L.nested.data(), W.nested_absmax, sizeof(float) * static_cast<size_t>(nested_count));
    L.map_planes = AlignedBuffer(4 * 256);
    uint8_t* planes = L.map_planes.as<uint8_t>();
    for (int64_t c = 0; c < 256; ++c) {
      uint32_t bits;
      std::memcpy(&bits, W.nested_code + c, 4);
      for (int64_t p = 0; p < 4; ++p) planes[256 * p + c] = static_cast<uint8_t>(bits >> (8 * p));
    }
  }
  L.data = AlignedBuffer::with_huge_pages(static_cast<size_t>(L.supergroups * segments * L.segment_bytes()), true);
  uint8_t* data = L.data.as<uint8_t>();
  parallel_for(0, L.supergroups, 1, [&](int64_t g0, int64_t g1) {
    std::vector<float> row_scales;  // the blocks a row touches, decoded in one call (kF32)
    for (int64_t g = g0; g < g1; ++g) {
      for (int64_t r = 0; r < kDecodeRows && g * kDecodeRows + r < W.rows; ++r) {
        const int64_t row = g * kDecodeRows + r;
        const uint8_t* src = W.packed + row * row_bytes;  // K % 8 == 0: rows start on a dword
        const int64_t b0 = row * K / W.blocksize, b1 = (row * K + K - 1) / W.blocksize + 1;
        if (!u8) {
          row_scales.resize(static_cast<size_t>(b1 - b0));
          W.block_scales(b0, b1, row_scales.data());
        }
        for (int64_t s = 0; s < segments; ++s) {
          uint8_t* segment = data + L.segment_offset(g, s);
          for (int64_t o = 0; o < 8; ++o)
            copy_dword(kind, r, o, src + 4 * (8 * s + o), segment);
          const int64_t b = (row * K + 64 * s) / W.blocksize;
          if (u8) {
            segment[kSegmentCodeBytes + u8_scale_slot(r)] = W.qabsmax[b];
          } else {
            const float scale = row_scales[static_cast<size_t>(b - b0)];
            std::memcpy(segment + scale_offset(kind, r), &scale, 4);
          }
        }
      }
    }
  });
  return L;
}

void nf4_restore_packed(const NF4DecodeLayout& L, uint8_t* packed) {
  const int64_t K = L.cols, segments = K / 64, row_bytes = K / 2;
  if (L.kind == DecodeLayoutKind::kAvx2) {
    // A chunk's octet is a 4 x 16 byte matrix (byte i of 16 rows' dwords, i < 4): two rounds of
    // SSE2 unpacks transpose it into the 16 dwords, which go to their rows (a byte loop costs
    // ~3x more, and products of many rows restore the codes at every call).
    parallel_for(0, L.supergroups, 1, [&](int64_t g0, int64_t g1) {
      alignas(16) uint32_t dwords[16];
      for (int64_t g = g0; g < g1; ++g)
        for (int64_t s = 0; s < segments; ++s)
          for (int64_t r = 0; r < kDecodeRows / 16; ++r) {
            const int64_t first = g * kDecodeRows + 16 * r, live = std::min<int64_t>(16, L.rows - first);
            if (live <= 0) break;
            for (int64_t o = 0; o < 8; ++o) {
              const uint8_t* src = L.segment(g, s) + r * 512 + o * 64;
              const __m128i a0 = _mm_load_si128(reinterpret_cast<const __m128i*>(src));
              const __m128i a1 = _mm_load_si128(reinterpret_cast<const __m128i*>(src + 16));
              const __m128i a2 = _mm_load_si128(reinterpret_cast<const __m128i*>(src + 32));
              const __m128i a3 = _mm_load_si128(reinterpret_cast<const __m128i*>(src + 48));
              const __m128i b01_lo = _mm_unpacklo_epi8(a0, a1), b01_hi = _mm_unpackhi_epi8(a0, a1);
              const __m128i b23_lo = _mm_unpacklo_epi8(a2, a3), b23_hi = _mm_unpackhi_epi8(a2, a3);
              _mm_store_si128(reinterpret_cast<__m128i*>(dwords), _mm_unpacklo_epi16(b01_lo, b23_lo));  // rows 0-3
              _mm_store_si128(reinterpret_cast<__m128i*>(dwords + 4), _mm_unpackhi_epi16(b01_lo, b23_lo));
              _mm_store_si128(reinterpret_cast<__m128i*>(dwords + 8), _mm_unpacklo_epi16(b01_hi, b23_hi));
              _mm_store_si128(reinterpret_cast<__m128i*>(dwords + 12), _mm_unpackhi_epi16(b01_hi, b23_hi));
              for (int64_t j = 0; j < live; ++j)
                std::memcpy(packed + (first + j) * row_bytes + 4 * (8 * s + o), dwords + j, 4);
            }
          }
    });
    return;
  }
  parallel_for(0, L.supergroups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      for (int64_t r = 0; r < kDecodeRows && g * kDecodeRows + r < L.rows; ++r) {
        uint8_t* dst = packed + (g * kDecodeRows + r) * row_bytes;
        for (int64_t s = 0; s < segments; ++s) {
          const uint8_t* segment = L.segment(g, s);
          for (int64_t o = 0; o < 8; ++o)  // kVbmi: the row's dword is contiguous
            std::memcpy(dst + 4 * (8 * s + o), segment + code_offset(L.kind, r, o, 0), 4);
        }
      }
  });
}

NF4Matrix nf4_with_codes(const NF4Matrix& W, const NF4DecodeLayout* decode, AlignedBuffer& storage) {
  if (W.packed) return W;
  ECOM_CHECK_ARG(decode && decode->rows == W.rows && decode->cols == W.cols,
                 "NF4 matrix: the packed codes were released and no decode layout of shape (", W.rows, ", ", W.cols,
                 ") holds them");
  storage = AlignedBuffer(static_cast<size_t>(W.rows * W.cols / 2));
  nf4_restore_packed(*decode, storage.as<uint8_t>());
  NF4Matrix restored = W;
  restored.packed = storage.as<uint8_t>();
  return restored;
}

bool nf4_decode_matmul(const NF4DecodeLayout& L, const float* code, const float* x, int64_t M, const float* bias,
                       float* y, int digits) {
  ECOM_CHECK_ARG(digits == kTableDigitsExact || digits == kTableDigitsInt16, "nf4 decode matmul: digits must be ",
                 kTableDigitsInt16, " or ", kTableDigitsExact, ", got ", digits);
  if (!nf4_decode_kernel_available(L.kind)) return false;
  const bool avx2 = L.kind == DecodeLayoutKind::kAvx2;
  const int64_t K = L.cols, N = L.rows, segments = K / 64;
  // Every row is checked before anything is written, so that a refusal computes nothing.
  for (int64_t m = 0; m < M; ++m)
    if (!(avx2 ? nf4_product_tables_usable_avx2(x + m * K, K) : nf4_product_tables_usable(x + m * K, K))) return false;
  const size_t table_bytes = static_cast<size_t>(K / 8 * (avx2 ? kAvx2TableBytesPerOctet : kTableBytesPerOctet));
  // Each thread builds all of a row's tables into its own buffers and walks its share of the
  // supergroups: nothing to wait for in between, and no table comes from another core's cache.
  // Tables built a share per thread and shared cost 5-60 us more per call on the 2-core Zen 4 VM
  // (the barrier, and half the tables read from the other core): a 128 x 4096 call took 21-79 us
  // against 16 us, while building all of them costs a thread ~1.7 us per 1024 columns.
  // The VBMI kernel takes up to kDecodeRowsPerPass rows of x per pass over the codes: the chunk
  // loads and index vectors are shared and the codes stream once (Zen 4, 2 threads, ms per call
  // against one row per pass: 4096 x 11008 streamed from DRAM x1.10-1.20 at 2-16 rows; 4096 x
  // 4096 in cache x1.07-1.09 at 4-16 rows but x0.95-1.00 at 2-3, the tables then being memory
  // operands of the lookups).
  const int64_t per_pass = avx2 ? 1 : std::min<int64_t>(M, kDecodeRowsPerPass);
  const size_t table_stride = (table_bytes + 63) / 64 * 64, xscale_stride = (static_cast<size_t>(segments) + 15) / 16 * 16;
  auto rows_of_x = [&](int64_t g0, int64_t g1) {
    // This thread's, reused across calls (a fresh 48 x K-byte buffer per call would be an mmap
    // whose page faults cost more than the tables).
    thread_local AlignedBuffer table_buffer, xscale_buffer;
    if (table_buffer.size() < table_stride * per_pass) table_buffer = AlignedBuffer(table_stride * per_pass);
    if (xscale_buffer.size() < sizeof(float) * xscale_stride * per_pass)
      xscale_buffer = AlignedBuffer(sizeof(float) * xscale_stride * per_pass);
    prefetch_walk_start(L, g0, g1);
    for (int64_t m0 = 0; m0 < M; m0 += per_pass) {
      const int rows = static_cast<int>(std::min(per_pass, M - m0));
      const int8_t* tables[kDecodeRowsPerPass];
      const float* xscales[kDecodeRowsPerPass];
      float* ys[kDecodeRowsPerPass];
      for (int i = 0; i < rows; ++i) {
        uint8_t* t = table_buffer.as<uint8_t>() + table_stride * i;
        float* xscale = xscale_buffer.as<float>() + xscale_stride * i;
        const float* xm = x + (m0 + i) * K;
        if (avx2)
          nf4_build_product_tables_avx2(code, xm, K, 0, segments, t, xscale);
        else
          nf4_build_product_tables(code, xm, K, 0, segments, reinterpret_cast<int8_t*>(t), xscale, digits);
        tables[i] = reinterpret_cast<const int8_t*>(t);
        xscales[i] = xscale;
        ys[i] = y + (m0 + i) * N;
      }
      if (avx2)
        nf4_decode_rows_avx2(L, reinterpret_cast<const uint8_t*>(tables[0]), xscales[0], bias, g0, g1, ys[0]);
      else if (rows == 1)
        nf4_decode_rows(L, tables[0], xscales[0], bias, g0, g1, ys[0], digits);
      else
        nf4_decode_rows_multi(L, tables, xscales, bias, g0, g1, ys, rows, digits);
    }
  };
  const int64_t threads = std::min<int64_t>(max_threads(), L.supergroups);
  // One share per thread (inside a caller's parallel region: one share of all, one table build per row).
  parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    rows_of_x(L.supergroups * t0 / threads, L.supergroups * t1 / threads);
  });
  return true;
}

}  // namespace ecomllm::quant
