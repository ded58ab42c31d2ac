// The LoRA rank pass for AVX2 + FMA (see lora_kernels_simd.h); chosen at run time.
#define ECOM_SIMD_AVX2 1
#include "nn/lora_kernels_simd.h"

namespace ecomllm::nn {
void lora_rank_pass_rows_avx2(const RankPass& pass, int64_t m0, int64_t m1, float* d_partial) {
  rank_pass_rows(pass, m0, m1, d_partial);
}
}  // namespace ecomllm::nn
