// Hugging Face checkpoints (config.json + safetensors, dense or bitsandbytes NF4) in and out of a
// LlamaModel, and PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors).
#include <filesystem>
#include <fstream>
#include <set>

#include "base/error.h"
#include "base/half.h"
#include "io/json_util.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "model/peft.h"

namespace ecomllm::model {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kPeftPrefix = "base_model.model.";

using io::read_json_file;

void write_json_file(const fs::path& path, const json& j) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp);
    ECOM_CHECK(out.good(), "cannot write ", tmp.string());
    out << j.dump(2) << "\n";
    ECOM_CHECK(out.good(), "writing ", tmp.string(), " failed");
  }
  fs::rename(tmp, path);
}

template <typename T>
std::vector<T> read_raw(const io::Checkpoint& ck, const std::string& name, io::StDType want, int64_t numel) {
  const io::TensorInfo& info = ck.info(name);
  ECOM_CHECK_ARG(info.dtype == want, name, ": expected dtype ", io::st_dtype_name(want), ", got ",
                 io::st_dtype_name(info.dtype));
  ECOM_CHECK_ARG(numel < 0 || info.numel() == numel, name, ": expected ", numel, " elements, got ", info.numel());
  std::vector<T> out(static_cast<size_t>(info.numel()));
  std::memcpy(out.data(), ck.data(name), out.size() * sizeof(T));
  return out;
}

// A projection stored in bitsandbytes' NF4 state-dict layout (weight = packed bytes plus
// weight.absmax, weight.quant_map, optional nested_* and the quant_state JSON).
quant::NF4Weight load_bnb_nf4(const io::Checkpoint& ck, const std::string& w, int64_t rows, int64_t cols) {
  std::string qs_key;
  for (const std::string& n : ck.names())
    if (n.rfind(w + ".quant_state.bitsandbytes__", 0) == 0) qs_key = n;
  ECOM_CHECK_ARG(!qs_key.empty(), w, ": NF4 tensors without a quant_state.bitsandbytes__nf4 entry");
  ECOM_CHECK_ARG(qs_key == w + ".quant_state.bitsandbytes__nf4", w, ": only NF4 is supported, found ", qs_key);
  const auto raw = read_raw<uint8_t>(ck, qs_key, io::StDType::U8, -1);
  const json meta = io::parse_untrusted_json(std::string_view(reinterpret_cast<const char*>(raw.data()), raw.size()), qs_key);
  ECOM_CHECK_ARG(meta.is_object() && meta.value("blocksize", json()).is_number_integer(), qs_key,
                 ": missing integer 'blocksize'");
  const int64_t blocksize = meta["blocksize"].get<int64_t>();
  if (meta.contains("shape")) {
    const json& shape = meta["shape"];
    ECOM_CHECK_ARG(shape.is_array() && shape.size() == 2 && shape[0] == rows && shape[1] == cols, qs_key,
                   ": shape ", io::short_dump(shape), " does not match [", rows, ", ", cols, "]");
  }
  const int64_t n = rows * cols, nblocks = (n + blocksize - 1) / blocksize;
  const auto packed = read_raw<uint8_t>(ck, w, io::StDType::U8, (n + 1) / 2);
  const auto code = read_raw<float>(ck, w + ".quant_map", io::StDType::F32, 16);
  if (ck.contains(w + ".nested_absmax")) {
    const auto q = read_raw<uint8_t>(ck, w + ".absmax", io::StDType::U8, nblocks);
    const auto nested = read_raw<float>(ck, w + ".nested_absmax", io::StDType::F32, (nblocks + 255) / 256);
    const auto nested_code = read_raw<float>(ck, w + ".nested_quant_map", io::StDType::F32, 256);
    ECOM_CHECK_ARG(meta.value("nested_offset", json()).is_number(), qs_key, ": missing 'nested_offset'");
    return quant::NF4Weight::from_bnb(rows, cols, blocksize, packed.data(), code.data(), nullptr, q.data(),
                                      nested.data(), nested_code.data(), meta["nested_offset"].get<float>());
  }
  const auto absmax = read_raw<float>(ck, w + ".absmax", io::StDType::F32, nblocks);
  return quant::NF4Weight::from_bnb(rows, cols, blocksize, packed.data(), code.data(), absmax.data(), nullptr,
                                    nullptr, nullptr, 0.0f);
}

