#include "nn/linear.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/blas.h"
#include "base/error.h"
#include "base/half.h"
#include "base/parallel.h"
#include "nn/dropout.h"
#include "nn/lora_kernels.h"
#include "quant/nf4_decode_layout.h"
#include "quant/nf4_matmul.h"

namespace ecomllm::nn {
namespace {

constexpr int64_t kPanelBytes = 256 * 1024;  // fp32 bytes of one converted bf16 weight panel (L2-sized)
constexpr int64_t kRowBlock = 256;           // rows of x / dy per task in the bf16 paths
constexpr int64_t kElemGrain = 1 << 14;      // elements per task in element-wise loops
// From this many rows of x on, dense products run on our register-tiled GEMM (the NF4 drivers
// reading fp32 tiles in place or copied, or widening bf16 tiles). Measured on Zen 3 at the
// lm_head's shape (262 x 768 x 32000), interleaved with OpenBLAS: fp32 forward +3-13%, backward
// +5-7%; bf16 forward +25%, backward 2x (over widening panels for OpenBLAS). Fewer rows
// (token-by-token decoding) stay on BLAS.
constexpr int64_t kTiledMinRows = 16;
constexpr uint64_t kInitStreamKey = 0x1a2b3c4d5e6f7081ull;  // stream of A's initialisation (not a dropout key)

AlignedBuffer floats(int64_t n, bool zero = false) { return AlignedBuffer(sizeof(float) * static_cast<size_t>(n), zero); }

// Panel extent along a dimension of `extent` whose panels hold `line` fp32 values per unit: about
// kPanelBytes per panel, at least `min_units`, but small enough to give every thread a panel.
int64_t panel_units(int64_t extent, int64_t line, int64_t min_units) {
  const int64_t by_bytes = std::max<int64_t>(min_units, kPanelBytes / (4 * line));
  const int64_t by_threads = (extent + max_threads() - 1) / max_threads();
  return std::min(extent, std::clamp(by_threads, min_units, by_bytes));
}

// Runs task(panel, row_begin, row_end, buf) over panels x row blocks of N. `convert(panel, buf)`
// fills the thread's fp32 panel buffer and is called only when a thread moves on to a new panel.
template <typename Convert, typename Task>
void panel_tasks(int64_t npanels, int64_t panel_floats, int64_t N, Convert&& convert, Task&& task) {
  const int64_t nrb = (N + kRowBlock - 1) / kRowBlock;
  parallel_for(0, npanels * nrb, 1, [&](int64_t t0, int64_t t1) {
    AlignedBuffer buf = floats(panel_floats);
    int64_t current = -1;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p = t / nrb, n0 = (t % nrb) * kRowBlock;
      if (p != current) {
        convert(p, buf.as<float>());
        current = p;
      }
      task(p, n0, std::min(N, n0 + kRowBlock), buf.as<const float>());
    }
  });
}

// dst[i] += src[i] (or, with a mask stream, += keep ? src[i] * scale : 0) for i < n.
void add_into(float* dst, const float* src, int64_t n, const uint64_t* stream = nullptr, float p = 0) {
  const float s = dropout_scale(p);
  parallel_for(0, n, kElemGrain, [&](int64_t i0, int64_t i1) {
    if (!stream) {
      for (int64_t i = i0; i < i1; ++i) dst[i] += src[i];
    } else {
      for (int64_t i = i0; i < i1; ++i)
        if (dropout_keep(*stream, static_cast<uint64_t>(i), p)) dst[i] += src[i] * s;
    }
  });
}

// u[N, R] = xin[N, in] A[R, in]^T: the rank pass where the SIMD level has it (A transposed to
// [in, R] per call: R x in floats, next to the pass's N x in), else BLAS.
void lora_project(const float* xin, int64_t N, int64_t in, const float* a, int64_t R, float* u) {
  if (!lora_rank_pass_supported(R)) {
    sgemm(false, true, N, R, in, xin, a, u, false);
    return;
  }
  thread_local AlignedBuffer a_t;
  if (static_cast<int64_t>(a_t.size()) < R * in * 4) a_t = floats(R * in);
  float* at = a_t.as<float>();
  for (int64_t j = 0; j < R; ++j)
    for (int64_t k = 0; k < in; ++k) at[k * R + j] = a[j * in + k];
  lora_rank_pass({.y = xin, .M = N, .N = in, .r = R, .p = at, .g = u});
}

// dA[R, in] += g[N, R]^T xin[N, in]: the rank pass accumulates dA^T [in, R], added back transposed.
void lora_grad_a(const float* g, const float* xin, int64_t N, int64_t in, int64_t R, float* da) {
  if (!lora_rank_pass_supported(R)) {
    sgemm(true, false, R, in, N, 1.0f, g, R, xin, in, 1.0f, da, in);
    return;
  }
  thread_local AlignedBuffer da_t;
  if (static_cast<int64_t>(da_t.size()) < R * in * 4) da_t = floats(R * in);
  float* dat = da_t.as<float>();
  std::memset(dat, 0, sizeof(float) * static_cast<size_t>(R * in));
  lora_rank_pass({.y = xin, .M = N, .N = in, .r = R, .q = g, .d = dat});
  for (int64_t j = 0; j < R; ++j)
    for (int64_t k = 0; k < in; ++k) da[j * in + k] += dat[k * R + j];
}

}  // namespace

