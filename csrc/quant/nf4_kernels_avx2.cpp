// AVX2 + FMA build of the NF4 leaf kernels (compiled with -mavx2 -mfma -mf16c only).
#define ECOM_SIMD_AVX2 1
#include "quant/nf4_kernels_simd.h"

namespace ecomllm::quant {
const NF4Kernels& nf4_kernels_avx2() {
  static const NF4Kernels k{SimdLevel::AVX2, kGemmMR, kGemmNR, kGemmTMR, kGemmTKR, gemv_rows, dequant_tile, gemm_tile, gemm_t_tile, pack_panel, pack_x_panel, nullptr};
  return k;
}
}  // namespace ecomllm::quant
