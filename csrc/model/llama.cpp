#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <regex>

#include "base/error.h"
#include "base/half.h"
#include "base/parallel.h"
#include "nn/attention.h"
#include "nn/cross_entropy.h"
#include "nn/embedding.h"
#include "nn/rmsnorm.h"
#include "nn/rope.h"
#include "nn/swiglu.h"

namespace ecomllm::model {

namespace {

constexpr const char* kProjNames[kNumProj] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                             "gate_proj", "up_proj", "down_proj"};
constexpr const char* kProjModules[kNumProj] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                               "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                               "mlp.down_proj"};
// Prefix PEFT gives every adapter tensor of a *ForCausalLM model in its saved files.
constexpr const char* kPeftPrefix = "base_model.model.";

float* zeros(AlignedBuffer& b, int64_t n) {
  if (static_cast<int64_t>(b.size()) < n * 4) b = AlignedBuffer(static_cast<size_t>(n) * 4);
  std::memset(b.data(), 0, static_cast<size_t>(n) * 4);
  return b.as<float>();
}

float* sized(AlignedBuffer& b, int64_t n) {
  if (static_cast<int64_t>(b.size()) < n * 4) b = AlignedBuffer(static_cast<size_t>(n) * 4);
  return b.as<float>();
}

void add_inplace(float* y, const float* x, int64_t n) {
  parallel_for(0, n, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] += x[i];
  });
}

// A dropout key unique per (training step, layer, projection): the LoRA dropout mask is a pure
// function of it, so a checkpointed recomputation and the backward regenerate the same mask.
uint64_t dropout_key(uint64_t step, int layer, int proj) {
  return (step << 24) ^ (static_cast<uint64_t>(layer) << 4) ^ static_cast<uint64_t>(proj);
}

bool module_matches(const AdapterConfig& cfg, const std::string& module) {
  if (!cfg.target_regex.empty()) return std::regex_match(module, std::regex(cfg.target_regex));
  for (const std::string& t : cfg.target_modules) {
    if (t == "all-linear") return true;
    if (module == t) return true;
    if (module.size() > t.size() && module.compare(module.size() - t.size(), t.size(), t) == 0 &&
        module[module.size() - t.size() - 1] == '.')
      return true;
  }
  return false;
}

// Splits "model.layers.{i}.{rest}" into (i, rest); false when the name is not of that form or i is
// not a layer of this model.
bool split_layer_name(const std::string& name, int64_t num_layers, int64_t* layer, std::string* rest) {
  const std::string pre = "model.layers.";
  if (name.rfind(pre, 0) != 0) return false;
  const size_t dot = name.find('.', pre.size());
  if (dot == std::string::npos) return false;
  const std::string idx = name.substr(pre.size(), dot - pre.size());
  if (idx.empty() || idx.size() > 6 || !std::all_of(idx.begin(), idx.end(), ::isdigit)) return false;
  *layer = std::stoll(idx);
  *rest = name.substr(dot + 1);
  return *layer < num_layers;
}

}  // namespace

const char* proj_name(int p) { return kProjNames[p]; }
const char* proj_module(int p) { return kProjModules[p]; }

ProjShape proj_shape(const LlamaConfig& c, int p) {
  const int64_t C = c.hidden_size, I = c.intermediate_size;
  const ProjShape shapes[kNumProj] = {{c.q_dim(), C}, {c.kv_dim(), C}, {c.kv_dim(), C}, {C, c.q_dim()},
                                      {I, C},         {I, C},          {C, I}};
  return shapes[p];
}

struct LlamaModel::Layer {
  AlignedBuffer input_norm, post_norm;      // [C]
  AlignedBuffer d_input_norm, d_post_norm;  // [C], full-parameter training only
  std::array<std::unique_ptr<nn::Linear>, kNumProj> proj;
};

// Everything one decoder layer's backward needs, [N, ...] each.
struct LlamaModel::Activations {
  AlignedBuffer h1, rstd1, q, k, v, att, lse, xm, h2, rstd2, g, u, a;
  void allocate(const LlamaConfig& c, int64_t N) {
    const int64_t C = c.hidden_size, I = c.intermediate_size;
    sized(h1, N * C), sized(rstd1, N), sized(q, N * c.q_dim()), sized(k, N * c.kv_dim());
    sized(v, N * c.kv_dim()), sized(att, N * c.q_dim()), sized(lse, N * c.num_attention_heads);
    sized(xm, N * C), sized(h2, N * C), sized(rstd2, N), sized(g, N * I), sized(u, N * I), sized(a, N * I);
  }
};

// A validated batch: token ids, positions and attention segments ([B, T] each).
struct LlamaModel::Prepared {
  int64_t B = 0, T = 0, N = 0;
  const int32_t* ids = nullptr;
  std::vector<int32_t> pos;
  std::vector<int32_t> seg;  // -1 = padding; otherwise the packed example's index in its row
};