const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::F32: return "f32";
    case WeightFormat::BF16: return "bf16";
    case WeightFormat::NF4: return "nf4";
  }
  return "?";
}

Linear::Linear(int64_t in_features, int64_t out_features) : in_(in_features), out_(out_features) {
  ECOM_CHECK_ARG(in_ > 0 && out_ > 0, "Linear: features must be positive, got in=", in_, " out=", out_);
  ECOM_CHECK_ARG(in_ <= (int64_t{1} << 40) / out_, "Linear: shape (", out_, ", ", in_, ") is too large");
}

// ---- base weight -------------------------------------------------------------------------------

void Linear::set_weight_f32(const float* w, bool trainable) {
  ECOM_CHECK_ARG(!merged_, "Linear: unmerge the adapter before replacing the weight");
  ECOM_CHECK_ARG(w != nullptr, "Linear: weight is null");
  if (format_ == WeightFormat::F32 && w_f32_ && trainable == trainable_ && (dw_ != nullptr) == trainable) {
    // Overwrite in place: ParamRefs handed out earlier (an optimizer's, a ParameterList's) point
    // into these buffers and must stay valid, e.g. when a checkpoint is loaded into a model
    // whose optimizer already exists. Storage shared with a tied weight stays shared.
    std::memcpy(w_f32_->data(), w, sizeof(float) * static_cast<size_t>(out_ * in_));
    return;
  }
  auto buf = std::make_shared<AlignedBuffer>(sizeof(float) * static_cast<size_t>(out_ * in_));
  std::memcpy(buf->data(), w, sizeof(float) * static_cast<size_t>(out_ * in_));
  w_f32_ = std::move(buf);
  dw_ = trainable ? std::make_shared<AlignedBuffer>(sizeof(float) * static_cast<size_t>(out_ * in_), true) : nullptr;
  w_bf16_ = AlignedBuffer();
  nf4_.reset();
  format_ = WeightFormat::F32;
  trainable_ = trainable;
  has_weight_ = true;
}

void Linear::set_weight_bf16(const uint16_t* w) {
  ECOM_CHECK_ARG(!merged_, "Linear: unmerge the adapter before replacing the weight");
  ECOM_CHECK_ARG(w != nullptr, "Linear: weight is null");
  AlignedBuffer buf(sizeof(uint16_t) * static_cast<size_t>(out_ * in_));
  std::memcpy(buf.data(), w, buf.size());
  w_bf16_ = std::move(buf);
  w_f32_.reset();
  dw_.reset();
  nf4_.reset();
  format_ = WeightFormat::BF16;
  trainable_ = false;
  has_weight_ = true;
}

void Linear::set_weight_nf4(quant::NF4Weight w) {
  ECOM_CHECK_ARG(!merged_, "Linear: unmerge the adapter before replacing the weight");
  ECOM_CHECK_ARG(w.rows() == out_ && w.cols() == in_, "Linear: NF4 weight has shape (", w.rows(), ", ", w.cols(),
                 "), expected (", out_, ", ", in_, ")");
  nf4_ = std::move(w);
  w_f32_.reset();
  dw_.reset();
  w_bf16_ = AlignedBuffer();
  format_ = WeightFormat::NF4;
  trainable_ = false;
  has_weight_ = true;
}

const uint16_t* Linear::weight_bf16() const {
  return format_ == WeightFormat::BF16 ? w_bf16_.as<uint16_t>() : nullptr;
}

const quant::NF4Weight* Linear::weight_nf4() const {
  return format_ == WeightFormat::NF4 && nf4_ ? &*nf4_ : nullptr;
}

