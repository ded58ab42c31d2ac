// Linear layer y = x W^T (Llama/Mistral linears have no bias) on an fp32, bf16 or NF4 base weight,
// with named LoRA adapters in PEFT's conventions:
//   y = x W^T + scale * ((dropout(x) A^T) B^T),  A [R, in], B [out, R],  scale = alpha / r
//   (alpha / sqrt(r) with rsLoRA); A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0.
// The product B A is never formed in forward/backward (only by merge). Shapes: N rows (tokens), R rank.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/buffer.h"
#include "nn/parameter.h"
#include "quant/nf4_weight.h"

namespace ecomllm::nn {

enum class WeightFormat { F32, BF16, NF4 };
const char* weight_format_name(WeightFormat f);

struct LoraSpec {
  int64_t r = 8;
  float alpha = 8;
  float dropout = 0;    // probability in [0, 1), applied to the adapter's input when training
  bool rslora = false;  // scale = alpha / sqrt(r) instead of alpha / r
  uint64_t seed = 0;    // initialisation of A and the dropout masks
};

struct LoraAdapter {
  LoraSpec spec;
  float scale = 0;  // alpha / r, or alpha / sqrt(r) with rslora
  int64_t in_features = 0, out_features = 0;
  AlignedBuffer A, B, dA, dB;  // A [R, in], B [out, R] (PyTorch/PEFT layout) and their grads, fp32
  float* a() { return A.as<float>(); }
  float* b() { return B.as<float>(); }
  float* da() { return dA.as<float>(); }
  float* db() { return dB.as<float>(); }
  const float* a() const { return A.as<float>(); }
  const float* b() const { return B.as<float>(); }
  const float* da() const { return dA.as<float>(); }
  const float* db() const { return dB.as<float>(); }

  // u = dropout(x) A^T [N, R] kept by a training forward asked to save it, for the backward of the
  // same (x, N, dropout key) to use once instead of recomputing it.
  mutable AlignedBuffer saved_u;
  mutable const float* saved_x = nullptr;
  mutable int64_t saved_n = -1;
  mutable uint64_t saved_key = 0;
};

class Linear {
 public:
  Linear(int64_t in_features, int64_t out_features);

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

  // Base weight [out, in]. Each call replaces the previous weight (ValueError while merged).
  // Copies; trainable allocates a zeroed dW. Replacing an fp32 weight of the same trainability
  // copies into the existing buffer, so earlier ParamRefs to it (and to dW) stay valid.
  void set_weight_f32(const float* w, bool trainable);
  void set_weight_bf16(const uint16_t* w);              // bf16 bit patterns, frozen
  void set_weight_nf4(quant::NF4Weight w);              // frozen; shape must be [out, in]
  bool has_weight() const { return has_weight_; }
  // While an NF4/BF16 base is merged the layer computes with a dense F32 copy and reports F32.
  WeightFormat format() const { return format_; }
  bool weight_trainable() const { return trainable_; }
  const float* weight_f32() const { return format_ == WeightFormat::F32 && w_f32_ ? w_f32_->as<float>() : nullptr; }
  float* weight_f32() { return format_ == WeightFormat::F32 && w_f32_ ? w_f32_->as<float>() : nullptr; }
  float* weight_grad() { return trainable_ && dw_ ? dw_->as<float>() : nullptr; }
  const uint16_t* weight_bf16() const;
  const quant::NF4Weight* weight_nf4() const;
  // The NF4 weight's decode layout (quant/nf4_decode_layout.h): forward passes of up to 16 rows
  // (token-by-token decoding) then run its product-table kernel. Returns whether the layer has
  // one after the call: false for other formats, unsupported shapes or CPUs, or enabled = false
  // (which drops it). Replacing the weight drops it too. keep_codes = false releases the NF4
  // weight's packed codes, which the layout also holds (quant::NF4Weight::prepare_decoding). Not
  // thread-safe against forward / backward running on the layer (they use the codes unlocked).
  bool prepare_decoding(bool enabled, bool keep_codes = true);
  int64_t decoding_nbytes() const;
  void dequantize_weight(float* out) const;  // [out, in] fp32 of whatever the layer computes with
  int64_t weight_nbytes() const;             // storage of the weight(s) held, grads excluded

