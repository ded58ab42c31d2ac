// The LoRA rank pass for AVX-512 (see lora_kernels_simd.h); chosen at run time.
// GCC 12's AVX-512 headers build some intrinsics from _mm512_undefined_*() and then warn about it.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define ECOM_SIMD_AVX512 1
#include "nn/lora_kernels_simd.h"

namespace ecomllm::nn {
void lora_rank_pass_rows_avx512(const RankPass& pass, int64_t m0, int64_t m1, float* d_partial) {
  rank_pass_rows(pass, m0, m1, d_partial);
}
}  // namespace ecomllm::nn
