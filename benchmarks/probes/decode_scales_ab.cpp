// Stand-alone probe (links the library's static archive): the exact M = 1 kernel over kVbmi decode
// layouts holding fp32 block scales (DecodeScales::kF32, 4.5 bits per weight) against 8-bit scale
// codes (kU8, ~4.13 bits: 8% fewer bytes, ~30 more vector ops per 64 rows x 64 columns to undo the
// double quantization). Both forms of the same 4096 x 4096 weights, 1 GiB of each cycled; the
// forms take turns pass by pass, so that the VM's bandwidth swings hit both alike. Also each
// form cache-hot (one matrix, repeated) and a plain 2-thread read of the kF32 layouts' bytes.
//
//   cmake --build build/cpp && g++ -O2 -std=c++20 -march=native -fopenmp -Icsrc \
//     benchmarks/probes/decode_scales_ab.cpp build/cpp/libecomllm_core.a -o /tmp/scales_ab
//   OMP_NUM_THREADS=2 /tmp/scales_ab [rounds]
//
// Prints per round: GB/s of NF4-state bytes (4.127 bits per weight, as bench_nf4's gemv_gbs) for
// each form, and the ratio kU8 / kF32. Figures: benchmarks/README.md ("seventh session").
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "quant/nf4.h"
#include "quant/nf4_decode_layout.h"
#include "quant/nf4_weight.h"

using namespace ecomllm;
using namespace ecomllm::quant;

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 8;
  const int64_t N = 4096, K = 4096;
  std::vector<float> w(static_cast<size_t>(N * K));
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  for (float& v : w) v = dist(rng);
  NF4Weight weight = NF4Weight::quantize(TensorView::contiguous(w.data(), DType::F32, {N, K}), 64, true);
  const NF4Matrix m = weight.view();
  const double state_bytes = static_cast<double>(N * K) / 2 + static_cast<double>(weight.nbytes() - N * K / 2);
  const int64_t count = static_cast<int64_t>((1LL << 30) / nf4_build_decode_layout(m, DecodeLayoutKind::kVbmi,
                                                                                     DecodeScales::kF32).nbytes()) + 1;
  std::vector<NF4DecodeLayout> forms[2];
  for (int f = 0; f < 2; ++f)
    for (int64_t i = 0; i < count; ++i)
      forms[f].push_back(nf4_build_decode_layout(m, DecodeLayoutKind::kVbmi, f ? DecodeScales::kU8 : DecodeScales::kF32));
  std::printf("%lld matrices per form; bytes per matrix: kF32 %lld, kU8 %lld, NF4 state %.0f\n",
              static_cast<long long>(count), static_cast<long long>(forms[0][0].nbytes()),
              static_cast<long long>(forms[1][0].nbytes()), state_bytes);
  std::vector<float> x(K), y(N);
  for (float& v : x) v = dist(rng) * 50;
  auto pass = [&](int f) {
    const double t0 = now();
    for (const NF4DecodeLayout& L : forms[f]) nf4_decode_matmul(L, kNF4Codebook, x.data(), 1, nullptr, y.data());
    return state_bytes * static_cast<double>(count) / (now() - t0) / 1e9;
  };
  auto hot = [&](int f) {
    std::vector<double> t;
    for (int i = 0; i < 30; ++i) {
      const double t0 = now();
      nf4_decode_matmul(forms[f][0], kNF4Codebook, x.data(), 1, nullptr, y.data());
      t.push_back(now() - t0);
    }
    return state_bytes / median(t) / 1e9;
  };
  auto plain_read = [&] {
    const double t0 = now();
    double total = 0;
    for (const NF4DecodeLayout& L : forms[0]) {  // one 8-byte load per 64-byte line
      const int64_t n = L.nbytes() / 64;
      const uint64_t* p = L.data.as<uint64_t>();
#pragma omp parallel for reduction(+ : total)
      for (int64_t i = 0; i < n; ++i) total += static_cast<double>(p[8 * i]);
    }
    const double gbs = static_cast<double>(forms[0][0].nbytes()) * static_cast<double>(count) / (now() - t0) / 1e9;
    return total == 0.5 ? 0.0 : gbs;
  };
  pass(0);
  pass(1);
  std::vector<double> ratios, hot_ratios;
  for (int r = 0; r < rounds; ++r) {
    const double f32 = pass(0), u8 = pass(1), u8b = pass(1), f32b = pass(0);
    const double hf = hot(0), hu = hot(1);
    const double read = plain_read();
    ratios.push_back((u8 + u8b) / (f32 + f32b));
    hot_ratios.push_back(hu / hf);
    std::printf("round %d: streamed kF32 %.1f/%.1f kU8 %.1f/%.1f (x%.3f); cache-hot kF32 %.1f kU8 %.1f (x%.3f); "
                "plain read of kF32 bytes %.1f GB/s\n",
                r, f32, f32b, u8, u8b, ratios.back(), hf, hu, hot_ratios.back(), read);
  }
  std::printf("median ratio kU8/kF32: streamed %.3f, cache-hot %.3f\n", median(ratios), median(hot_ratios));
}