LlamaModel::LlamaModel(const LlamaConfig& cfg, const LoadOptions& opt) : cfg_(cfg), opt_(opt) {
  cfg_.validate();
  const int64_t C = cfg_.hidden_size, V = cfg_.vocab_size;
  auto dense = [&](int64_t in, int64_t out) {
    auto lin = std::make_unique<nn::Linear>(in, out);
    std::vector<float> zero(static_cast<size_t>(in * out), 0.0f);
    if (opt_.bf16) {
      std::vector<uint16_t> z(zero.size(), 0);
      lin->set_weight_bf16(z.data());
    } else {
      lin->set_weight_f32(zero.data(), false);
    }
    return lin;
  };
  embed_ = dense(C, V);
  if (!cfg_.tie_word_embeddings) lm_head_ = dense(C, V);
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    auto layer = std::make_unique<Layer>();
    layer->input_norm = AlignedBuffer(static_cast<size_t>(C) * 4);
    layer->post_norm = AlignedBuffer(static_cast<size_t>(C) * 4);
    std::fill_n(layer->input_norm.as<float>(), C, 1.0f);
    std::fill_n(layer->post_norm.as<float>(), C, 1.0f);
    for (int p = 0; p < kNumProj; ++p) {
      const ProjShape s = proj_shape(cfg_, p);
      if (opt_.quantize_nf4) {
        // Placeholder storage until set_weight quantizes the real tensor: an all-zero NF4 matrix.
        std::vector<float> zero(static_cast<size_t>(s.in * s.out), 0.0f);
        auto lin = std::make_unique<nn::Linear>(s.in, s.out);
        lin->set_weight_nf4(quant::NF4Weight::quantize(TensorView::contiguous(zero.data(), DType::F32, {s.out, s.in}),
                                                       opt_.blocksize, opt_.double_quant));
        layer->proj[p] = std::move(lin);
      } else {
        layer->proj[p] = dense(s.in, s.out);
      }
    }
    layers_.push_back(std::move(layer));
  }
  final_norm_ = AlignedBuffer(static_cast<size_t>(C) * 4);
  std::fill_n(final_norm_.as<float>(), C, 1.0f);
}

LlamaModel::~LlamaModel() = default;

std::unique_ptr<LlamaModel> LlamaModel::from_config(const LlamaConfig& cfg, uint64_t seed, float init_std) {
  auto m = std::make_unique<LlamaModel>(cfg, LoadOptions{});
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, init_std);
  for (const std::string& name : m->weight_names()) {
    if (name.find("norm") != std::string::npos) continue;  // norms stay 1
    const auto shape = m->weight_shape(name);
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> w(static_cast<size_t>(n));
    for (float& x : w) x = normal(rng);
    m->set_weight(name, w.data(), n);
  }
  return m;
}

// ---- weights by name ---------------------------------------------------------------------------

std::vector<std::string> LlamaModel::weight_names() const {
  std::vector<std::string> names{"model.embed_tokens.weight"};
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    names.push_back(p + "input_layernorm.weight");
    for (int q = 0; q < kNumProj; ++q) names.push_back(p + kProjModules[q] + ".weight");
    names.push_back(p + "post_attention_layernorm.weight");
  }
  names.push_back("model.norm.weight");
  if (!cfg_.tie_word_embeddings) names.push_back("lm_head.weight");
  return names;
}

nn::Linear* LlamaModel::find_linear(const std::string& module) {
  if (module == "model.embed_tokens") return embed_.get();
  if (module == "lm_head") return lm_head_ ? lm_head_.get() : nullptr;
  int64_t l = 0;
  std::string rest;
  if (!split_layer_name(module, cfg_.num_hidden_layers, &l, &rest)) return nullptr;
  for (int p = 0; p < kNumProj; ++p)
    if (rest == kProjModules[p]) return layers_[l]->proj[p].get();
  return nullptr;
}

float* LlamaModel::norm_weight(const std::string& name, bool grad) {
  auto pick = [&](AlignedBuffer& w, AlignedBuffer& g) -> float* {
    if (!grad) return w.as<float>();
    return g.size() ? g.as<float>() : nullptr;
  };
  if (name == "model.norm.weight") return pick(final_norm_, d_final_norm_);
  int64_t l = 0;
  std::string rest;
  if (!split_layer_name(name, cfg_.num_hidden_layers, &l, &rest)) return nullptr;
  if (rest == "input_layernorm.weight") return pick(layers_[l]->input_norm, layers_[l]->d_input_norm);
  if (rest == "post_attention_layernorm.weight") return pick(layers_[l]->post_norm, layers_[l]->d_post_norm);
  return nullptr;
}

