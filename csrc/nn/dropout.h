// Counter-based dropout masks: keep/drop of element i is a pure function of (seed, key, i), so a
// backward pass or an activation-checkpoint recomputation regenerates the forward's mask without
// storing it, whatever the thread count.
#pragma once

#include <cstdint>

namespace ecomllm::nn {

// splitmix64's finaliser: a bijective 64-bit mix with full avalanche.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The per-call stream of (seed, key); element i then draws from mix64(stream + i * golden).
inline uint64_t hash_stream(uint64_t seed, uint64_t key) {
  return mix64(mix64(seed ^ 0x6a09e667f3bcc909ull) ^ (key + 0x9e3779b97f4a7c15ull));
}

// A uniform float in [0, 1) with 24 random bits for element i of a stream.
inline float hash_uniform(uint64_t stream, uint64_t i) {
  return static_cast<float>(mix64(stream + i * 0x9e3779b97f4a7c15ull) >> 40) * 0x1.0p-24f;
}

// Inverted dropout with probability p: element i is kept when its uniform draw is >= p, and kept
// values are multiplied by dropout_scale(p) = 1 / (1 - p) (rounded as torch: 1.0f / float(1 - p)).
inline bool dropout_keep(uint64_t stream, uint64_t i, float p) { return hash_uniform(stream, i) >= p; }
inline float dropout_scale(float p) { return 1.0f / static_cast<float>(1.0 - static_cast<double>(p)); }

}  // namespace ecomllm::nn