bool Linear::prepare_decoding(bool enabled, bool keep_codes) {
  // While merged the layer computes with a dense copy: no layout then (as for other formats).
  return nf4_ && nf4_->prepare_decoding(enabled && format_ == WeightFormat::NF4, keep_codes);
}

int64_t Linear::decoding_nbytes() const { return nf4_ ? nf4_->decoding_nbytes() : 0; }

void Linear::require_weight() const {
  ECOM_CHECK_ARG(has_weight_, "Linear(", in_, " -> ", out_, "): the weight has not been set");
}

void Linear::dequantize_weight(float* out) const {
  require_weight();
  const int64_t n = out_ * in_;
  switch (format_) {
    case WeightFormat::F32:
      std::memcpy(out, w_f32_->data(), sizeof(float) * static_cast<size_t>(n));
      break;
    case WeightFormat::BF16: {
      const uint16_t* w = w_bf16_.as<uint16_t>();
      parallel_for(0, n, kElemGrain, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) out[i] = bf16_to_f32(w[i]);
      });
      break;
    }
    case WeightFormat::NF4:
      nf4_->dequantize(out);
      break;
  }
}

int64_t Linear::weight_nbytes() const {
  int64_t n = 0;
  if (w_f32_) n += static_cast<int64_t>(w_f32_->size());
  n += static_cast<int64_t>(w_bf16_.size());
  if (nf4_) n += nf4_->nbytes();
  return n + decoding_nbytes();
}

// y[N, out] = x[N, in] W^T (+ extra).
bool Linear::base_forward(float* y, const float* x, int64_t N, const quant::LowRankOutput* extra) const {
  switch (format_) {
    case WeightFormat::F32:
      if (N >= kTiledMinRows) {
        quant::f32_matmul(x, N, w_f32_->as<float>(), out_, in_, y, extra);
        return true;
      }
      sgemm(false, true, N, out_, in_, x, w_f32_->as<float>(), y, false);
      break;
    case WeightFormat::BF16: {
      if (N >= kTiledMinRows) {
        quant::bf16_matmul(x, N, w_bf16_.as<uint16_t>(), out_, in_, y, extra);
        return true;
      }
      // Row panels of W [P, in] widened to fp32 per thread; y[:, j0:j0+P] = x W_panel^T.
      const int64_t P = panel_units(out_, in_, 8), npanels = (out_ + P - 1) / P;
      const uint16_t* w = w_bf16_.as<uint16_t>();
      panel_tasks(
          npanels, P * in_, N,
          [&](int64_t p, float* buf) {
            const int64_t j0 = p * P, count = std::min(P, out_ - j0) * in_;
            for (int64_t i = 0; i < count; ++i) buf[i] = bf16_to_f32(w[j0 * in_ + i]);
          },
          [&](int64_t p, int64_t n0, int64_t n1, const float* buf) {
            const int64_t j0 = p * P, pr = std::min(P, out_ - j0);
            sgemm(false, true, n1 - n0, pr, in_, 1.0f, x + n0 * in_, in_, buf, in_, 0.0f, y + n0 * out_ + j0, out_);
          });
      break;
    }
    case WeightFormat::NF4:
      quant::nf4_matmul(x, N, nf4_->view(), nullptr, y, extra, nf4_->decode_layout());
      return true;
  }
  return false;
}

// dx[N, in] += dy[N, out] W (accumulate = false: dx = dy W).
bool Linear::base_backward(float* dx, const float* dy, int64_t N, const quant::LowRankTerm* extra,
                           bool accumulate) const {
  switch (format_) {
    case WeightFormat::F32:
      if (N >= kTiledMinRows) {
        quant::f32_matmul_t(dy, N, w_f32_->as<float>(), out_, in_, dx, accumulate, extra);
        return true;
      }
      sgemm(false, false, N, in_, out_, dy, w_f32_->as<float>(), dx, accumulate);
      break;
    case WeightFormat::BF16: {
      if (N >= kTiledMinRows) {
        quant::bf16_matmul_t(dy, N, w_bf16_.as<uint16_t>(), out_, in_, dx, accumulate, extra);
        return true;
      }
      // Column panels of W [out, Kp] widened to fp32 per thread; dx[:, k0:k0+Kp] += dy W_panel.
      const int64_t Kp = panel_units(in_, out_, 16), npanels = (in_ + Kp - 1) / Kp;
      const uint16_t* w = w_bf16_.as<uint16_t>();
      panel_tasks(
          npanels, out_ * Kp, N,
          [&](int64_t p, float* buf) {
            const int64_t k0 = p * Kp, kw = std::min(Kp, in_ - k0);
            for (int64_t r = 0; r < out_; ++r)
              for (int64_t k = 0; k < kw; ++k) buf[r * kw + k] = bf16_to_f32(w[r * in_ + k0 + k]);
          },
          [&](int64_t p, int64_t n0, int64_t n1, const float* buf) {
            const int64_t k0 = p * Kp, kw = std::min(Kp, in_ - k0);
            sgemm(false, false, n1 - n0, kw, out_, 1.0f, dy + n0 * out_, out_, buf, kw, accumulate ? 1.0f : 0.0f,
                  dx + n0 * in_ + k0, in_);
          });
      break;
    }
    case WeightFormat::NF4:
      quant::nf4_matmul_t(dy, N, nf4_->view(), dx, accumulate, extra, nf4_->decode_layout());
      return true;
  }
  return false;
}

