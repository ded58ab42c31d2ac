// Dense fp32 GEMM through the system OpenBLAS (Debian's OpenMP build): row-major wrapper.
// Called inside one of our parallel regions it runs single-threaded; called outside, it uses the
// OpenMP thread pool. Used for LoRA products, attention tiles, lm_head and full-parameter training.
#pragma once

#include <cblas.h>

#include <cstdint>

namespace ecomllm {

// C[M,N] = alpha * op(A) @ op(B) + beta * C, all row-major. op(A) is [M,K]: A is [M,K] (lda >= K)
// or, with trans_a, [K,M] (lda >= M). op(B) is [K,N]: B is [K,N] (ldb >= N) or, with trans_b,
// [N,K] (ldb >= K). Zero-sized products are no-ops (beta is still applied when K == 0).
inline void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                  int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(M), static_cast<blasint>(N), static_cast<blasint>(K), alpha, A,
              static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C,
              static_cast<blasint>(ldc));
}

// Contiguous shorthand: C[M,N] (+)= op(A) op(B) with leading dimensions implied by the shapes.
inline void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A,
                  const float* B, float* C, bool accumulate) {
  sgemm(trans_a, trans_b, M, N, K, 1.0f, A, trans_a ? M : K, B, trans_b ? K : N,
        accumulate ? 1.0f : 0.0f, C, N);
}

}  // namespace ecomllm
