// AdamW element update, AVX2 + FMA (compiled with -mavx2 -mfma; chosen at run time).
#include <immintrin.h>

#include "nn/adamw_kernel.h"

namespace ecomllm::nn {

void adamw_update_avx2(const AdamWScalars& s, float* p, const float* g, float* m, float* v, int64_t n) {
  const __m256 decay = _mm256_set1_ps(s.decay), b2 = _mm256_set1_ps(s.beta2), w2 = _mm256_set1_ps(s.w2);
  const __m256 bc2 = _mm256_set1_ps(s.bc2_sqrt), eps = _mm256_set1_ps(s.eps), neg = _mm256_set1_ps(s.neg_step);
  const bool small = s.w1 < 0.5f;
  const __m256 coeff = _mm256_set1_ps(small ? s.w1 : s.w1 - 1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 pv = _mm256_loadu_ps(p + i);
    const __m256 gv = _mm256_loadu_ps(g + i);
    __m256 mv = _mm256_loadu_ps(m + i), vv = _mm256_loadu_ps(v + i);
    if (s.has_decay) pv = _mm256_mul_ps(pv, decay);
    mv = _mm256_fmadd_ps(coeff, _mm256_sub_ps(gv, mv), small ? mv : gv);
    vv = _mm256_fmadd_ps(_mm256_mul_ps(w2, gv), gv, _mm256_mul_ps(vv, b2));
    const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vv), bc2), eps);
    pv = _mm256_add_ps(pv, _mm256_div_ps(_mm256_mul_ps(neg, mv), denom));
    _mm256_storeu_ps(p + i, pv);
    _mm256_storeu_ps(m + i, mv);
    _mm256_storeu_ps(v + i, vv);
  }
  for (; i < n; ++i) adamw_one(s, p[i], g[i], m[i], v[i]);
}

}  // namespace ecomllm::nn