std::vector<int64_t> LlamaModel::weight_shape(const std::string& name) const {
  auto* self = const_cast<LlamaModel*>(this);
  if (self->norm_weight(name, false)) return {cfg_.hidden_size};
  const std::string suffix = ".weight";
  if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
    if (nn::Linear* lin = self->find_linear(name.substr(0, name.size() - suffix.size())))
      return {lin->out_features(), lin->in_features()};
  }
  throw ValueError(detail::concat("unknown weight '", name, "' for a ", cfg_.model_type, " model with ",
                                  cfg_.num_hidden_layers, " layers"));
}

void LlamaModel::set_weight(const std::string& name, const float* data, int64_t numel) {
  const auto shape = weight_shape(name);
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  ECOM_CHECK_ARG(numel == n, "weight '", name, "' needs ", n, " values, got ", numel);
  if (float* w = norm_weight(name, false)) {
    std::memcpy(w, data, static_cast<size_t>(n) * 4);
    return;
  }
  nn::Linear* lin = find_linear(name.substr(0, name.size() - 7));
  const bool trainable = lin->weight_trainable();
  switch (lin->format()) {
    case nn::WeightFormat::F32: lin->set_weight_f32(data, trainable); break;
    case nn::WeightFormat::BF16: {
      std::vector<uint16_t> h(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) h[i] = f32_to_bf16(data[i]);
      lin->set_weight_bf16(h.data());
      break;
    }
    case nn::WeightFormat::NF4:
      lin->set_weight_nf4(quant::NF4Weight::quantize(
          TensorView::contiguous(const_cast<float*>(data), DType::F32, {shape[0], shape[1]}), opt_.blocksize,
          opt_.double_quant));
      break;
  }
}

void LlamaModel::get_weight(const std::string& name, float* out) const {
  auto* self = const_cast<LlamaModel*>(this);
  if (const float* w = self->norm_weight(name, false)) {
    std::memcpy(out, w, static_cast<size_t>(cfg_.hidden_size) * 4);
    return;
  }
  weight_shape(name);  // validates the name
  self->find_linear(name.substr(0, name.size() - 7))->dequantize_weight(out);
}

// ---- training switches -------------------------------------------------------------------------

void LlamaModel::set_train_all(bool on) {
  if (on == train_all_) return;
  const int64_t C = cfg_.hidden_size;
  auto grad_buffer = [&](AlignedBuffer& g) { g = on ? AlignedBuffer(static_cast<size_t>(C) * 4, true) : AlignedBuffer(); };
  if (on) {
    for_each_linear([&](const std::string& module, nn::Linear& lin) {
      ECOM_CHECK_ARG(lin.format() == nn::WeightFormat::F32, "full-parameter training needs fp32 weights, but ",
                     module, " is stored as ", lin.format() == nn::WeightFormat::NF4 ? "NF4" : "bf16");
    });
  }
  for_each_linear([&](const std::string&, nn::Linear& lin) {
    std::vector<float> w(static_cast<size_t>(lin.in_features() * lin.out_features()));
    lin.dequantize_weight(w.data());
    lin.set_weight_f32(w.data(), on);
  });
  for (auto& layer : layers_) grad_buffer(layer->d_input_norm), grad_buffer(layer->d_post_norm);
  grad_buffer(d_final_norm_);
  train_all_ = on;
}

template <typename Fn>
void LlamaModel::for_each_linear(Fn&& fn) {
  fn(std::string("model.embed_tokens"), *embed_);
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l)
    for (int p = 0; p < kNumProj; ++p)
      fn("model.layers." + std::to_string(l) + "." + kProjModules[p], *layers_[l]->proj[p]);
  if (lm_head_) fn(std::string("lm_head"), *lm_head_);
}

int64_t LlamaModel::prepare_decoding(bool enabled, bool keep_codes) {
  int64_t count = 0;
  for_each_linear([&](const std::string& name, nn::Linear& lin) {
    if (name != "model.embed_tokens") count += lin.prepare_decoding(enabled, keep_codes) ? 1 : 0;  // a lookup table
  });
  return count;
}

int64_t LlamaModel::decoding_nbytes() {
  int64_t n = 0;
  for_each_linear([&](const std::string&, nn::Linear& lin) { n += lin.decoding_nbytes(); });
  return n;
}

// ---- adapters ----------------------------------------------------------------------------------

