// First line of the file so that every function in it (headers included) shares the option:
// without it GCC will not if-convert max_f32's comparisons and the row maximum stays scalar. We
// never read floating-point exception flags, so assuming no traps changes no result.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include "nn/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "base/error.h"
#include "base/parallel.h"
#include "nn/nn_math.h"
#include "nn/vec_exp.h"

namespace ecomllm::nn {
namespace {

void check_labels(const int32_t* labels, int64_t n, int64_t V) {
  ECOM_CHECK_ARG(n >= 0 && V > 0, "cross_entropy: bad sizes n=", n, " V=", V);
  for (int64_t i = 0; i < n; ++i)
    ECOM_CHECK_ARG(labels[i] == kIgnoreIndex || (labels[i] >= 0 && labels[i] < V), "cross_entropy: label ",
                   labels[i], " at row ", i, " is neither in [0, ", V, ") nor the ignore index -100");
}

// Max-shifted softmax statistics of one row (1e4-sized logits are fine): writes exp(x - max) to
// `probs` (which may alias x) and returns {max, sum of exp(x - max)}.
struct RowStats {
  float max;
  double sum;
};
RowStats row_stats(const float* x, int64_t V, float* probs) {
  const float mx = max_f32(x, V);
  double s = 0.0;
  constexpr int64_t kBlock = 512;  // float sums of 512 terms in [0,1], then added in double
  for (int64_t v0 = 0; v0 < V; v0 += kBlock) {
    const int64_t len = std::min(kBlock, V - v0);
    exp_shifted(probs + v0, x + v0, len, mx);
    s += sum_f32(probs + v0, len);
  }
  return {mx, s};
}

// -log softmax(x)[label] = max + log(sum) - x[label], in double.
double row_loss(const RowStats& st, float target) {
  return (static_cast<double>(st.max) - static_cast<double>(target)) + std::log(st.sum);
}

// Runs fn(row, loss_of_row_or_0) over rows in parallel and returns the double sum of row losses in
// row order (deterministic whatever the thread count).
template <typename Fn>
double sum_rows(int64_t n, Fn&& fn) {
  std::vector<double> loss(n, 0.0);
  parallel_for(0, n, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) loss[r] = fn(r);
  });
  double total = 0.0;
  for (double l : loss) total += l;
  return total;
}

}  // namespace

double cross_entropy_forward_backward(float* logits, const int32_t* labels, int64_t n, int64_t V, float grad_scale) {
  check_labels(labels, n, V);
  return sum_rows(n, [&](int64_t r) -> double {
    float* x = logits + r * V;
    if (labels[r] == kIgnoreIndex) {
      std::fill_n(x, V, 0.0f);
      return 0.0;
    }
    const int32_t label = labels[r];
    const float target = x[label];
    const RowStats st = row_stats(x, V, x);  // x now holds exp(x - max)
    const float k = static_cast<float>(static_cast<double>(grad_scale) / st.sum);
    for (int64_t v = 0; v < V; ++v) x[v] *= k;
    x[label] -= grad_scale;
    return row_loss(st, target);
  });
}

double cross_entropy_forward(const float* logits, const int32_t* labels, int64_t n, int64_t V) {
  check_labels(labels, n, V);
  return sum_rows(n, [&](int64_t r) -> double {
    if (labels[r] == kIgnoreIndex) return 0.0;
    thread_local std::vector<float> probs;
    probs.resize(V);
    const float* x = logits + r * V;
    return row_loss(row_stats(x, V, probs.data()), x[labels[r]]);
  });
}

}  // namespace ecomllm::nn