// Every weight config.json implies is in the checkpoint with its shape (dense) or its element
// count (bitsandbytes NF4: packed codes), checked on the metadata before the model is built: a
// config.json that disagrees (say 10^6 layers, or a 7B default over a tiny file) would otherwise
// allocate and zero-fill the model it describes first.
void check_checkpoint_fits_config(const LlamaConfig& c, const io::Checkpoint& ck, const std::string& dir) {
  auto expect = [&](const std::string& name, std::vector<int64_t> shape) {
    ECOM_CHECK_ARG(ck.contains(name), dir, ": the checkpoint has no tensor '", name, "' (config.json: ",
                   c.num_hidden_layers, " layers, hidden_size ", c.hidden_size, ")");
    const io::TensorInfo& info = ck.info(name);
    if (shape.size() == 2 && ck.contains(name + ".absmax")) {
      ECOM_CHECK_ARG(info.numel() == (shape[0] * shape[1] + 1) / 2, name, ": ", info.numel(),
                     " packed NF4 bytes do not match config.json's [", shape[0], ", ", shape[1], "]");
      return;
    }
    auto text = [](const std::vector<int64_t>& v) {
      std::string out = "[";
      for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
      return out + "]";
    };
    ECOM_CHECK_ARG(info.shape == shape, name, ": shape ", text(info.shape), " in the checkpoint does not match ",
                   text(shape), " from config.json");
  };
  const int64_t C = c.hidden_size, V = c.vocab_size;
  expect("model.embed_tokens.weight", {V, C});
  if (!c.tie_word_embeddings) expect("lm_head.weight", {V, C});
  expect("model.norm.weight", {C});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    expect(p + "input_layernorm.weight", {C});
    expect(p + "post_attention_layernorm.weight", {C});
    for (int q = 0; q < kNumProj; ++q) {
      const ProjShape s = proj_shape(c, q);
      expect(p + proj_module(q) + ".weight", {s.out, s.in});
    }
  }
}

}  // namespace

std::unique_ptr<LlamaModel> LlamaModel::from_pretrained(const std::string& dir, const LoadOptions& opt) {
  const fs::path root(dir);
  ECOM_CHECK_ARG(fs::is_directory(root), dir, " is not a directory (expected a Hugging Face model folder)");
  const LlamaConfig cfg = LlamaConfig::from_file((root / "config.json").string());
  const io::Checkpoint ck = io::Checkpoint::open(dir);
  check_checkpoint_fits_config(cfg, ck, dir);
  auto m = std::make_unique<LlamaModel>(cfg, opt);
  std::vector<float> buf;
  for (const std::string& name : m->weight_names()) {
    const std::vector<int64_t> shape = m->weight_shape(name);
    const std::string module = name.substr(0, name.size() - 7);  // strip ".weight"
    if (shape.size() == 2 && ck.contains(name + ".absmax")) {     // already NF4 (bitsandbytes layout)
      nn::Linear* lin = m->find_linear(module);
      ECOM_CHECK_ARG(lin && module.rfind("model.layers.", 0) == 0, name,
                     ": only the decoder projections may be stored in NF4");
      lin->set_weight_nf4(load_bnb_nf4(ck, name, shape[0], shape[1]));
      continue;
    }
    ECOM_CHECK_ARG(ck.contains(name), dir, ": the checkpoint has no tensor '", name, "'");
    const io::TensorInfo& info = ck.info(name);
    ECOM_CHECK_ARG(info.shape == shape, name, ": shape in the checkpoint does not match config.json");
    buf.resize(static_cast<size_t>(info.numel()));
    ck.read_f32(name, buf.data());
    m->set_weight(name, buf.data(), info.numel());
  }
  return m;
}

