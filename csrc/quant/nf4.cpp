#include "quant/nf4.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <mutex>

#include "base/error.h"
#include "base/half.h"
#include "base/parallel.h"

// NOTE: CMake compiles this file with -ffp-contract=off: a*b+c must not become an FMA here,
// because the rounding rules are bit-exact contracts with bitsandbytes.

namespace ecomllm::quant {
namespace {

// Midpoints between adjacent NF4 codes, as bitsandbytes computes them: (c[i] + c[i+1]) / 2 in fp32.
std::array<float, 15> nf4_midpoints() {
  std::array<float, 15> t{};
  for (int i = 0; i < 15; ++i) t[i] = (kNF4Codebook[i] + kNF4Codebook[i + 1]) / 2.0f;
  return t;
}

// Number of midpoints strictly below v: the nearest code, ties going to the lower code.
// Branch-free binary search over the 15 sorted midpoints (padded to 16 with +inf).
inline uint8_t nf4_code_of(float v, const float* mid16) {
  int i = 0;
  i += (v > mid16[i + 7]) ? 8 : 0;
  i += (v > mid16[i + 3]) ? 4 : 0;
  i += (v > mid16[i + 1]) ? 2 : 0;
  i += (v > mid16[i + 0]) ? 1 : 0;
  return static_cast<uint8_t>(i);
}

struct F16Tag {};
struct BF16Tag {};

template <typename Tag> float convert16(uint16_t h);
template <> float convert16<F16Tag>(uint16_t h) { return f16_to_f32(h); }
template <> float convert16<BF16Tag>(uint16_t h) { return bf16_to_f32(h); }

// Reads element i of the input as fp32 (exact for every supported dtype).
template <typename Tag>
struct Reader {
  const uint16_t* p;
  float operator()(int64_t i) const { return convert16<Tag>(p[i]); }
};
template <>
struct Reader<float> {
  const float* p;
  float operator()(int64_t i) const { return p[i]; }
};

template <typename Tag, typename Ptr>
void quantize_impl(Ptr data, int64_t n, int64_t bs, uint8_t* packed, float* absmax) {
  const Reader<Tag> read{data};
  const auto mid = nf4_midpoints();
  float mid16[16];
  std::copy(mid.begin(), mid.end(), mid16);
  mid16[15] = INFINITY;
  const int64_t nblocks = nf4_num_blocks(n, bs);
  const int64_t full_blocks = n / bs;

  // Blocks are processed in pairs of codes, so a block boundary never splits a byte (bs is even).
  parallel_for(0, nblocks, 64, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t start = b * bs;
      const int64_t end = std::min(n, start + bs);
      float amax = 0.0f;
      for (int64_t i = start; i < end; ++i) {
        const float v = read(i);
        if (!std::isfinite(v))
          throw ValueError(detail::concat("nf4 quantize: input has a non-finite value (", v, ") at flat index ", i));
        amax = std::max(amax, std::fabs(v));
      }
      const float clamped = std::max(amax, 1e-38f);
      const bool tail = b >= full_blocks;
      const float inv = 1.0f / clamped;
      absmax[b] = tail ? clamped : amax;
      for (int64_t i = start; i < end; i += 2) {
        auto code_at = [&](int64_t j) -> uint8_t {
          if (j >= n) return kNF4ZeroCode;
          float s = tail ? read(j) / clamped : read(j) * inv;
          s = std::min(1.0f, std::max(-1.0f, s));
          return nf4_code_of(s, mid16);
        };
        packed[i >> 1] = static_cast<uint8_t>(code_at(i) << 4 | code_at(i + 1));
      }
    }
  });
}

// 65536-entry table: index of a scaled value in [-1, 1] -> nearest 8-bit code.
struct Lut8 {
  std::array<float, 256> code{};
  std::vector<uint8_t> table;
};

std::vector<uint8_t> build_lut8(const float* code256) {
  float mid[255];
  for (int i = 0; i < 255; ++i) mid[i] = (code256[i] + code256[i + 1]) / 2.0f;
  std::vector<uint8_t> table(65536);
  for (int idx = 0; idx < 65536; ++idx) {
    const float centre = static_cast<float>(idx) / 65535.0f * 2.0f - 1.0f;
    table[idx] = static_cast<uint8_t>(std::lower_bound(mid, mid + 255, centre) - mid);
  }
  return table;
}

// Tables are cached per distinct code vector (in practice only the default dynamic map).
const std::vector<uint8_t>& lut8_for(const float* code256) {
  static std::mutex mu;
  static std::vector<Lut8> cache;
  std::lock_guard<std::mutex> lock(mu);
  for (const auto& entry : cache)
    if (std::memcmp(entry.code.data(), code256, sizeof(float) * 256) == 0) return entry.table;
  Lut8 entry;
  std::memcpy(entry.code.data(), code256, sizeof(float) * 256);
  entry.table = build_lut8(code256);
  cache.push_back(std::move(entry));
  return cache.back().table;
}

}  // namespace

