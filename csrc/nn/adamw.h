// AdamW (torch.optim.AdamW semantics: decoupled weight decay, bias correction, amsgrad=False) over a
// ParamList, fused into one pass per element and multi-threaded; global-norm gradient clipping.
#pragma once

#include <cstdint>
#include <vector>

#include "base/buffer.h"
#include "nn/parameter.h"

namespace ecomllm::nn {

// Hyper-parameters are doubles, like torch's Python floats: the per-step scalars (1 - lr*wd,
// lr / (1 - beta1^t), sqrt(1 - beta2^t)) are computed in double and rounded to fp32 once, as torch does.
struct AdamWConfig {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
};

// The per-step fp32 scalars of one update (see adamw_update).
struct AdamWScalars {
  float decay;       // 1 - lr * wd (unused when has_decay is false)
  bool has_decay;    // weight_decay != 0
  float w1;          // 1 - beta1, the lerp weight of exp_avg
  float beta2;       // exp_avg_sq decay
  float w2;          // 1 - beta2
  float bc2_sqrt;    // sqrt(1 - beta2^t)
  float eps;
  float neg_step;    // -lr / (1 - beta1^t)
};

// One AdamW update of n elements, per element in torch's single-tensor CPU order:
//   p *= decay;  m = lerp(m, g, w1) (fused: m + w1 (g - m));  v = fma(w2 g, g, v * beta2);
//   p += (neg_step * m) / (sqrt(v) / bc2_sqrt + eps)
// (torch's sqrt is MKL's, within 1 ulp of the exact sqrt used here). Dispatched on the SIMD level.
void adamw_update(const AdamWScalars& s, float* p, const float* g, float* m, float* v, int64_t n);
void adamw_update_scalar(const AdamWScalars& s, float* p, const float* g, float* m, float* v, int64_t n);
void adamw_update_avx2(const AdamWScalars& s, float* p, const float* g, float* m, float* v, int64_t n);

class AdamW {
 public:
  // Validates the list (non-null, unique names) and the config (lr >= 0, betas in [0, 1), eps >= 0,
  // weight_decay >= 0): ValueError. State starts at zero, step_count 0.
  AdamW(ParamList params, AdamWConfig cfg);

  void step();  // one update of every parameter from its current grad
  void set_lr(double lr);
  double lr() const { return cfg_.lr; }
  const AdamWConfig& config() const { return cfg_; }
  int64_t step_count() const { return step_; }
  void set_step_count(int64_t t);  // ValueError if negative
  const ParamList& params() const { return params_; }
  // State for checkpoints: exp_avg / exp_avg_sq of params()[i], fp32 [numel].
  float* exp_avg(size_t i);
  float* exp_avg_sq(size_t i);

 private:
  struct Chunk {  // a contiguous piece of one parameter: the unit of parallel work
    size_t param;
    int64_t begin, end;
  };
  ParamList params_;
  AdamWConfig cfg_;
  int64_t step_ = 0;
  std::vector<AlignedBuffer> m_, v_;
  std::vector<Chunk> chunks_;
};

// torch.nn.utils.clip_grad_norm_ (norm_type 2): total = L2 norm over all grads (accumulated in
// double, deterministic for any thread count); coef = max_norm / (total + 1e-6); when coef < 1 every
// grad is multiplied by float(coef). Returns total. ValueError if max_norm is negative or not finite.
double clip_grad_norm(const ParamList& params, double max_norm);
double grad_norm(const ParamList& params);
void zero_grads(const ParamList& params);

}  // namespace ecomllm::nn