void LlamaModel::save_pretrained(const std::string& dir, bool bf16, int64_t max_shard_bytes) const {
  fs::create_directories(dir);
  std::vector<std::vector<float>> f32;
  std::vector<std::vector<uint16_t>> h16;
  std::vector<io::SaveTensor> tensors;
  for (const std::string& name : weight_names()) {
    const std::vector<int64_t> shape = weight_shape(name);
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> w(static_cast<size_t>(n));
    get_weight(name, w.data());
    if (bf16) {
      std::vector<uint16_t> h(w.size());
      for (size_t i = 0; i < w.size(); ++i) h[i] = f32_to_bf16(w[i]);
      h16.push_back(std::move(h));
      tensors.push_back({name, io::StDType::BF16, shape, h16.back().data()});
    } else {
      f32.push_back(std::move(w));
      tensors.push_back({name, io::StDType::F32, shape, f32.back().data()});
    }
  }
  LlamaConfig out = cfg_;
  out.torch_dtype = bf16 ? "bfloat16" : "float32";
  write_json_file(fs::path(dir) / "config.json", out.to_json());
  io::save_checkpoint(dir, tensors, {{"format", "pt"}}, max_shard_bytes);
}

// ---- PEFT adapters -----------------------------------------------------------------------------

void save_adapter(LlamaModel& m, const std::string& name, const std::string& dir) {
  const AdapterConfig& cfg = m.adapter_config(name);
  fs::create_directories(dir);
  std::set<std::string> proj_names;
  std::vector<io::SaveTensor> tensors;
  for (const std::string& module : m.adapter_modules(name)) {
    nn::LoraAdapter* ad = m.lora(name, module);
    proj_names.insert(module.substr(module.rfind('.') + 1));
    const int64_t r = ad->spec.r;
    const int64_t in = static_cast<int64_t>(ad->A.size() / 4) / r, out = static_cast<int64_t>(ad->B.size() / 4) / r;
    tensors.push_back({kPeftPrefix + module + ".lora_A.weight", io::StDType::F32, {r, in}, ad->a()});
    tensors.push_back({kPeftPrefix + module + ".lora_B.weight", io::StDType::F32, {out, r}, ad->b()});
  }
  json target = cfg.target_regex.empty() ? json(std::vector<std::string>(proj_names.begin(), proj_names.end()))
                                         : json(cfg.target_regex);
  json j = {{"peft_type", "LORA"},
            {"task_type", "CAUSAL_LM"},
            {"base_model_name_or_path", nullptr},
            {"r", cfg.spec.r},
            {"lora_alpha", cfg.spec.alpha},
            {"lora_dropout", cfg.spec.dropout},
            {"use_rslora", cfg.spec.rslora},
            {"target_modules", target},
            {"bias", "none"},
            {"fan_in_fan_out", false},
            {"inference_mode", true},
            {"init_lora_weights", true},
            {"modules_to_save", nullptr},
            {"use_dora", false},
            {"lora_bias", false},
            {"rank_pattern", json::object()},
            {"alpha_pattern", json::object()},
            {"layers_to_transform", nullptr},
            {"layers_pattern", nullptr},
            {"revision", nullptr}};
  write_json_file(fs::path(dir) / "adapter_config.json", j);
  io::save_safetensors((fs::path(dir) / "adapter_model.safetensors").string(), tensors, {{"format", "pt"}});
}