int64_t LlamaModel::add_adapter(const std::string& name, const AdapterConfig& cfg) {
  ECOM_CHECK_ARG(!name.empty(), "adapter name must not be empty");
  ECOM_CHECK_ARG(!adapters_.count(name), "an adapter named '", name, "' already exists");
  ECOM_CHECK_ARG(!cfg.target_modules.empty() || !cfg.target_regex.empty(), "adapter '", name,
                 "': target_modules is empty");
  if (!cfg.target_regex.empty()) {
    try {
      std::regex check(cfg.target_regex);
    } catch (const std::regex_error& e) {
      throw ValueError(detail::concat("target_modules regex '", cfg.target_regex, "' is invalid: ", e.what()));
    }
  }
  std::vector<std::pair<int64_t, int>> targets;
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l)
    for (int p = 0; p < kNumProj; ++p)
      if (module_matches(cfg, "model.layers." + std::to_string(l) + "." + kProjModules[p])) targets.push_back({l, p});
  ECOM_CHECK_ARG(!targets.empty(), "adapter '", name, "': target_modules match no projection (the projections are ",
                 "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)");
  int64_t i = 0;
  for (auto [l, p] : targets) {
    nn::LoraSpec spec = cfg.spec;
    spec.seed = cfg.spec.seed * 1000003ULL + static_cast<uint64_t>(i++);  // distinct init per module
    layers_[l]->proj[p]->add_adapter(name, spec);
  }
  adapters_[name] = cfg;
  set_active_adapter(name);
  return static_cast<int64_t>(targets.size());
}

void LlamaModel::set_active_adapter(const std::string& name) {
  ECOM_CHECK_ARG(name.empty() || adapters_.count(name), "no adapter named '", name, "'");
  for (auto& layer : layers_)
    for (auto& lin : layer->proj) lin->set_active_adapter(lin->adapter(name) ? name : std::string());
  active_adapter_ = name;
}

void LlamaModel::remove_adapter(const std::string& name) {
  ECOM_CHECK_ARG(adapters_.count(name), "no adapter named '", name, "'");
  for (auto& layer : layers_)
    for (auto& lin : layer->proj)
      if (lin->adapter(name)) {
        if (lin->active_adapter() == name) lin->set_active_adapter("");
        lin->remove_adapter(name);
      }
  adapters_.erase(name);
  if (active_adapter_ == name) active_adapter_.clear();
}

std::vector<std::string> LlamaModel::adapter_names() const {
  std::vector<std::string> out;
  for (const auto& kv : adapters_) out.push_back(kv.first);
  return out;
}

const AdapterConfig& LlamaModel::adapter_config(const std::string& name) const {
  auto it = adapters_.find(name);
  ECOM_CHECK_ARG(it != adapters_.end(), "no adapter named '", name, "'");
  return it->second;
}

std::vector<std::string> LlamaModel::adapter_modules(const std::string& name) const {
  std::vector<std::string> out;
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l)
    for (int p = 0; p < kNumProj; ++p)
      if (layers_[l]->proj[p]->adapter(name))
        out.push_back("model.layers." + std::to_string(l) + "." + kProjModules[p]);
  return out;
}

nn::LoraAdapter* LlamaModel::lora(const std::string& adapter, const std::string& module) {
  nn::Linear* lin = find_linear(module);
  return lin ? lin->adapter(adapter) : nullptr;
}

void LlamaModel::merge_adapter() {
  ECOM_CHECK_ARG(!active_adapter_.empty(), "merge_adapter: no active adapter");
  for (auto& layer : layers_)
    for (auto& lin : layer->proj)
      if (!lin->active_adapter().empty() && !lin->merged()) lin->merge_active();
}

void LlamaModel::unmerge_adapter() {
  for (auto& layer : layers_)
    for (auto& lin : layer->proj)
      if (lin->merged()) lin->unmerge();
}

nn::ParamList LlamaModel::trainable_parameters() {
  nn::ParamList out;
  const int64_t C = cfg_.hidden_size;
  auto norm = [&](const std::string& name, AlignedBuffer& w, AlignedBuffer& g) {
    out.push_back(nn::ParamRef{name, w.as<float>(), g.as<float>(), {C}});
  };
  if (train_all_) {
    embed_->collect_trainable("model.embed_tokens", out);
  }
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    Layer& layer = *layers_[l];
    if (train_all_) norm(pre + "input_layernorm.weight", layer.input_norm, layer.d_input_norm);
    for (int p = 0; p < kNumProj; ++p) {
      // Base weights keep HF names; LoRA tensors get PEFT's saved names.
      nn::ParamList one;
      layer.proj[p]->collect_trainable(pre + kProjModules[p], one);
      for (auto& ref : one) {
        if (ref.name.find(".lora_") != std::string::npos) ref.name = kPeftPrefix + ref.name;
        out.push_back(std::move(ref));
      }
    }
    if (train_all_) norm(pre + "post_attention_layernorm.weight", layer.post_norm, layer.d_post_norm);
  }
  if (train_all_) {
    norm("model.norm.weight", final_norm_, d_final_norm_);
    if (lm_head_) lm_head_->collect_trainable("lm_head", out);
  }
  return out;
}

