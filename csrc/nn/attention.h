// Causal multi-head attention with grouped-query heads, Mistral's sliding window and packed /
// padded sequences, computed flash-attention style: tiles of queries x keys with an online
// softmax, memory O(T) per head, never a [T,T] matrix. The backward recomputes the probabilities
// tile by tile from q, k and the saved log-sum-exp (flash-attention-2).
#pragma once

#include <cstdint>

namespace ecomllm::nn {

struct AttentionDims {
  int64_t B = 0, T = 0, H = 0, KV = 0, D = 0;  // H % KV == 0; query head h uses kv head h / (H / KV)
  int64_t window = 0;  // sliding window: key s visible from query t only if t - s < window
                       // (transformers' sliding_window_overlay: kv_idx > q_idx - window); 0 = off
  float scale = 0.0f;  // score scale, typically 1/sqrt(D)
};

// q, out [B,T,H,D]; k, v [B,T,KV,D]; lse [B,H,T] = log-sum-exp of the visible scaled scores.
// seg [B,T] int32 or nullptr (one segment, everything valid): query t of row b sees key s iff
// s <= t, seg[b,s] == seg[b,t], seg[b,t] >= 0 and the window allows it. seg < 0 marks padding;
// distinct seg values mark packed examples (block-diagonal causal attention). A query with
// seg < 0 gets out = 0 and lse = 0. Tiles that are entirely masked are skipped.
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, const int32_t* seg,
                       const AttentionDims& d);
// dq [B,T,H,D], dk, dv [B,T,KV,D] += gradients from dout [B,T,H,D], given the forward's inputs,
// out and lse. Parallel over (b, kv head): each task owns dk/dv of its kv head and dq of the query
// heads of its group, so there are no races.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, const int32_t* seg, const AttentionDims& d);

}  // namespace ecomllm::nn
