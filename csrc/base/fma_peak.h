// The machine's fp32 multiply-add limit, measured: benchmarks report their GFLOP/s next to it.
#pragma once

#include <cstdint>

namespace ecomllm {

// Runs `iters` rounds of kFmaPeakChains independent vector FMAs on registers (no memory traffic)
// on the calling thread and returns the flops done (2 per lane per FMA). One variant per SIMD
// level; the *_avx2 / *_avx512 ones live in files built with those instruction sets.
constexpr int kFmaPeakChains = 12;  // > FMA latency x FMA ports on every x86 core we target
double fma_peak_loop_scalar(int64_t iters);
double fma_peak_loop_avx2(int64_t iters);
double fma_peak_loop_avx512(int64_t iters);

// fp32 GFLOP/s of `threads` threads (<= 0: max_threads()) running the FMA loop of the active SIMD
// level at once: the best of repeated rounds over about `seconds` of wall time. This is the
// compute ceiling of a kernel made only of FMAs; real kernels also load, shuffle and store.
double fma_peak_gflops(double seconds, int threads = 0);

}  // namespace ecomllm
