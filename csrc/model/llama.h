// A Llama / Mistral decoder-only transformer with forward and backward passes, LoRA adapters on
// any of its seven projections, an fp32 / bf16 / NF4 base, activation checkpointing, and a
// full-parameter training mode (embeddings, norms and dense linears all trainable).
//
// Legend: B batch, T tokens, N = B*T rows, C hidden, H query heads, KV key/value heads, D head
// dim, I SwiGLU width, V vocab, L layers. All activations are fp32, row-major, token-major
// ([N, ...]); a projection output [N, H*D] is read by attention as [B, T, H, D].
//
// Per decoder layer (pre-norm, as transformers' LlamaDecoderLayer):
//   h1 = rmsnorm(x) ; q,k,v = h1 Wq^T, h1 Wk^T, h1 Wv^T ; rope(q), rope(k)
//   att = attention(q, k, v) ; xm = x + att Wo^T
//   h2 = rmsnorm(xm) ; a = silu(h2 Wg^T) * (h2 Wu^T) ; out = xm + a Wd^T
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/buffer.h"
#include "model/config.h"
#include "nn/linear.h"
#include "nn/parameter.h"

namespace ecomllm::model {

// How base weights are stored when loaded or created.
struct LoadOptions {
  bool quantize_nf4 = false;   // the seven projections become NF4 (embeddings, norms, lm_head stay dense)
  bool bf16 = false;           // dense weights stored as bf16 (frozen) instead of fp32
  int64_t blocksize = 64;      // NF4 block size
  bool double_quant = true;    // NF4 double quantization of the block scales
};

// The seven projections of a decoder layer, in Hugging Face / PEFT naming.
enum Proj : int { kQ, kK, kV, kO, kGate, kUp, kDown, kNumProj };
const char* proj_name(int p);    // "q_proj", ..., "down_proj"
const char* proj_module(int p);  // "self_attn.q_proj", ..., "mlp.down_proj"
struct ProjShape { int64_t out, in; };
ProjShape proj_shape(const LlamaConfig& c, int p);  // weight [out, in] of projection p

// A LoRA adapter as PEFT describes it: which modules, rank, alpha, dropout, rsLoRA.
struct AdapterConfig {
  nn::LoraSpec spec;
  // Suffixes of module names ("q_proj", "self_attn.o_proj", ...), or one entry "all-linear";
  // `target_regex` (PEFT's string form, full match against "model.layers.3.mlp.up_proj") wins
  // when non-empty.
  std::vector<std::string> target_modules;
  std::string target_regex;
};

// One batch as the model sees it. ids [B,T] (int32, in [0, V)); attention_mask [B,T] (1 = real
// token, 0 = padding; null = all real); position_ids [B,T] (null = 0..T-1 per row, as
// transformers does when none are given). A position id that drops back to 0 inside a row starts
// a new packed example: attention never crosses examples.
struct BatchInput {
  int64_t B = 0, T = 0;
  const int32_t* ids = nullptr;
  const int32_t* attention_mask = nullptr;
  const int32_t* position_ids = nullptr;
};

struct LossResult {
  double loss_sum = 0.0;    // sum over target tokens of -log p(target)
  int64_t num_targets = 0;  // tokens whose (shifted) label is not -100
};

class LlamaModel {
 public:
  // Weights are allocated (norms = 1, everything else zero) in the formats `opt` asks for.
  LlamaModel(const LlamaConfig& cfg, const LoadOptions& opt);
  ~LlamaModel();
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  // A Hugging Face model directory (config.json + model.safetensors or shards). Dense tensors in
  // fp32/fp16/bf16, or projections already in bitsandbytes' NF4 layout.
  static std::unique_ptr<LlamaModel> from_pretrained(const std::string& dir, const LoadOptions& opt);
  // Fresh fp32 weights drawn like transformers' _init_weights (normal(0, init_std), norms 1).
  static std::unique_ptr<LlamaModel> from_config(const LlamaConfig& cfg, uint64_t seed, float init_std = 0.02f);

  const LlamaConfig& config() const { return cfg_; }
  const LoadOptions& load_options() const { return opt_; }

  // ---- weights by Hugging Face name ------------------------------------------------------
  std::vector<std::string> weight_names() const;  // every base tensor, HF names
  std::vector<int64_t> weight_shape(const std::string& name) const;
  // Copies an fp32 tensor in (quantizing / converting to the tensor's storage format).
  void set_weight(const std::string& name, const float* data, int64_t numel);
  // Copies the tensor out as fp32 (dequantizing NF4 / bf16).
  void get_weight(const std::string& name, float* out) const;
  // Writes config.json + model.safetensors (sharded above max_shard_bytes), loadable by
  // transformers. NF4 projections are written dequantized; `bf16` selects the tensor dtype.
  void save_pretrained(const std::string& dir, bool bf16, int64_t max_shard_bytes) const;

