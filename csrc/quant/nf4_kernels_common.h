// Shared by the per-ISA kernel files (compiled with different flags): declarations only, so no
// inline code compiled for one ISA can be picked by the linker for another.
#pragma once

#include <cstdint>

#include "quant/nf4_matmul.h"

namespace ecomllm::quant {

// Scalar tile decoder that handles any alignment (rows starting mid-byte or mid-block).
void nf4_dequant_tile_generic(const NF4Matrix& W, int64_t n0, int64_t n1, int64_t k0, int64_t k1, float* out,
                              int64_t ldo);

}  // namespace ecomllm::quant
