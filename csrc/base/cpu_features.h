// CPU feature detection (cpuid + xgetbv) and the SIMD level kernels are dispatched on.
//
// The active level is the best level the CPU and OS support, lowered by the environment variable
// ECOMLLM_CPU=scalar|avx2|avx512 (read once) or by set_simd_level() at run time, so tests can
// force every level on one machine. Asking for a level the CPU lacks is a ValueError.
#pragma once

#include <string>

namespace ecomllm {

enum class SimdLevel : int { Scalar = 0, AVX2 = 1, AVX512 = 2 };

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512dq = false;
  bool avx512_bf16 = false;
  bool avx512_vnni = false;
  bool avx512_vbmi = false;
  bool amx_tile = false;
  bool amx_bf16 = false;
  bool vendor_amd = false;  // cpuid vendor "AuthenticAMD" (some kernels pick their variant by it)
  bool os_avx = false;     // OS saves YMM state (XCR0 bits 1,2)
  bool os_avx512 = false;  // OS saves ZMM/opmask state (XCR0 bits 5,6,7)
  bool os_amx = false;     // OS supports AMX tile state (XCR0 bits 17,18); a process must still ask
                           // Linux for permission to use it (quant/amx_tiles.h does)

  // The best level usable on this machine: AVX2 needs avx2+fma+f16c and OS YMM support;
  // AVX512 needs F/BW/VL/DQ and OS ZMM support.
  SimdLevel best_level() const;
};

const CpuFeatures& cpu_features();

const char* simd_level_name(SimdLevel level);
SimdLevel parse_simd_level(const std::string& name);  // ValueError on unknown names

// The level kernels use now.
SimdLevel simd_level();
// Forces a level (ValueError if the CPU cannot run it). Not thread-safe against running kernels:
// call it between kernel calls (tests, start-up).
void set_simd_level(SimdLevel level);

}  // namespace ecomllm