// ---- adapters ----------------------------------------------------------------------------------

LoraAdapter& Linear::add_adapter(const std::string& name, const LoraSpec& spec) {
  ECOM_CHECK_ARG(!name.empty(), "add_adapter: the adapter name is empty");
  ECOM_CHECK_ARG(!adapters_.count(name), "add_adapter: an adapter named '", name, "' already exists");
  ECOM_CHECK_ARG(spec.r > 0, "add_adapter: r must be positive, got ", spec.r);
  ECOM_CHECK_ARG(spec.r <= std::min<int64_t>(1 << 20, (int64_t{1} << 40) / std::max(in_, out_)),
                 "add_adapter: r = ", spec.r, " is too large");
  ECOM_CHECK_ARG(spec.dropout >= 0.0f && spec.dropout < 1.0f, "add_adapter: dropout must be in [0, 1), got ",
                 spec.dropout);
  ECOM_CHECK_ARG(std::isfinite(spec.alpha), "add_adapter: alpha must be finite, got ", spec.alpha);
  auto ad = std::make_shared<LoraAdapter>();
  const int64_t R = spec.r;
  ad->spec = spec;
  // PEFT: scaling = lora_alpha / r (or / math.sqrt(r)) in double, applied as a float32 scalar.
  ad->scale = static_cast<float>(spec.rslora ? static_cast<double>(spec.alpha) / std::sqrt(static_cast<double>(R))
                                             : static_cast<double>(spec.alpha) / static_cast<double>(R));
  ad->in_features = in_;
  ad->out_features = out_;
  ad->A = floats(R * in_);
  ad->B = floats(out_ * R, true);
  ad->dA = floats(R * in_, true);
  ad->dB = floats(out_ * R, true);
  // kaiming_uniform_(a = sqrt(5)) on fan_in = in: bound = sqrt(3) * sqrt(2 / (1 + 5)) / sqrt(in) = 1 / sqrt(in).
  const float bound = static_cast<float>(1.0 / std::sqrt(static_cast<double>(in_)));
  const uint64_t stream = hash_stream(spec.seed, kInitStreamKey);
  float* a = ad->a();
  for (int64_t i = 0; i < R * in_; ++i) a[i] = (2.0f * hash_uniform(stream, static_cast<uint64_t>(i)) - 1.0f) * bound;
  LoraAdapter& ref = *ad;
  const bool first = adapters_.empty();
  adapters_.emplace(name, std::move(ad));
  if (first && active_.empty()) active_ = name;
  return ref;
}

void Linear::remove_adapter(const std::string& name) {
  ECOM_CHECK_ARG(adapters_.count(name), "remove_adapter: no adapter named '", name, "'");
  ECOM_CHECK_ARG(!(merged_ && active_ == name), "remove_adapter: '", name, "' is merged; unmerge it first");
  adapters_.erase(name);
  if (active_ == name) active_.clear();
}

LoraAdapter* Linear::adapter(const std::string& name) {
  auto it = adapters_.find(name);
  return it == adapters_.end() ? nullptr : it->second.get();
}

const LoraAdapter* Linear::adapter(const std::string& name) const {
  auto it = adapters_.find(name);
  return it == adapters_.end() ? nullptr : it->second.get();
}

std::shared_ptr<LoraAdapter> Linear::adapter_shared(const std::string& name) const {
  auto it = adapters_.find(name);
  return it == adapters_.end() ? nullptr : it->second;
}