bool nf4_blocksize_valid(int64_t bs) {
  return bs >= 32 && bs <= 4096 && (bs & (bs - 1)) == 0;
}

const float* dynamic_map_8bit() {
  // create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for exponent i = 0..6,
  // 2^i + 1 fp32 linspace(0.1, 1) boundaries (torch computes start + step * j with one rounding),
  // their midpoints scaled by +-10^(i-6); then 0 and 1; then sorted.
  static const std::array<float, 256> map = [] {
    std::vector<float> data;
    for (int i = 0; i < 7; ++i) {
      const int steps = (1 << i) + 1;
      std::vector<float> bounds(steps);
      const float step = (1.0f - 0.1f) / static_cast<float>(steps - 1);
      for (int j = 0; j < steps; ++j)
        bounds[j] = j < steps / 2 ? std::fma(step, static_cast<float>(j), 0.1f)
                                  : std::fma(-step, static_cast<float>(steps - 1 - j), 1.0f);
      const float scale = static_cast<float>(std::pow(10.0, i - 6));
      for (int j = 0; j + 1 < steps; ++j) {
        const float mean = (bounds[j] + bounds[j + 1]) / 2.0f;
        data.push_back(scale * mean);
        data.push_back(-scale * mean);
      }
    }
    data.push_back(0.0f);
    data.push_back(1.0f);
    data.resize(256, 0.0f);
    std::sort(data.begin(), data.end());
    std::array<float, 256> out{};
    std::copy(data.begin(), data.end(), out.begin());
    return out;
  }();
  return map.data();
}

void nf4_quantize(const TensorView& input, int64_t blocksize, uint8_t* packed, float* absmax) {
  ECOM_CHECK_ARG(nf4_blocksize_valid(blocksize), "nf4 quantize: blocksize must be a power of two in [32, 4096], got ",
                 blocksize);
  input.expect_contiguous("nf4 quantize input");
  const int64_t n = input.numel();
  ECOM_CHECK_ARG(n > 0, "nf4 quantize: input is empty");
  switch (input.dtype) {
    case DType::F32: quantize_impl<float>(input.ptr<const float>(), n, blocksize, packed, absmax); break;
    case DType::F16: quantize_impl<F16Tag>(input.ptr<const uint16_t>(), n, blocksize, packed, absmax); break;
    case DType::BF16: quantize_impl<BF16Tag>(input.ptr<const uint16_t>(), n, blocksize, packed, absmax); break;
    default:
      throw ValueError(detail::concat("nf4 quantize: expected float32, float16 or bfloat16 input, got ",
                                      dtype_name(input.dtype)));
  }
}

void nf4_dequantize(const uint8_t* packed, const float* absmax, const float* code16, int64_t n, int64_t bs,
                    float* out) {
  parallel_for(0, nf4_num_blocks(n, bs), 256, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0 * bs, end = std::min(n, b1 * bs); i < end; ++i) {
      const uint8_t byte = packed[i >> 1];
      const uint8_t q = (i & 1) ? (byte & 0x0f) : (byte >> 4);
      out[i] = code16[q] * absmax[i / bs];
    }
  });
}

float absmax_mean(const float* absmax, int64_t nblocks) {
  ECOM_CHECK_ARG(nblocks > 0, "absmax_mean: empty absmax");
  double sum = 0.0;
  for (int64_t i = 0; i < nblocks; ++i) sum += absmax[i];
  return static_cast<float>(sum / static_cast<double>(nblocks));
}

void quantize_blockwise_8bit(const float* x, int64_t n, int64_t bs, const float* code256, uint8_t* q,
                             float* absmax) {
  ECOM_CHECK_ARG(bs > 0, "8-bit blockwise quantize: blocksize must be positive");
  const std::vector<uint8_t>& lut = lut8_for(code256);
  parallel_for(0, nf4_num_blocks(n, bs), 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t start = b * bs, end = std::min(n, start + bs);
      float amax = 0.0f;
      for (int64_t i = start; i < end; ++i) {
        ECOM_CHECK_ARG(std::isfinite(x[i]), "8-bit blockwise quantize: non-finite value at index ", i);
        amax = std::max(amax, std::fabs(x[i]));
      }
      absmax[b] = amax;
      if (amax == 0.0f) {
        std::fill(q + start, q + end, uint8_t{0});
        continue;
      }
      const float inv = 1.0f / amax;
      for (int64_t i = start; i < end; ++i) {
        float s = std::min(1.0f, std::max(-1.0f, x[i] * inv));
        const float pos = ((s + 1.0f) * 0.5f) * 65535.0f + 0.5f;
        q[i] = lut[static_cast<int>(pos)];
      }
    }
  });
}

void absmax_double_quantize(const float* absmax, int64_t nblocks, float offset, const float* code256, uint8_t* q,
                            float* nested) {
  std::vector<float> centred(nblocks);
  for (int64_t i = 0; i < nblocks; ++i) centred[i] = absmax[i] - offset;
  quantize_blockwise_8bit(centred.data(), nblocks, kNestedBlocksize, code256, q, nested);
}

}  // namespace ecomllm::quant
