// Llama / Mistral architecture hyper-parameters, read from and written to a Hugging Face
// config.json (model_type "llama" or "mistral"). Unsupported features (biases, RoPE scaling,
// activations other than SiLU) are refused with a ValueError instead of silently ignored.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace ecomllm::model {

struct LlamaConfig {
  std::string model_type = "llama";  // "llama" | "mistral"
  int64_t vocab_size = 32000;        // V
  int64_t hidden_size = 4096;        // C
  int64_t intermediate_size = 11008; // I (SwiGLU width)
  int64_t num_hidden_layers = 32;    // L
  int64_t num_attention_heads = 32;  // H
  int64_t num_key_value_heads = 32;  // KV (H % KV == 0)
  int64_t head_dim = 128;            // D (hidden_size / H unless config.json says otherwise)
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;       // top-level "rope_theta" or rope_parameters.rope_theta
  int64_t max_position_embeddings = 2048;
  int64_t sliding_window = 0;        // Mistral; 0 = off (config null)
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 1, eos_token_id = 2, pad_token_id = -1;  // -1 = none
  std::string torch_dtype = "float32";

  // Parses a config.json object; fills defaults the way transformers does (kv heads = heads,
  // head_dim = hidden / heads, Mistral's sliding_window 4096 when the key is absent).
  static LlamaConfig from_json(const nlohmann::json& j);
  static LlamaConfig from_file(const std::string& path);
  // A config.json transformers loads back into LlamaConfig/MistralConfig.
  nlohmann::json to_json() const;
  // Throws ValueError naming the first inconsistent field.
  void validate() const;

  int64_t q_dim() const { return num_attention_heads * head_dim; }    // H*D
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }   // KV*D
};

}  // namespace ecomllm::model
