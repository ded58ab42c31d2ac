#include "nn/adamw.h"

#include <cmath>
#include <cstring>
#include <unordered_set>

#include "base/cpu_features.h"
#include "base/error.h"
#include "base/parallel.h"
#include "nn/adamw_kernel.h"

namespace ecomllm::nn {
namespace {

constexpr int64_t kChunk = 1 << 15;  // elements per unit of parallel work

// Splits every parameter into pieces of at most kChunk elements, in list order.
template <typename Fn>
void for_each_piece(const ParamList& params, Fn&& fn) {
  for (size_t i = 0; i < params.size(); ++i)
    for (int64_t b = 0, n = params[i].numel(); b < n; b += kChunk) fn(i, b, std::min(n, b + kChunk));
}

}  // namespace

void validate_params(const ParamList& params) {
  std::unordered_set<std::string> names;
  for (const ParamRef& p : params) {
    ECOM_CHECK_ARG(names.insert(p.name).second, "parameter list: the name '", p.name, "' appears twice");
    for (int64_t d : p.shape) ECOM_CHECK_ARG(d >= 0, "parameter '", p.name, "': negative dimension ", d);
    ECOM_CHECK_ARG(p.numel() == 0 || (p.value && p.grad), "parameter '", p.name, "': value or grad is null");
  }
}

void adamw_update_scalar(const AdamWScalars& s, float* p, const float* g, float* m, float* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) adamw_one(s, p[i], g[i], m[i], v[i]);
}

void adamw_update(const AdamWScalars& s, float* p, const float* g, float* m, float* v, int64_t n) {
  if (simd_level() >= SimdLevel::AVX2)
    adamw_update_avx2(s, p, g, m, v, n);
  else
    adamw_update_scalar(s, p, g, m, v, n);
}

AdamW::AdamW(ParamList params, AdamWConfig cfg) : params_(std::move(params)), cfg_(cfg) {
  validate_params(params_);
  set_lr(cfg.lr);
  ECOM_CHECK_ARG(cfg.beta1 >= 0.0 && cfg.beta1 < 1.0, "AdamW: beta1 must be in [0, 1), got ", cfg.beta1);
  ECOM_CHECK_ARG(cfg.beta2 >= 0.0 && cfg.beta2 < 1.0, "AdamW: beta2 must be in [0, 1), got ", cfg.beta2);
  ECOM_CHECK_ARG(cfg.eps >= 0.0 && std::isfinite(cfg.eps), "AdamW: eps must be finite and >= 0, got ", cfg.eps);
  ECOM_CHECK_ARG(cfg.weight_decay >= 0.0 && std::isfinite(cfg.weight_decay),
                 "AdamW: weight_decay must be finite and >= 0, got ", cfg.weight_decay);
  for (const ParamRef& p : params_) {
    m_.emplace_back(sizeof(float) * static_cast<size_t>(p.numel()), true);
    v_.emplace_back(sizeof(float) * static_cast<size_t>(p.numel()), true);
  }
  for_each_piece(params_, [&](size_t i, int64_t b, int64_t e) { chunks_.push_back({i, b, e}); });
}

void AdamW::set_lr(double lr) {
  ECOM_CHECK_ARG(lr >= 0.0 && std::isfinite(lr), "AdamW: lr must be finite and >= 0, got ", lr);
  cfg_.lr = lr;
}

void AdamW::set_step_count(int64_t t) {
  ECOM_CHECK_ARG(t >= 0, "AdamW: step count must be >= 0, got ", t);
  step_ = t;
}

float* AdamW::exp_avg(size_t i) {
  ECOM_CHECK_ARG(i < params_.size(), "AdamW: parameter index ", i, " out of range");
  return m_[i].as<float>();
}

float* AdamW::exp_avg_sq(size_t i) {
  ECOM_CHECK_ARG(i < params_.size(), "AdamW: parameter index ", i, " out of range");
  return v_[i].as<float>();
}

void AdamW::step() {
  ++step_;
  // torch (_single_tensor_adam): Python-float scalars, cast to fp32 where they meet the tensors.
  const double t = static_cast<double>(step_);
  const double bc1 = 1.0 - std::pow(cfg_.beta1, t), bc2 = 1.0 - std::pow(cfg_.beta2, t);
  AdamWScalars s;
  s.has_decay = cfg_.weight_decay != 0.0;
  s.decay = static_cast<float>(1.0 - cfg_.lr * cfg_.weight_decay);
  s.w1 = static_cast<float>(1.0 - cfg_.beta1);
  s.beta2 = static_cast<float>(cfg_.beta2);
  s.w2 = static_cast<float>(1.0 - cfg_.beta2);
  s.bc2_sqrt = static_cast<float>(std::pow(bc2, 0.5));  // Python's bc2 ** 0.5
  s.eps = static_cast<float>(cfg_.eps);
  s.neg_step = static_cast<float>(-(cfg_.lr / bc1));
  parallel_for(0, static_cast<int64_t>(chunks_.size()), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const Chunk& ch = chunks_[c];
      const ParamRef& p = params_[ch.param];
      adamw_update(s, p.value + ch.begin, p.grad + ch.begin, m_[ch.param].as<float>() + ch.begin,
                   v_[ch.param].as<float>() + ch.begin, ch.end - ch.begin);
    }
  });
}

double grad_norm(const ParamList& params) {
  validate_params(params);
  struct Piece { const float* g; int64_t n; };
  std::vector<Piece> pieces;
  for_each_piece(params, [&](size_t i, int64_t b, int64_t e) { pieces.push_back({params[i].grad + b, e - b}); });
  // One partial sum per fixed piece, added in order: the result does not depend on the thread count.
  std::vector<double> partial(pieces.size(), 0.0);
  parallel_for(0, static_cast<int64_t>(pieces.size()), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double acc = 0.0;
      for (int64_t k = 0; k < pieces[c].n; ++k) acc += static_cast<double>(pieces[c].g[k]) * pieces[c].g[k];
      partial[c] = acc;
    }
  });
  double total = 0.0;
  for (double x : partial) total += x;
  return std::sqrt(total);
}

double clip_grad_norm(const ParamList& params, double max_norm) {
  ECOM_CHECK_ARG(max_norm >= 0.0 && std::isfinite(max_norm), "clip_grad_norm: max_norm must be finite and >= 0, got ",
                 max_norm);
  const double total = grad_norm(params);
  const double coef = max_norm / (total + 1e-6);
  if (coef < 1.0) {
    const float c = static_cast<float>(coef);
    for (const ParamRef& p : params) {
      float* g = p.grad;
      parallel_for(0, p.numel(), kChunk, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) g[i] *= c;
      });
    }
  }
  return total;
}

void zero_grads(const ParamList& params) {
  validate_params(params);
  for (const ParamRef& p : params)
    if (p.numel() > 0) std::memset(p.grad, 0, sizeof(float) * static_cast<size_t>(p.numel()));
}

}  // namespace ecomllm::nn
