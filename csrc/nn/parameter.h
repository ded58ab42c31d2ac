// Trainable parameters as seen by optimisers and checkpoints: named fp32 tensors with gradients.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ecomllm::nn {

// A trainable fp32 tensor and its gradient (same numel), not owned: the layer that holds the
// storage must outlive every ParamRef pointing into it.
struct ParamRef {
  std::string name;  // PEFT/HF-style name, e.g. "model.layers.0.self_attn.q_proj.lora_A.weight"
  float* value = nullptr;
  float* grad = nullptr;
  std::vector<int64_t> shape;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};
using ParamList = std::vector<ParamRef>;

// Throws ValueError on a null pointer, a negative dimension or a repeated name.
void validate_params(const ParamList& params);

}  // namespace ecomllm::nn