void LlamaModel::zero_grad() {
  for (auto& ref : trainable_parameters()) std::memset(ref.grad, 0, static_cast<size_t>(ref.numel()) * 4);
}

int64_t LlamaModel::num_parameters(bool trainable_only) const {
  auto* self = const_cast<LlamaModel*>(this);
  if (trainable_only) {
    int64_t n = 0;
    for (const auto& ref : self->trainable_parameters()) n += ref.numel();
    return n;
  }
  int64_t n = 0;
  for (const std::string& name : weight_names()) {
    int64_t k = 1;
    for (int64_t d : weight_shape(name)) k *= d;
    n += k;
  }
  for (const auto& [name, cfg] : adapters_)
    for (const std::string& module : adapter_modules(name)) {
      nn::Linear* lin = self->find_linear(module);
      n += cfg.spec.r * (lin->in_features() + lin->out_features());
    }
  return n;
}

// ---- compute -----------------------------------------------------------------------------------

LlamaModel::Prepared LlamaModel::prepare(const BatchInput& in) const {
  ECOM_CHECK_ARG(in.B > 0 && in.T > 0, "input_ids must be a non-empty [B, T] array, got [", in.B, ", ", in.T, "]");
  ECOM_CHECK_ARG(in.ids != nullptr, "input_ids missing");
  Prepared p;
  p.B = in.B, p.T = in.T, p.N = in.B * in.T, p.ids = in.ids;
  for (int64_t i = 0; i < p.N; ++i)
    ECOM_CHECK_ARG(in.ids[i] >= 0 && in.ids[i] < cfg_.vocab_size, "input_ids[", i / in.T, ", ", i % in.T, "] = ",
                   in.ids[i], " is outside the vocabulary [0, ", cfg_.vocab_size, ")");
  p.pos.resize(static_cast<size_t>(p.N));
  p.seg.resize(static_cast<size_t>(p.N));
  for (int64_t b = 0; b < in.B; ++b) {
    int32_t segment = 0;
    for (int64_t t = 0; t < in.T; ++t) {
      const int64_t i = b * in.T + t;
      int32_t pos = static_cast<int32_t>(t);
      if (in.position_ids) {
        pos = in.position_ids[i];
        ECOM_CHECK_ARG(pos >= 0, "position_ids must be non-negative, got ", pos);
        if (t > 0 && pos == 0) ++segment;  // a packed example starts
      }
      p.pos[i] = pos;
      const bool real = in.attention_mask ? in.attention_mask[i] != 0 : true;
      p.seg[i] = real ? segment : -1;
    }
  }
  return p;
}

void LlamaModel::embed_tokens(const Prepared& p, float* x) const {
  const int64_t V = cfg_.vocab_size, C = cfg_.hidden_size;
  if (embed_->format() == nn::WeightFormat::BF16)
    nn::embedding_forward_bf16(x, p.ids, embed_->weight_bf16(), p.N, V, C);
  else
    nn::embedding_forward(x, p.ids, embed_->weight_f32(), p.N, V, C);
}

void LlamaModel::layer_forward(int l, const Prepared& p, const float* x, float* out, Activations& a, bool training) {
  const LlamaConfig& c = cfg_;
  const int64_t N = p.N, C = c.hidden_size, I = c.intermediate_size;
  Layer& layer = *layers_[l];
  auto proj = [&](int which, float* y, const float* in) {
    layer.proj[which]->forward(y, in, N, training, dropout_key(step_, l, which), /*save_for_backward=*/training);
  };
  nn::rmsnorm_forward(a.h1.as<float>(), a.rstd1.as<float>(), x, layer.input_norm.as<float>(), N, C,
                      static_cast<float>(c.rms_norm_eps));
  proj(kQ, a.q.as<float>(), a.h1.as<float>());
  proj(kK, a.k.as<float>(), a.h1.as<float>());
  proj(kV, a.v.as<float>(), a.h1.as<float>());
  const float theta = static_cast<float>(c.rope_theta);
  nn::rope_forward(a.q.as<float>(), p.pos.data(), N, c.num_attention_heads, c.head_dim, theta);
  nn::rope_forward(a.k.as<float>(), p.pos.data(), N, c.num_key_value_heads, c.head_dim, theta);
  nn::AttentionDims dims{p.B, p.T, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.sliding_window,
                         1.0f / std::sqrt(static_cast<float>(c.head_dim))};
  nn::attention_forward(a.att.as<float>(), a.lse.as<float>(), a.q.as<float>(), a.k.as<float>(), a.v.as<float>(),
                        p.seg.data(), dims);
  float* xm = a.xm.as<float>();
  proj(kO, xm, a.att.as<float>());
  add_inplace(xm, x, N * C);
  nn::rmsnorm_forward(a.h2.as<float>(), a.rstd2.as<float>(), xm, layer.post_norm.as<float>(), N, C,
                      static_cast<float>(c.rms_norm_eps));
  proj(kGate, a.g.as<float>(), a.h2.as<float>());
  proj(kUp, a.u.as<float>(), a.h2.as<float>());
  nn::swiglu_forward(a.a.as<float>(), a.g.as<float>(), a.u.as<float>(), N * I);
  proj(kDown, out, a.a.as<float>());
  add_inplace(out, xm, N * C);
}