  // ---- training switches -----------------------------------------------------------------
  // Full-parameter training: every base weight gets a gradient. Requires fp32 dense weights.
  void set_train_all(bool on);
  bool train_all() const { return train_all_; }
  void set_gradient_checkpointing(bool on) { checkpointing_ = on; }
  bool gradient_checkpointing() const { return checkpointing_; }
  // The forward_backward call counter that keys LoRA dropout masks; a resumed training run sets
  // it back to the checkpoint's value so that it draws the same masks as an uninterrupted run.
  uint64_t dropout_step() const { return step_; }
  void set_dropout_step(uint64_t step) { step_ = step; }

  // ---- adapters ------------------------------------------------------------------------------
  // Adds a LoRA adapter to every matching projection (ValueError if none matches or the name is
  // taken) and makes it the active one. Returns the number of projections it went on.
  int64_t add_adapter(const std::string& name, const AdapterConfig& cfg);
  void set_active_adapter(const std::string& name);  // "" = no adapter
  const std::string& active_adapter() const { return active_adapter_; }
  void remove_adapter(const std::string& name);
  std::vector<std::string> adapter_names() const;
  const AdapterConfig& adapter_config(const std::string& name) const;
  // Module paths ("model.layers.0.self_attn.q_proj") that carry adapter `name`.
  std::vector<std::string> adapter_modules(const std::string& name) const;
  // The adapter's LoRA matrix of one module: "A" [R, in] or "B" [out, R]; nullptr if absent.
  nn::LoraAdapter* lora(const std::string& adapter, const std::string& module);
  void merge_adapter();    // merges the active adapter into the base (see nn::Linear::merge_active)
  void unmerge_adapter();

  // Trainable tensors and their gradients: the active adapter's lora_A / lora_B in PEFT's saved
  // naming ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), plus every base
  // tensor (HF names) in full-parameter mode.
  nn::ParamList trainable_parameters();
  void zero_grad();
  int64_t num_parameters(bool trainable_only) const;
  // Builds (enabled) or drops the decode layout of every NF4 projection and lm_head
  // (nn::Linear::prepare_decoding): exact, faster token-by-token decoding for ~4.5 more bits per
  // NF4 weight, or ~0.5 more with keep_codes = false (the packed codes released; prefill and
  // backward then restore each weight's codes per call). Returns how many linears have one
  // afterwards (0 on CPUs without VBMI/VNNI).
  int64_t prepare_decoding(bool enabled, bool keep_codes = true);
  int64_t decoding_nbytes();

  // ---- compute ---------------------------------------------------------------------------
  // logits [B, T, V].
  void forward(const BatchInput& in, float* logits);
  // Causal-LM loss with transformers' shift (position t predicts labels[t+1]; -100 ignored).
  // Gradients accumulate (+=) into the trainable parameters, scaled by grad_scale
  // (grad_scale <= 0 means 1 / num_targets, i.e. the gradient of the mean loss).
  LossResult forward_backward(const BatchInput& in, const int32_t* labels, float grad_scale);
  // The same loss without gradients (evaluation).
  LossResult loss(const BatchInput& in, const int32_t* labels);

 private:
  struct Layer;
  struct Activations;
  struct Prepared;

  Prepared prepare(const BatchInput& in) const;
  nn::Linear& embed() { return *embed_; }
  void embed_tokens(const Prepared& p, float* x) const;
  void layer_forward(int l, const Prepared& p, const float* x, float* out, Activations& a, bool training);
  void layer_backward(int l, const Prepared& p, const float* x, const float* dout, float* dx,
                      Activations& a, bool training);
  // Runs the decoder stack; keeps what backward needs in acts / residuals.
  void run_stack(const Prepared& p, bool training, bool keep_for_backward);
  template <typename Fn> void for_each_linear(Fn&& fn);
  nn::Linear* find_linear(const std::string& module);
  float* norm_weight(const std::string& name, bool grad);

  LlamaConfig cfg_;
  LoadOptions opt_;
  std::unique_ptr<nn::Linear> embed_;    // [V, C] (read as an embedding table)
  std::unique_ptr<nn::Linear> lm_head_;  // [V, C]; null when tied (embed_ is used)
  std::vector<std::unique_ptr<Layer>> layers_;
  AlignedBuffer final_norm_, d_final_norm_;  // [C]
  bool train_all_ = false;
  bool checkpointing_ = false;
  std::string active_adapter_;
  std::map<std::string, AdapterConfig> adapters_;
  uint64_t step_ = 0;  // forward_backward calls: part of the dropout key

  // Scratch kept between calls to avoid re-allocating: residual stream [L+1][N, C] and per-layer
  // activations (one set when checkpointing).
  std::vector<AlignedBuffer> residual_;
  std::vector<std::unique_ptr<Activations>> acts_;
  AlignedBuffer final_hidden_, final_rstd_;
  // Loss-head scratch of forward_backward: one chunk of logits (~32 MiB, above glibc's mmap
  // threshold, so a fresh one per step cost page faults), d(final hidden), two gradient buffers.
  AlignedBuffer head_logits_, head_d_rows_, d_hidden_, grad_a_, grad_b_;
};

}  // namespace ecomllm::model