std::vector<std::string> Linear::adapter_names() const {
  std::vector<std::string> names;
  for (const auto& kv : adapters_) names.push_back(kv.first);
  return names;
}

void Linear::set_active_adapter(const std::string& name) {
  ECOM_CHECK_ARG(name.empty() || adapters_.count(name), "set_active_adapter: no adapter named '", name, "'");
  ECOM_CHECK_ARG(!merged_ || name == active_, "set_active_adapter: adapter '", active_,
                 "' is merged; unmerge it first");
  active_ = name;
}

const LoraAdapter* Linear::active_lora() const {
  if (merged_ || active_.empty()) return nullptr;
  return adapters_.at(active_).get();
}

void Linear::merge_active() {
  require_weight();
  ECOM_CHECK_ARG(!merged_, "merge_active: adapter '", active_, "' is already merged");
  ECOM_CHECK_ARG(!active_.empty(), "merge_active: no active adapter");
  const LoraAdapter& ad = *adapters_.at(active_);
  merged_from_ = format_;
  if (format_ != WeightFormat::F32) {
    // Dense copy to merge into; the NF4 / bf16 original stays for unmerge().
    auto dense = std::make_shared<AlignedBuffer>(sizeof(float) * static_cast<size_t>(out_ * in_));
    dequantize_weight(dense->as<float>());
    w_f32_ = std::move(dense);
    format_ = WeightFormat::F32;
  }
  // W[out, in] += scale * B[out, R] A[R, in]
  sgemm(false, false, out_, in_, ad.spec.r, ad.scale, ad.b(), ad.spec.r, ad.a(), in_, 1.0f, w_f32_->as<float>(), in_);
  merged_ = true;
}

void Linear::unmerge() {
  if (!merged_) return;
  if (merged_from_ != WeightFormat::F32) {
    w_f32_.reset();
    format_ = merged_from_;
  } else {
    const LoraAdapter& ad = *adapters_.at(active_);
    sgemm(false, false, out_, in_, ad.spec.r, -ad.scale, ad.b(), ad.spec.r, ad.a(), in_, 1.0f, w_f32_->as<float>(),
          in_);
  }
  merged_ = false;
}

// ---- forward / backward ------------------------------------------------------------------------

void Linear::lora_input(const LoraAdapter& ad, const float* x, int64_t N, bool training, uint64_t key,
                        AlignedBuffer& storage, const float*& xin) const {
  const float p = ad.spec.dropout;
  if (!training || p == 0.0f) {
    xin = x;
    return;
  }
  storage = floats(N * in_);
  float* xd = storage.as<float>();
  const uint64_t stream = hash_stream(ad.spec.seed, key);
  const float s = dropout_scale(p);
  parallel_for(0, N * in_, kElemGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) xd[i] = dropout_keep(stream, static_cast<uint64_t>(i), p) ? x[i] * s : 0.0f;
  });
  xin = xd;
}

void Linear::forward(float* y, const float* x, int64_t N, bool training, uint64_t dropout_key,
                     bool save_for_backward) const {
  require_weight();
  ECOM_CHECK_ARG(N >= 0, "Linear.forward: N must be non-negative, got ", N);
  if (N == 0) return;
  const LoraAdapter* ad = active_lora();
  if (!ad) {
    base_forward(y, x, N);
    return;
  }
  const int64_t R = ad->spec.r;
  AlignedBuffer xd;
  const float* xin;
  lora_input(*ad, x, N, training, dropout_key, xd, xin);
  const bool save = training && save_for_backward;
  AlignedBuffer local;
  AlignedBuffer& u = save ? ad->saved_u : local;
  if (static_cast<int64_t>(u.size()) < N * R * 4) u = floats(N * R);
  if (save) ad->saved_x = nullptr;  // invalid until u holds this call's values
  lora_project(xin, N, in_, ad->a(), R, u.as<float>());  // u[N, R] = xin A^T
  // y = x W^T + scale u B^T, in one pass over y where the base product runs on the tiled drivers
  const quant::LowRankOutput lora_term{u.as<float>(), ad->b(), R, ad->scale};
  if (!base_forward(y, x, N, &lora_term))
    sgemm(false, true, N, out_, R, ad->scale, u.as<float>(), R, ad->b(), R, 1.0f, y, out_);
  if (save) {
    ad->saved_x = x;
    ad->saved_n = N;
    ad->saved_key = dropout_key;
  }
}