// dout: gradient of this layer's output [N, C]; dx receives (=) the gradient of its input, or is
// null when nothing upstream needs it (layer 0 under a frozen embedding): then the q/k/v input
// products and the input norm's backward are skipped (their LoRA gradients are still computed).
void LlamaModel::layer_backward(int l, const Prepared& p, const float* x, const float* dout, float* dx,
                                Activations& a, bool training) {
  const LlamaConfig& c = cfg_;
  const int64_t N = p.N, C = c.hidden_size, I = c.intermediate_size;
  Layer& layer = *layers_[l];
  // accumulate = false for the first product into a gradient buffer: it is overwritten, not zeroed
  // first and then added to (saves a pass over the buffer and the kernels' reads of zeros).
  auto proj_back = [&](int which, float* d_in, const float* dy, const float* in, bool accumulate) {
    layer.proj[which]->backward(d_in, dy, in, N, training, dropout_key(step_, l, which), accumulate);
  };
  thread_local AlignedBuffer s_da, s_dg, s_du, s_dh, s_dxm, s_datt, s_dq, s_dk, s_dv;
  float* da = sized(s_da, N * I);
  proj_back(kDown, da, dout, a.a.as<float>(), false);
  float* dg = sized(s_dg, N * I);
  float* du = sized(s_du, N * I);
  nn::swiglu_backward(dg, du, da, a.g.as<float>(), a.u.as<float>(), N * I, /*accumulate=*/false);
  float* dh2 = sized(s_dh, N * C);
  proj_back(kGate, dh2, dg, a.h2.as<float>(), false);
  proj_back(kUp, dh2, du, a.h2.as<float>(), true);
  float* dxm = sized(s_dxm, N * C);
  std::memcpy(dxm, dout, static_cast<size_t>(N * C) * 4);
  nn::rmsnorm_backward(dxm, train_all_ ? layer.d_post_norm.as<float>() : nullptr, dh2, a.xm.as<float>(),
                       layer.post_norm.as<float>(), a.rstd2.as<float>(), N, C);
  float* datt = sized(s_datt, N * c.q_dim());
  proj_back(kO, datt, dxm, a.att.as<float>(), false);
  float* dq = zeros(s_dq, N * c.q_dim());
  float* dk = zeros(s_dk, N * c.kv_dim());
  float* dv = zeros(s_dv, N * c.kv_dim());
  nn::AttentionDims dims{p.B, p.T, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.sliding_window,
                         1.0f / std::sqrt(static_cast<float>(c.head_dim))};
  nn::attention_backward(dq, dk, dv, datt, a.q.as<float>(), a.k.as<float>(), a.v.as<float>(), a.att.as<float>(),
                         a.lse.as<float>(), p.seg.data(), dims);
  const float theta = static_cast<float>(c.rope_theta);
  nn::rope_backward(dq, p.pos.data(), N, c.num_attention_heads, c.head_dim, theta);
  nn::rope_backward(dk, p.pos.data(), N, c.num_key_value_heads, c.head_dim, theta);
  const bool input_grad = dx != nullptr || train_all_;  // train_all_: the input norm's weight needs dh1
  float* dh1 = input_grad ? sized(s_dh, N * C) : nullptr;
  proj_back(kQ, dh1, dq, a.h1.as<float>(), false);
  proj_back(kK, dh1, dk, a.h1.as<float>(), true);
  proj_back(kV, dh1, dv, a.h1.as<float>(), true);
  if (!input_grad) return;
  if (!dx) dx = sized(s_da, N * C);  // only the norm's weight gradient is wanted; da is free now
  std::memcpy(dx, dxm, static_cast<size_t>(N * C) * 4);
  nn::rmsnorm_backward(dx, train_all_ ? layer.d_input_norm.as<float>() : nullptr, dh1, x,
                       layer.input_norm.as<float>(), a.rstd1.as<float>(), N, C);
}

