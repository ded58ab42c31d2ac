// AVX-512 (F/BW/VL/DQ) build of the NF4 leaf kernels.
// GCC 12's AVX-512 headers build some intrinsics from _mm512_undefined_*() and then warn about it.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define ECOM_SIMD_AVX512 1
#include "quant/nf4_kernels_simd.h"

namespace ecomllm::quant {
const NF4Kernels& nf4_kernels_avx512() {
  static const NF4Kernels k{SimdLevel::AVX512, kGemmMR, kGemmNR, kGemmTMR, kGemmTKR, gemv_rows, dequant_tile, gemm_tile, gemm_t_tile, pack_panel, pack_x_panel, gemv_rows_grouped_avx512};
  return k;
}
}  // namespace ecomllm::quant
