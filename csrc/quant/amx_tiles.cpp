// Whether the AMX tile path may run (see amx_tiles.h). Plain x86-64: no AMX instruction here.
#include "quant/amx_tiles.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "base/cpu_features.h"

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

void set_amx_enabled(bool enabled) { enabled_flag().store(enabled); }
bool amx_enabled() { return enabled_flag().load(); }

bool amx_usable() { return simd_level() == SimdLevel::AVX512 && amx_enabled() && amx_supported(); }

}  // namespace ecomllm::quant