void Linear::backward(float* dx, const float* dy, const float* x, int64_t N, bool training, uint64_t dropout_key,
                      bool accumulate_dx) {
  require_weight();
  ECOM_CHECK_ARG(N >= 0, "Linear.backward: N must be non-negative, got ", N);
  if (N == 0) return;
  if (trainable_ && dw_) sgemm(true, false, out_, in_, N, dy, x, dw_->as<float>(), true);  // dW += dy^T x
  const LoraAdapter* cad = active_lora();
  if (!cad) {
    if (dx) base_backward(dx, dy, N, nullptr, accumulate_dx);
    return;
  }
  LoraAdapter& ad = *adapters_.at(active_);
  const int64_t R = ad.spec.r;
  AlignedBuffer xd;
  const float* xin;
  lora_input(ad, x, N, training, dropout_key, xd, xin);
  AlignedBuffer g = floats(N * R), local;
  const float* u;
  if (ad.saved_x == x && ad.saved_n == N && ad.saved_key == dropout_key && training) {
    u = ad.saved_u.as<float>();  // saved by this x's training forward
  } else {
    local = floats(N * R);
    lora_project(xin, N, in_, ad.a(), R, local.as<float>());  // u[N, R] = xin A^T (recomputed)
    u = local.as<float>();
  }
  ad.saved_x = nullptr;  // used once
  // dB[out, R] += scale dy^T u;  g[N, R] = scale dy B;  dA[R, in] += g^T xin
  if (lora_rank_pass_supported(R)) {  // dB and g in one pass over dy
    lora_rank_pass({.y = dy, .M = N, .N = out_, .r = R, .p = ad.b(), .g = g.as<float>(), .scale_g = ad.scale,
                    .q = u, .d = ad.db(), .scale_d = ad.scale});
  } else {
    sgemm(true, false, out_, R, N, ad.scale, dy, out_, u, R, 1.0f, ad.db(), R);
    sgemm(false, false, N, R, out_, ad.scale, dy, out_, ad.b(), R, 0.0f, g.as<float>(), R);
  }
  lora_grad_a(g.as<float>(), xin, N, in_, R, ad.da());
  if (!dx) return;
  if (xin == x) {
    // dx += dy W + g A, in one pass over dx where the base product runs on the tiled drivers
    const quant::LowRankTerm lora_term{g.as<float>(), ad.a(), R};
    if (!base_backward(dx, dy, N, &lora_term, accumulate_dx))
      sgemm(false, false, N, in_, R, g.as<float>(), ad.a(), dx, true);
  } else {
    // dx += dy W + mask * s * (g A); the dropped input is no longer needed, so its storage holds g A.
    base_backward(dx, dy, N, nullptr, accumulate_dx);
    float* t = xd.as<float>();
    sgemm(false, false, N, in_, R, g.as<float>(), ad.a(), t, false);
    const uint64_t stream = hash_stream(ad.spec.seed, dropout_key);
    add_into(dx, t, N * in_, &stream, ad.spec.dropout);
  }
}

void Linear::zero_grad() {
  if (dw_) std::memset(dw_->data(), 0, dw_->size());
  for (auto& kv : adapters_) {
    std::memset(kv.second->dA.data(), 0, kv.second->dA.size());
    std::memset(kv.second->dB.data(), 0, kv.second->dB.size());
  }
}

void Linear::dropout_mask(int64_t N, uint64_t dropout_key, uint8_t* keep) const {
  ECOM_CHECK_ARG(N >= 0, "dropout_mask: N must be non-negative");
  const LoraAdapter* ad = active_lora();
  const float p = ad ? ad->spec.dropout : 0.0f;
  const uint64_t stream = ad ? hash_stream(ad->spec.seed, dropout_key) : 0;
  for (int64_t i = 0; i < N * in_; ++i) keep[i] = p == 0.0f || dropout_keep(stream, static_cast<uint64_t>(i), p);
}

void Linear::collect_trainable(const std::string& prefix, ParamList& out) {
  const std::string dot = prefix.empty() ? "" : prefix + ".";
  if (LoraAdapter* ad = merged_ || active_.empty() ? nullptr : adapters_.at(active_).get()) {
    out.push_back({dot + "lora_A.weight", ad->a(), ad->da(), {ad->spec.r, in_}});
    out.push_back({dot + "lora_B.weight", ad->b(), ad->db(), {out_, ad->spec.r}});
  }
  if (trainable_ && format_ == WeightFormat::F32 && dw_)
    out.push_back({dot + "weight", w_f32_->as<float>(), dw_->as<float>(), {out_, in_}});
}

}  // namespace ecomllm::nn
