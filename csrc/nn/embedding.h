// Token embedding lookup (forward) and scatter-add (backward).
#pragma once

#include <cstdint>

namespace ecomllm::nn {

// out[N,C] = table[ids[n], :], table fp32 [V,C]. ValueError if an id is outside [0, V).
void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t N, int64_t V, int64_t C);
// Same with a bf16 table (raw bf16 bits, [V,C]).
void embedding_forward_bf16(float* out, const int32_t* ids, const uint16_t* table, int64_t N, int64_t V, int64_t C);
// dtable[V,C]: dtable[ids[n], :] += dout[n, :]. Correct with repeated ids: threads own column
// slices, each walks all N rows, so there are no races and the summation order is fixed.
void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t N, int64_t V, int64_t C);

}  // namespace ecomllm::nn
