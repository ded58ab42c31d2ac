// Whether the AMX tile path may run (see amx_tiles.h). Plain x86-64: no AMX instruction here.
#include "quant/amx_tiles.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "base/cpu_features.h"
#include "base/error.h"
#include "quant/bf16_pairs.h"

#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace ecomllm::quant {
namespace {

// Linux keeps AMX tile data off until a process asks (arch_prctl ARCH_REQ_XCOMP_PERM for
// XFEATURE_XTILEDATA); a tile instruction before that is a SIGILL. The permission is per process.
bool request_tile_permission() {
#if defined(__linux__) && defined(__x86_64__)
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

bool initially_enabled() {
  const char* env = std::getenv("ECOMLLM_AMX");
  return !(env && (std::strcmp(env, "0") == 0 || std::strcmp(env, "off") == 0 || std::strcmp(env, "false") == 0));
}

// Planes per operand for a precision name, 0 for an unknown one.
int planes_of(const char* name) {
  if (!name) return 0;
  if (std::strcmp(name, "highest") == 0) return 3;
  if (std::strcmp(name, "high") == 0) return 2;
  if (std::strcmp(name, "medium") == 0) return 1;
  return 0;
}

int initial_planes() {
  const char* env = std::getenv("ECOMLLM_MATMUL_PRECISION");
  if (!env || !*env) return 3;
  const int planes = planes_of(env);
  ECOM_CHECK_ARG(planes > 0, "ECOMLLM_MATMUL_PRECISION=", env,
                 " is not a matmul precision: use highest, high or medium");
  return planes;
}

std::atomic<int>& planes_setting() {
  static std::atomic<int> planes{initial_planes()};
  return planes;
}

std::atomic<bool>& enabled_flag() {
  static std::atomic<bool> flag{initially_enabled()};
  return flag;
}

}  // namespace

bool amx_supported() {
  static const bool supported = [] {
    const CpuFeatures& f = cpu_features();
    return f.amx_tile && f.amx_bf16 && f.avx512_bf16 && f.os_amx && f.best_level() == SimdLevel::AVX512 &&
           request_tile_permission();
  }();
  return supported;
}

void set_fp32_matmul_precision(const char* name) {
  const int planes = planes_of(name);
  ECOM_CHECK_ARG(planes > 0, "unknown fp32 matmul precision '", name ? name : "(null)",
                 "': use 'highest' (fp32 accuracy), 'high' or 'medium' (bf16)");
  planes_setting().store(planes);
}

const char* fp32_matmul_precision() {
  switch (planes_setting().load()) {
    case 1: return "medium";
    case 2: return "high";
    default: return "highest";
  }
}

int amx_planes() { return planes_setting().load(); }

void set_amx_enabled(bool enabled) { enabled_flag().store(enabled); }
bool amx_enabled() { return enabled_flag().load(); }

bool bf16_pair_products_available() { return simd_level() == SimdLevel::AVX512 && cpu_features().avx512_bf16; }
bool bf16_pair_products() { return planes_setting().load() == 1 && bf16_pair_products_available(); }

bool amx_usable() { return simd_level() == SimdLevel::AVX512 && amx_enabled() && amx_supported(); }

}  // namespace ecomllm::quant
