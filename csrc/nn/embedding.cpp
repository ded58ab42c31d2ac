#include "nn/embedding.h"

#include <algorithm>

#include "base/error.h"
#include "base/half.h"
#include "base/parallel.h"

namespace ecomllm::nn {
namespace {

void check_ids(const int32_t* ids, int64_t N, int64_t V, int64_t C) {
  ECOM_CHECK_ARG(N >= 0 && V > 0 && C > 0, "embedding: bad sizes N=", N, " V=", V, " C=", C);
  for (int64_t n = 0; n < N; ++n)
    ECOM_CHECK_ARG(ids[n] >= 0 && ids[n] < V, "embedding: token id ", ids[n], " at position ", n,
                   " is outside the vocabulary [0, ", V, ")");
}

// Rows per parallel chunk so that a chunk copies at least ~16K floats.
int64_t row_grain(int64_t C) { return std::max<int64_t>(1, 16384 / C); }

}  // namespace

void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t N, int64_t V, int64_t C) {
  check_ids(ids, N, V, C);
  parallel_for(0, N, row_grain(C), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) std::copy_n(table + ids[n] * C, C, out + n * C);
  });
}

void embedding_forward_bf16(float* out, const int32_t* ids, const uint16_t* table, int64_t N, int64_t V,
                            int64_t C) {
  check_ids(ids, N, V, C);
  parallel_for(0, N, row_grain(C), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const uint16_t* src = table + ids[n] * C;
      float* dst = out + n * C;
      for (int64_t c = 0; c < C; ++c) dst[c] = bf16_to_f32(src[c]);
    }
  });
}

void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t N, int64_t V, int64_t C) {
  check_ids(ids, N, V, C);
  // Column slices of at least 16 floats (a cache line pair) so threads never share a line's writes much.
  parallel_for(0, C, std::max<int64_t>(16, C / std::max(1, max_threads())), [&](int64_t c0, int64_t c1) {
    for (int64_t n = 0; n < N; ++n) {
      float* dst = dtable + ids[n] * C;
      const float* src = dout + n * C;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  });
}

}  // namespace ecomllm::nn