void LlamaModel::run_stack(const Prepared& p, bool training, bool keep_for_backward) {
  const int64_t L = cfg_.num_hidden_layers, N = p.N, C = cfg_.hidden_size;
  // Residual stream: all L+1 states when backward follows (the checkpoints), else two buffers.
  const int64_t states = keep_for_backward ? L + 1 : 2;
  residual_.resize(static_cast<size_t>(std::max<int64_t>(states, residual_.size())));
  for (int64_t s = 0; s < states; ++s) sized(residual_[s], N * C);
  const int64_t sets = (keep_for_backward && !checkpointing_) ? L : 1;
  while (static_cast<int64_t>(acts_.size()) < sets) acts_.push_back(std::make_unique<Activations>());
  for (int64_t s = 0; s < sets; ++s) acts_[s]->allocate(cfg_, N);

  embed_tokens(p, residual_[0].as<float>());
  for (int64_t l = 0; l < L; ++l) {
    const int64_t in = keep_for_backward ? l : (l % 2), out = keep_for_backward ? l + 1 : 1 - (l % 2);
    Activations& a = *acts_[sets == L ? l : 0];
    layer_forward(static_cast<int>(l), p, residual_[in].as<float>(), residual_[out].as<float>(), a, training);
  }
  const int64_t last = keep_for_backward ? L : (L % 2);
  nn::rmsnorm_forward(sized(final_hidden_, N * C), sized(final_rstd_, N), residual_[last].as<float>(),
                      final_norm_.as<float>(), N, C, static_cast<float>(cfg_.rms_norm_eps));
}

void LlamaModel::forward(const BatchInput& in, float* logits) {
  const Prepared p = prepare(in);
  run_stack(p, /*training=*/false, /*keep_for_backward=*/false);
  const nn::Linear& head = lm_head_ ? *lm_head_ : *embed_;
  head.forward(logits, final_hidden_.as<float>(), p.N, false, 0);
}

namespace {

// Labels shifted the way transformers' causal-LM loss does: row (b, t) predicts labels[b, t+1].
std::vector<int32_t> shifted_targets(const int32_t* labels, int64_t B, int64_t T, int64_t V, int64_t* count) {
  std::vector<int32_t> tgt(static_cast<size_t>(B * T), -100);
  *count = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < T; ++t) {
      const int32_t y = labels[b * T + t + 1];
      ECOM_CHECK_ARG(y == -100 || (y >= 0 && y < V), "labels[", b, ", ", t + 1, "] = ", y,
                     " is neither -100 nor a token id in [0, ", V, ")");
      tgt[b * T + t] = y;
      if (y != -100) ++*count;
    }
  return tgt;
}

// The rows of the final hidden state [N, C] that have a target (!= -100), gathered into a compact
// [count, C] copy with their targets when some rows have none; scatter() puts row gradients back.
class TargetRows {
 public:
  TargetRows(const std::vector<int32_t>& tgt, const float* hidden, int64_t C) : C_(C), hidden_(hidden) {
    for (int64_t i = 0; i < static_cast<int64_t>(tgt.size()); ++i)
      if (tgt[i] != -100) index_.push_back(i);
    all_ = index_.size() == tgt.size();
    if (all_) {
      targets_ptr_ = tgt.data();
      return;
    }
    targets_.reserve(index_.size());
    for (int64_t i : index_) targets_.push_back(tgt[static_cast<size_t>(i)]);
    targets_ptr_ = targets_.data();
    compact_ = AlignedBuffer(static_cast<size_t>(std::max<int64_t>(1, count() * C)) * 4);
    float* out = compact_.as<float>();
    parallel_for(0, count(), 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        std::memcpy(out + r * C, hidden + index_[static_cast<size_t>(r)] * C, static_cast<size_t>(C) * 4);
    });
  }
  int64_t count() const { return static_cast<int64_t>(index_.size()); }
  bool all() const { return all_; }
  const float* hidden() const { return all_ ? hidden_ : compact_.as<float>(); }  // [count, C]
  const int32_t* targets() const { return targets_ptr_; }                         // [count]
  // full[index[r], :] = rows[r, :] for every compact row r (full's other rows are left as they are).
  void scatter(const float* rows, float* full) const {
    parallel_for(0, count(), 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        std::memcpy(full + index_[static_cast<size_t>(r)] * C_, rows + r * C_, static_cast<size_t>(C_) * 4);
    });
  }

 private:
  int64_t C_;
  const float* hidden_;
  std::vector<int64_t> index_;
  std::vector<int32_t> targets_;
  const int32_t* targets_ptr_ = nullptr;
  AlignedBuffer compact_;
  bool all_ = true;
};

