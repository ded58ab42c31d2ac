// NF4 4-bit blockwise quantization in bitsandbytes' exact layout (QLoRA).
//
// Layout of a quantized tensor with n elements (row-major flattened) and blocksize bs:
//   packed  uint8 [(n + 1) / 2]   two 4-bit codes per byte, FIRST element in the HIGH nibble;
//                                 an odd n is padded with the code of 0.0 (7) in the last low nibble.
//   absmax  fp32  [ceil(n / bs)]  max |x| of each block (the last block may be shorter).
// Value of element i: kNF4Codebook[code_i] * absmax[i / bs].
//
// Double quantization (bnb_4bit_use_double_quant=True) stores absmax itself in 8 bits:
//   offset        = mean(absmax)                      (fp32; we round the exact mean)
//   qabsmax       uint8 [nblocks]                     8-bit codes of (absmax - offset)
//   nested_absmax fp32  [ceil(nblocks / 256)]         per-256-block max |absmax - offset|
//   absmax_i      = dynamic_map[qabsmax_i] * nested_absmax[i / 256] + offset
// Rounding rules follow bitsandbytes' CPU path bit for bit (see quantize functions below).
#pragma once

#include <cstdint>
#include <vector>

#include "base/tensor.h"

namespace ecomllm::quant {

// The 16 NF4 values (bitsandbytes get_4bit_type("nf4")), ascending: code index == rank.
inline constexpr float kNF4Codebook[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

inline constexpr int64_t kNestedBlocksize = 256;  // second-level block of double quantization
inline constexpr uint8_t kNF4ZeroCode = 7;         // code of 0.0, used to pad an odd element count

// True for the blocksizes bitsandbytes accepts: 32, 64, ..., 4096.
bool nf4_blocksize_valid(int64_t blocksize);
inline int64_t nf4_num_blocks(int64_t n, int64_t blocksize) { return (n + blocksize - 1) / blocksize; }
inline int64_t nf4_packed_bytes(int64_t n) { return (n + 1) / 2; }

// bitsandbytes' signed 8-bit "dynamic" map (create_dynamic_map()), 256 ascending fp32 values,
// generated with the same float32 arithmetic so it is bit-identical.
const float* dynamic_map_8bit();

// Quantizes `input` (F32, F16 or BF16, contiguous, any shape, finite values) into
// packed [(n+1)/2] and absmax [ceil(n/bs)]. Rules (bitsandbytes quantize_4bit, CPU):
//   full block: scaled = clamp(x * (1 / max(absmax, 1e-38)), -1, 1), absmax stored unclamped;
//   tail block: scaled = clamp(x / max(absmax, 1e-38), -1, 1), absmax stored clamped;
//   code = #{ midpoints t : scaled > t } (nearest code, ties to the lower code).
// Throws ValueError on a bad blocksize, dtype, layout or a non-finite value.
void nf4_quantize(const TensorView& input, int64_t blocksize, uint8_t* packed, float* absmax);

// Scalar reference dequantization of n elements into fp32: out[i] = code[q_i] * absmax[i / bs].
void nf4_dequantize(const uint8_t* packed, const float* absmax, const float* code16, int64_t n,
                    int64_t blocksize, float* out);

// fp32 offset used by double quantization: the mean of absmax, accumulated in double and rounded
// once (deterministic on every machine; torch's float32 mean may differ by an ulp or two).
float absmax_mean(const float* absmax, int64_t nblocks);

// bitsandbytes' 8-bit blockwise quantization (CPU path) of n values with the 256-entry `code`:
//   absmax_b = max |x| over the block; scaled = clamp(x * (1 / absmax_b), -1, 1);
//   lut index = trunc(((scaled + 1) * 0.5) * 65535 + 0.5) (float32 ops, no FMA);
//   code = nearest code to the index's centre (idx / 65535 * 2 - 1), ties to the lower code.
//   An all-zero block gets absmax 0 and code 0 everywhere (bitsandbytes: 0 * inf = NaN -> 0).
void quantize_blockwise_8bit(const float* x, int64_t n, int64_t blocksize, const float* code256,
                             uint8_t* q, float* absmax);

// Double quantization of a first-level absmax vector: q [nblocks], nested [ceil(nblocks/256)].
void absmax_double_quantize(const float* absmax, int64_t nblocks, float offset, const float* code256,
                            uint8_t* q, float* nested);

// absmax_i = code256[q_i] * nested[i / 256] + offset (two float32 roundings, as bitsandbytes).
inline float absmax_double_dequantize_one(const uint8_t* q, const float* nested, const float* code256,
                                          float offset, int64_t i) {
  const float scaled = code256[q[i]] * nested[i / kNestedBlocksize];
  return scaled + offset;
}

}  // namespace ecomllm::quant
