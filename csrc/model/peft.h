// PEFT LoRA adapter files: adapter_config.json + adapter_model.safetensors with PEFT's saved key
// names ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), so adapters move both
// ways between ecomllm and peft.
#pragma once

#include <string>

#include "model/llama.h"

namespace ecomllm::model {

// Writes adapter `name` of `m` into `dir` (created if needed), atomically file by file.
void save_adapter(LlamaModel& m, const std::string& name, const std::string& dir);
// Reads a PEFT LoRA adapter from `dir` into `m` under `name` ("" = "default") and makes it
// active. Unsupported variants (DoRA, biases, rank/alpha patterns) raise ValueError; on any error
// the model is left unchanged. Returns the adapter's name.
std::string load_adapter(LlamaModel& m, const std::string& dir, const std::string& name);

}  // namespace ecomllm::model