// Rows of logits the loss materialises at once, for R rows with a target: at most 64 MiB of fp32,
// so [N, V] never is, in chunks of equal size. Each chunk runs the lm_head's forward and backward
// over all of its weight (98 MiB at 32000 x 768), so fewer, larger chunks save passes over it
// (1020 rows: 2 chunks; with 32 MiB chunks it was 4, ~3% of the 100M benchmark model's step).
int64_t loss_chunk_rows(int64_t V, int64_t R) {
  const int64_t max_rows = std::max<int64_t>(1, (int64_t{16} << 20) / V);
  const int64_t chunks = std::max<int64_t>(1, (R + max_rows - 1) / max_rows);
  return std::max<int64_t>(1, (R + chunks - 1) / chunks);
}

}  // namespace

LossResult LlamaModel::loss(const BatchInput& in, const int32_t* labels) {
  const Prepared p = prepare(in);
  LossResult r;
  const std::vector<int32_t> tgt = shifted_targets(labels, p.B, p.T, cfg_.vocab_size, &r.num_targets);
  run_stack(p, false, false);
  const nn::Linear& head = lm_head_ ? *lm_head_ : *embed_;
  const int64_t V = cfg_.vocab_size, C = cfg_.hidden_size;
  const TargetRows rows(tgt, final_hidden_.as<float>(), C);
  const int64_t R = rows.count(), chunk = loss_chunk_rows(V, R);
  AlignedBuffer logits(static_cast<size_t>(std::max<int64_t>(1, std::min(chunk, R) * V)) * 4);
  for (int64_t r0 = 0; r0 < R; r0 += chunk) {
    const int64_t n = std::min(chunk, R - r0);
    head.forward(logits.as<float>(), rows.hidden() + r0 * C, n, false, 0);
    r.loss_sum += nn::cross_entropy_forward(logits.as<float>(), rows.targets() + r0, n, V);
  }
  return r;
}

LossResult LlamaModel::forward_backward(const BatchInput& in, const int32_t* labels, float grad_scale) {
  const Prepared p = prepare(in);
  LossResult r;
  const std::vector<int32_t> tgt = shifted_targets(labels, p.B, p.T, cfg_.vocab_size, &r.num_targets);
  ++step_;
  const int64_t L = cfg_.num_hidden_layers, N = p.N, C = cfg_.hidden_size, V = cfg_.vocab_size;
  run_stack(p, /*training=*/true, /*keep_for_backward=*/true);
  if (grad_scale <= 0.0f) grad_scale = r.num_targets > 0 ? 1.0f / static_cast<float>(r.num_targets) : 0.0f;

  // Loss head, a chunk of rows at a time: logits -> dlogits in place -> d(final hidden). Only rows
  // with a target run through it (SFT masks prompts with -100: their logits are never needed);
  // the other rows of d_hidden stay zero.
  nn::Linear& head = lm_head_ ? *lm_head_ : *embed_;
  const TargetRows rows(tgt, final_hidden_.as<float>(), C);
  const int64_t R = rows.count(), chunk = loss_chunk_rows(V, R);
  float* d_hidden = zeros(d_hidden_, N * C);
  float* dh = rows.all() ? d_hidden : zeros(head_d_rows_, std::max<int64_t>(1, R * C));
  float* logits = sized(head_logits_, std::max<int64_t>(1, std::min(chunk, R) * V));
  for (int64_t r0 = 0; r0 < R; r0 += chunk) {
    const int64_t n = std::min(chunk, R - r0);
    const float* h = rows.hidden() + r0 * C;
    head.forward(logits, h, n, true, 0);
    r.loss_sum += nn::cross_entropy_forward_backward(logits, rows.targets() + r0, n, V, grad_scale);
    head.backward(dh + r0 * C, logits, h, n, true, 0);
  }
  if (!rows.all()) rows.scatter(dh, d_hidden);
  float* grad_a = zeros(grad_a_, N * C);
  nn::rmsnorm_backward(grad_a, train_all_ ? d_final_norm_.as<float>() : nullptr, d_hidden, residual_[L].as<float>(),
                       final_norm_.as<float>(), final_rstd_.as<float>(), N, C);

  // Decoder layers in reverse; with checkpointing each layer's activations are recomputed first.
  float* d_out = grad_a;
  float* d_in = sized(grad_b_, N * C);
  AlignedBuffer scratch_out;
  const bool embed_grad = train_all_ && embed_->weight_grad();
  for (int64_t l = L - 1; l >= 0; --l) {
    Activations& a = *acts_[checkpointing_ ? 0 : l];
    if (checkpointing_)
      layer_forward(static_cast<int>(l), p, residual_[l].as<float>(), sized(scratch_out, N * C), a, true);
    layer_backward(static_cast<int>(l), p, residual_[l].as<float>(), d_out, (l > 0 || embed_grad) ? d_in : nullptr, a,
                   true);
    std::swap(d_out, d_in);
  }
  if (embed_grad)
    nn::embedding_backward(embed_->weight_grad(), d_out, p.ids, N, V, C);
  return r;
}

}  // namespace ecomllm::model
