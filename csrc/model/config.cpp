#include "model/config.h"

#include <cmath>
#include <fstream>

#include "base/error.h"
#include "io/json_util.h"

namespace ecomllm::model {
namespace {

using nlohmann::json;

// Integer field: absent or null -> fallback; anything but a non-negative integer -> ValueError.
int64_t get_int(const json& j, const char* key, int64_t fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  ECOM_CHECK_ARG(it->is_number_integer() || (it->is_number_float() && std::floor(it->get<double>()) == it->get<double>()),
                 "config.json: '", key, "' must be an integer, got ", io::short_dump(*it));
  return it->get<int64_t>();
}

double get_number(const json& j, const char* key, double fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  ECOM_CHECK_ARG(it->is_number(), "config.json: '", key, "' must be a number, got ", io::short_dump(*it));
  return it->get<double>();
}

bool get_bool(const json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  ECOM_CHECK_ARG(it->is_boolean(), "config.json: '", key, "' must be true or false, got ", io::short_dump(*it));
  return it->get<bool>();
}

// eos_token_id may be a list in newer configs; we keep the first.
int64_t get_token_id(const json& j, const char* key, int64_t fallback) {
  auto it = j.find(key);
  if (it != j.end() && it->is_array()) {
    if (it->empty()) return fallback;
    ECOM_CHECK_ARG((*it)[0].is_number_integer(), "config.json: '", key, "' must hold integers");
    return (*it)[0].get<int64_t>();
  }
  return get_int(j, key, fallback);
}

// RoPE settings: transformers v5 writes rope_parameters {rope_type, rope_theta}; older files a
// top-level rope_theta and rope_scaling. Only plain ("default") RoPE is implemented.
double read_rope_theta(const json& j) {
  double theta = get_number(j, "rope_theta", 10000.0);
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    ECOM_CHECK_ARG(it->is_object(), "config.json: '", key, "' must be an object or null");
    std::string type = "default";
    for (const char* tkey : {"rope_type", "type"}) {
      auto t = it->find(tkey);
      if (t != it->end() && t->is_string()) type = t->get<std::string>();
    }
    ECOM_CHECK_ARG(type == "default", "config.json: RoPE scaling '", type,
                   "' is not supported (only plain rotary embeddings)");
    theta = get_number(*it, "rope_theta", theta);
  }
  return theta;
}

}  // namespace

LlamaConfig LlamaConfig::from_json(const json& j) {
  ECOM_CHECK_ARG(j.is_object(), "config.json must be a JSON object");
  LlamaConfig c;
  if (auto it = j.find("model_type"); it != j.end() && it->is_string()) c.model_type = it->get<std::string>();
  ECOM_CHECK_ARG(c.model_type == "llama" || c.model_type == "mistral", "config.json: model_type '",
                 c.model_type, "' is not supported (expected 'llama' or 'mistral')");
  const bool mistral = c.model_type == "mistral";
  c.vocab_size = get_int(j, "vocab_size", 32000);
  c.hidden_size = get_int(j, "hidden_size", 4096);
  c.intermediate_size = get_int(j, "intermediate_size", mistral ? 14336 : 11008);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", 32);
  c.num_attention_heads = get_int(j, "num_attention_heads", 32);
  c.num_key_value_heads = get_int(j, "num_key_value_heads", mistral ? 8 : c.num_attention_heads);
  ECOM_CHECK_ARG(c.num_attention_heads > 0, "config.json: num_attention_heads must be positive");
  c.head_dim = get_int(j, "head_dim", c.hidden_size / c.num_attention_heads);
  c.rms_norm_eps = get_number(j, "rms_norm_eps", 1e-6);
  c.rope_theta = read_rope_theta(j);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", mistral ? 4096 * 32 : 2048);
  // Mistral: sliding_window absent -> 4096 (MistralConfig default), null -> off. Llama has none.
  if (mistral) {
    auto it = j.find("sliding_window");
    c.sliding_window = it == j.end() ? 4096 : (it->is_null() ? 0 : get_int(j, "sliding_window", 0));
  }
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", false);
  c.bos_token_id = get_token_id(j, "bos_token_id", 1);
  c.eos_token_id = get_token_id(j, "eos_token_id", 2);
  c.pad_token_id = get_token_id(j, "pad_token_id", -1);
  for (const char* key : {"torch_dtype", "dtype"})
    if (auto it = j.find(key); it != j.end() && it->is_string()) c.torch_dtype = it->get<std::string>();
  if (auto it = j.find("hidden_act"); it != j.end() && !it->is_null()) {
    ECOM_CHECK_ARG(it->is_string() && (*it == "silu" || *it == "swish"), "config.json: hidden_act ",
                   io::short_dump(*it), " is not supported (only silu)");
  }
  ECOM_CHECK_ARG(!get_bool(j, "attention_bias", false), "config.json: attention_bias=true is not supported");
  ECOM_CHECK_ARG(!get_bool(j, "mlp_bias", false), "config.json: mlp_bias=true is not supported");
  ECOM_CHECK_ARG(get_int(j, "pretraining_tp", 1) == 1, "config.json: pretraining_tp != 1 is not supported");
  c.validate();
  return c;
}

LlamaConfig LlamaConfig::from_file(const std::string& path) { return from_json(io::read_json_file(path)); }

void LlamaConfig::validate() const {
  ECOM_CHECK_ARG(vocab_size > 0 && hidden_size > 0 && intermediate_size > 0 && num_hidden_layers > 0,
                 "config: vocab_size, hidden_size, intermediate_size and num_hidden_layers must be positive");
  ECOM_CHECK_ARG(num_key_value_heads > 0 && num_attention_heads % num_key_value_heads == 0,
                 "config: num_attention_heads (", num_attention_heads,
                 ") must be a multiple of num_key_value_heads (", num_key_value_heads, ")");
  ECOM_CHECK_ARG(head_dim > 0 && head_dim % 2 == 0, "config: head_dim must be positive and even, got ", head_dim);
  ECOM_CHECK_ARG(rms_norm_eps > 0 && rope_theta > 0, "config: rms_norm_eps and rope_theta must be positive");
  ECOM_CHECK_ARG(sliding_window >= 0, "config: sliding_window must be null or non-negative");
  ECOM_CHECK_ARG(vocab_size < (int64_t{1} << 31), "config: vocab_size too large");
}

nlohmann::json LlamaConfig::to_json() const {
  const bool mistral = model_type == "mistral";
  json j = {
      {"architectures", {mistral ? "MistralForCausalLM" : "LlamaForCausalLM"}},
      {"model_type", model_type},
      {"vocab_size", vocab_size},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_key_value_heads},
      {"head_dim", head_dim},
      {"hidden_act", "silu"},
      {"rms_norm_eps", rms_norm_eps},
      {"rope_theta", rope_theta},
      {"max_position_embeddings", max_position_embeddings},
      {"tie_word_embeddings", tie_word_embeddings},
      {"bos_token_id", bos_token_id},
      {"eos_token_id", eos_token_id},
      {"attention_bias", false},
      {"torch_dtype", torch_dtype},
  };
  if (!mistral) j["mlp_bias"] = false;
  if (mistral) j["sliding_window"] = sliding_window > 0 ? json(sliding_window) : json(nullptr);
  if (pad_token_id >= 0) j["pad_token_id"] = pad_token_id;
  return j;
}

}  // namespace ecomllm::model
