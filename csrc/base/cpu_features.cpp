#include "base/cpu_features.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>

#include "base/error.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define ECOM_X86 1
#endif

namespace ecomllm {
namespace {

#ifdef ECOM_X86
uint64_t read_xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#ifdef ECOM_X86
  unsigned a, b, c, d;
  if (__get_cpuid(0, &a, &b, &c, &d)) f.vendor_amd = b == 0x68747541 && d == 0x69746e65 && c == 0x444d4163;  // "AuthenticAMD"
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1;
  f.fma = (c >> 12) & 1;
  f.f16c = (c >> 29) & 1;
  if (osxsave) {
    const uint64_t xcr0 = read_xcr0();
    f.os_avx = (xcr0 & 0x6) == 0x6;
    f.os_avx512 = f.os_avx && (xcr0 & 0xe0) == 0xe0;
    f.os_amx = (xcr0 & 0x60000) == 0x60000;
  }
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx2 = (b >> 5) & 1;
    f.avx512f = (b >> 16) & 1;
    f.avx512dq = (b >> 17) & 1;
    f.avx512bw = (b >> 30) & 1;
    f.avx512vl = (b >> 31) & 1;
    f.avx512_vbmi = (c >> 1) & 1;
    f.avx512_vnni = (c >> 11) & 1;
    f.amx_bf16 = (d >> 22) & 1;
    f.amx_tile = (d >> 24) & 1;
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512_bf16 = (a >> 5) & 1;
#endif
  return f;
}

SimdLevel initial_level() {
  const SimdLevel best = cpu_features().best_level();
  const char* env = std::getenv("ECOMLLM_CPU");
  if (!env || !*env) return best;
  const SimdLevel want = parse_simd_level(env);
  ECOM_CHECK_ARG(static_cast<int>(want) <= static_cast<int>(best), "ECOMLLM_CPU=", env,
                 " asks for a SIMD level this CPU does not support (best here: ", simd_level_name(best), ")");
  return want;
}

std::atomic<int>& level_storage() {
  static std::atomic<int> level{static_cast<int>(initial_level())};
  return level;
}

}  // namespace

SimdLevel CpuFeatures::best_level() const {
  if (avx512f && avx512bw && avx512vl && avx512dq && avx2 && fma && os_avx512) return SimdLevel::AVX512;
  if (avx2 && fma && f16c && os_avx) return SimdLevel::AVX2;
  return SimdLevel::Scalar;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Scalar: return "scalar";
    case SimdLevel::AVX2: return "avx2";
    case SimdLevel::AVX512: return "avx512";
  }
  return "?";
}

SimdLevel parse_simd_level(const std::string& name) {
  if (name == "scalar") return SimdLevel::Scalar;
  if (name == "avx2") return SimdLevel::AVX2;
  if (name == "avx512") return SimdLevel::AVX512;
  throw ValueError("unknown SIMD level '" + name + "': expected one of scalar, avx2, avx512");
}

SimdLevel simd_level() { return static_cast<SimdLevel>(level_storage().load(std::memory_order_relaxed)); }

void set_simd_level(SimdLevel level) {
  const SimdLevel best = cpu_features().best_level();
  ECOM_CHECK_ARG(static_cast<int>(level) <= static_cast<int>(best), "SIMD level ", simd_level_name(level),
                 " is not supported by this CPU (best here: ", simd_level_name(best), ")");
  level_storage().store(static_cast<int>(level), std::memory_order_relaxed);
}

}  // namespace ecomllm