std::string load_adapter(LlamaModel& m, const std::string& dir, const std::string& name) {
  const json j = read_json_file(fs::path(dir) / "adapter_config.json");
  ECOM_CHECK_ARG(j.is_object(), dir, "/adapter_config.json must be a JSON object");
  // Typed fields: absent or null -> fallback; another type -> ValueError naming the key (nlohmann's
  // value() would throw its own type_error, a RuntimeError in Python).
  auto field = [&](const char* key, json fallback) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return fallback;
    ECOM_CHECK_ARG(it->type() == fallback.type() || (it->is_number() && fallback.is_number()), dir,
                   "/adapter_config.json: '", key, "' must be a ", fallback.type_name(), ", got ", io::short_dump(*it));
    return *it;
  };
  ECOM_CHECK_ARG(field("peft_type", "LORA") == "LORA", dir, ": only LoRA adapters are supported");
  ECOM_CHECK_ARG(!field("use_dora", false).get<bool>(), dir, ": DoRA adapters are not supported");
  ECOM_CHECK_ARG(!field("fan_in_fan_out", false).get<bool>(), dir, ": fan_in_fan_out adapters are not supported");
  ECOM_CHECK_ARG(field("bias", "none") == "none" && !field("lora_bias", false).get<bool>(), dir,
                 ": adapters with biases are not supported");
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    auto it = j.find(key);
    ECOM_CHECK_ARG(it == j.end() || it->is_null() || it->empty(), dir, ": ", key, " is not supported");
  }
  AdapterConfig cfg;
  auto num = [&](const char* key, double fallback) { return field(key, fallback).get<double>(); };
  cfg.spec.r = static_cast<int64_t>(num("r", 8));
  cfg.spec.alpha = static_cast<float>(num("lora_alpha", 8));
  cfg.spec.dropout = static_cast<float>(num("lora_dropout", 0));
  cfg.spec.rslora = field("use_rslora", false).get<bool>();

  const fs::path file = fs::path(dir) / "adapter_model.safetensors";
  const io::Checkpoint ck = io::Checkpoint::open(file.string());
  // module path -> (A name, B name)
  std::map<std::string, std::pair<std::string, std::string>> found;
  for (const std::string& key : ck.names()) {
    std::string k = key;
    if (k.rfind(kPeftPrefix, 0) == 0) k = k.substr(std::string(kPeftPrefix).size());
    for (const char* which : {".lora_A.", ".lora_B."}) {
      const size_t at = k.find(which);
      if (at == std::string::npos) continue;
      const std::string module = k.substr(0, at);
      auto& slot = found[module];
      (which[6] == 'A' ? slot.first : slot.second) = key;
    }
  }
  ECOM_CHECK_ARG(!found.empty(), file.string(), ": no lora_A / lora_B tensors");
  for (const auto& [module, names] : found) {
    ECOM_CHECK_ARG(!names.first.empty() && !names.second.empty(), file.string(), ": ", module,
                   " has only one of lora_A / lora_B");
    cfg.target_modules.push_back(module);
  }
  const std::string adapter = name.empty() ? "default" : name;
  m.add_adapter(adapter, cfg);
  try {
    for (const auto& [module, names] : found) {
      nn::LoraAdapter* ad = m.lora(adapter, module);
      ECOM_CHECK_ARG(ad, file.string(), ": module ", module, " is not a projection of this model");
      const int64_t r = cfg.spec.r;
      const io::TensorInfo& ia = ck.info(names.first);
      const io::TensorInfo& ib = ck.info(names.second);
      const int64_t in = static_cast<int64_t>(ad->A.size() / 4) / r, out = static_cast<int64_t>(ad->B.size() / 4) / r;
      ECOM_CHECK_ARG(ia.shape == std::vector<int64_t>({r, in}), names.first, ": expected shape [", r, ", ", in, "]");
      ECOM_CHECK_ARG(ib.shape == std::vector<int64_t>({out, r}), names.second, ": expected shape [", out, ", ", r, "]");
      ck.read_f32(names.first, ad->a());
      ck.read_f32(names.second, ad->b());
    }
  } catch (...) {
    m.remove_adapter(adapter);  // loses nothing: the model is as it was
    throw;
  }
  return adapter;
}

}  // namespace ecomllm::model