  // Adds an adapter initialised as PEFT does (A from spec.seed, B = 0). ValueError on r <= 0, a
  // duplicate or empty name, dropout outside [0, 1), a non-finite alpha. The first adapter added
  // to a layer without an active one becomes active (as PEFT's get_peft_model does).
  LoraAdapter& add_adapter(const std::string& name, const LoraSpec& spec);
  void remove_adapter(const std::string& name);  // ValueError if unknown or merged; deactivates it
  LoraAdapter* adapter(const std::string& name);  // nullptr if absent
  const LoraAdapter* adapter(const std::string& name) const;
  // Shared ownership for bindings (numpy views that must survive remove_adapter).
  std::shared_ptr<LoraAdapter> adapter_shared(const std::string& name) const;
  std::vector<std::string> adapter_names() const;
  void set_active_adapter(const std::string& name);  // "" = none; ValueError if unknown or merged
  const std::string& active_adapter() const { return active_; }

  // W += scale * B A for the active adapter (ValueError if none or already merged). An NF4/BF16
  // base becomes a dense F32 copy and the original is kept, so unmerge() restores it bit-exactly;
  // an F32 base is updated in place and unmerge subtracts (exact up to rounding). While merged,
  // forward/backward skip the adapter. unmerge() is a no-op when not merged.
  void merge_active();
  void unmerge();
  bool merged() const { return merged_; }

  // y[N, out] = x[N, in] W^T + scale * ((dropout(x) A^T) B^T)  (overwrites y; active adapter only).
  // Dropout (inverted, p = spec.dropout) only when training; its mask is a pure function of
  // (spec.seed, dropout_key, n * in + k), so backward and recomputation regenerate it.
  // save_for_backward (training only): keep the adapter's u for the next backward with the same x
  // pointer, N and key (the model's layers use it; the caller must not change x in between).
  void forward(float* y, const float* x, int64_t N, bool training, uint64_t dropout_key,
               bool save_for_backward = false) const;
  // Accumulates: dx[N, in] += dy W + scale * mask((dy B) A); dA, dB of the active adapter; dW += dy^T x
  // when the base is trainable F32. dx may be nullptr (no input gradient needed). accumulate_dx =
  // false overwrites dx instead (its old contents are never read: no need to zero it first).
  void backward(float* dx, const float* dy, const float* x, int64_t N, bool training, uint64_t dropout_key,
                bool accumulate_dx = true);
  void zero_grad();  // dW and the grads of every adapter

  // keep[N * in] = 1 where the active adapter's dropout keeps element (n, k) for this key, else 0
  // (all ones when the adapter has no dropout). For tests and debugging.
  void dropout_mask(int64_t N, uint64_t dropout_key, uint8_t* keep) const;

  // Appends prefix + ".lora_A.weight" / ".lora_B.weight" (active adapter) and prefix + ".weight"
  // (trainable base). An empty prefix gives the names without the leading dot.
  void collect_trainable(const std::string& prefix, ParamList& out);

 private:
  const LoraAdapter* active_lora() const;  // the adapter forward uses (null when none or merged)
  void require_weight() const;
  // y = x W^T (+ extra's low-rank term). True when extra was applied (the tiled drivers); false
  // leaves it to the caller (few rows: BLAS).
  bool base_forward(float* y, const float* x, int64_t N, const quant::LowRankOutput* extra = nullptr) const;
  // dx += dy W, and + extra's g A in the same pass when the product runs on the tiled drivers:
  // returns whether extra was applied (callers add it themselves otherwise).
  bool base_backward(float* dx, const float* dy, int64_t N, const quant::LowRankTerm* extra = nullptr,
                     bool accumulate = true) const;
  void lora_input(const LoraAdapter& ad, const float* x, int64_t N, bool training, uint64_t key,
                  AlignedBuffer& storage, const float*& xin) const;   // xin = dropout(x) or x

  int64_t in_, out_;
  bool has_weight_ = false;
  WeightFormat format_ = WeightFormat::F32;
  bool trainable_ = false;
  // Shared so that numpy views of the weight and its gradient survive set_weight_* / unmerge.
  std::shared_ptr<AlignedBuffer> w_f32_, dw_;
  AlignedBuffer w_bf16_;                  // [out, in] bf16 bits
  std::optional<quant::NF4Weight> nf4_;  // with its optional decode layout
  std::map<std::string, std::shared_ptr<LoraAdapter>> adapters_;
  std::string active_;
  bool merged_ = false;
  WeightFormat merged_from_ = WeightFormat::F32;  // base format before merge_active()

 public:
  // For bindings: the shared storage of the F32 weight and its gradient (null when absent).
  std::shared_ptr<AlignedBuffer> weight_f32_storage() const { return format_ == WeightFormat::F32 ? w_f32_ : nullptr; }
  std::shared_ptr<AlignedBuffer> weight_grad_storage() const { return trainable_ ? dw_ : nullptr; }
};

}  // namespace ecomllm::nn
