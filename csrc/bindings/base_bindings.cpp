// Bindings for csrc/base: CPU features, SIMD level control, threads, half conversions.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "base/cpu_features.h"
#include "base/fma_peak.h"
#include "base/half.h"
#include "base/parallel.h"
#include "bindings/numpy_views.h"
#include "quant/amx_tiles.h"
#include "quant/bf16_pairs.h"
#include "quant/nf4_decode_layout.h"

namespace ecomllm::bindings {
namespace {

// Elementwise conversion of a contiguous array; uint16 input is accepted as the bit pattern of
// a 16-bit float type.
template <typename In, typename Out, typename Fn>
py::array_t<Out> convert_array(const py::array& x, DType in_dtype, Fn convert) {
  const TensorView v = (sizeof(In) == 2 && x.dtype().is(py::dtype::of<uint16_t>())) ? bits16_view(x, in_dtype, "x")
                                                                                     : expect_array(x, in_dtype, -1, "x");
  auto out = new_array<Out>(std::vector<int64_t>(v.shape.begin(), v.shape.begin() + v.ndim));
  const In* src = static_cast<const In*>(v.data);
  Out* dst = out.mutable_data();
  const int64_t n = v.numel();
  {
    py::gil_scoped_release release;
    for (int64_t i = 0; i < n; ++i) dst[i] = convert(src[i]);
  }
  return out;
}

}  // namespace

void bind_base(py::module_& m) {
  m.def("cpu_features", [] {
    const CpuFeatures& f = cpu_features();
    py::dict d;
    d["avx2"] = f.avx2;
    d["fma"] = f.fma;
    d["f16c"] = f.f16c;
    d["avx512f"] = f.avx512f;
    d["avx512bw"] = f.avx512bw;
    d["avx512vl"] = f.avx512vl;
    d["avx512dq"] = f.avx512dq;
    d["avx512_bf16"] = f.avx512_bf16;
    d["avx512_vnni"] = f.avx512_vnni;
    d["avx512_vbmi"] = f.avx512_vbmi;
    d["os_avx"] = f.os_avx;
    d["os_avx512"] = f.os_avx512;
    d["amx_tile"] = f.amx_tile;
    d["amx_bf16"] = f.amx_bf16;
    d["os_amx"] = f.os_amx;
    d["best_level"] = simd_level_name(f.best_level());
    return d;
  }, "CPU features detected with cpuid/xgetbv, and the best SIMD level usable here.");
  m.def("simd_level", [] { return std::string(simd_level_name(simd_level())); },
        "The SIMD level kernels use now: 'scalar', 'avx2' or 'avx512'.");
  m.def("set_simd_level", [](const std::string& name) { set_simd_level(parse_simd_level(name)); }, py::arg("level"),
        "Force a SIMD level (ValueError if this CPU cannot run it). Also settable with ECOMLLM_CPU.");
  m.def("decode_kernel", []() -> std::optional<std::string> {
    quant::DecodeLayoutKind kind{};
    if (!quant::nf4_decode_kind_here(&kind)) return std::nullopt;
    return std::string(kind == quant::DecodeLayoutKind::kVbmi ? "avx512_vbmi" : "avx2");
  }, "The product-table decode kernel NF4 decode layouts use at the active SIMD level: 'avx512_vbmi', "
     "'avx2', or None (scalar level, or avx512 without VBMI/VNNI: no layout is built).");
  m.def("amx_supported", &quant::amx_supported,
        "True where this CPU and OS can run the AMX-BF16 tile kernels (and Linux granted the tile permission).");
  m.def("amx_active", &quant::amx_usable,
        "True while the tiled fp32/NF4/bf16 products run on AMX (bf16x3, fp32-accurate): AMX supported, "
        "SIMD level avx512, and the switch on.");
  m.def("amx_enabled", &quant::amx_enabled,
        "The AMX switch (ECOMLLM_AMX, set_amx_enabled); it has effect only where amx_supported() at avx512.");
  m.def("set_amx_enabled", &quant::set_amx_enabled, py::arg("enabled"),
        "Switch the AMX tile path on or off (off: the AVX-512 kernels). Also settable with ECOMLLM_AMX=0|1.");
  m.def("bf16_products_available", &quant::bf16_pair_products_available,
        "True where the 'medium' precision runs the tiled products as bf16 pairs on AVX512-BF16 (SIMD level "
        "avx512 on a CPU with AVX512-BF16); AMX, where active, takes the products of 32+ rows itself.");
  m.def("set_fp32_matmul_precision", [](const std::string& name) { quant::set_fp32_matmul_precision(name.c_str()); },
        py::arg("precision"),
        "Precision of the tiled products: 'highest' (fp32 accuracy, default), 'high' (~1.5e-5, AMX only) or "
        "'medium' (bf16 inputs, fp32 accumulation: AMX, or AVX512-BF16 pairs). Also settable with "
        "ECOMLLM_MATMUL_PRECISION.");
  m.def("fp32_matmul_precision", [] { return std::string(quant::fp32_matmul_precision()); },
        "The precision set_fp32_matmul_precision set.");
  m.def("max_threads", &max_threads, "OpenMP threads kernels use (OMP_NUM_THREADS).");
  m.def(
      "fma_peak_gflops",
      [](double seconds, int threads) {
        py::gil_scoped_release release;
        return fma_peak_gflops(seconds, threads);
      },
      py::arg("seconds") = 0.5, py::arg("threads") = 0,
      "Measured fp32 FMA limit of this machine in GFLOP/s: `threads` threads (0: max_threads()) run "
      "register-only FMA chains of the active SIMD level for about `seconds`; best round. Benchmarks "
      "report their GFLOP/s against it.");

  // Half conversions (used by tests against numpy/torch, and by the Python facade for bf16 input).
  // bf16 travels as its uint16 bit pattern because numpy has no bfloat16 dtype.
  m.def("f32_to_bf16", [](const py::array& x) { return convert_array<float, uint16_t>(x, DType::F32, f32_to_bf16); },
        py::arg("x"), "float32 -> bfloat16 bit patterns (uint16), round to nearest even, NaN kept.");
  m.def("bf16_to_f32", [](const py::array& x) { return convert_array<uint16_t, float>(x, DType::BF16, bf16_to_f32); },
        py::arg("x"), "bfloat16 bit patterns (uint16 or ml_dtypes.bfloat16) -> float32 (exact).");
  m.def("f32_to_f16", [](const py::array& x) { return convert_array<float, uint16_t>(x, DType::F32, f32_to_f16); },
        py::arg("x"), "float32 -> float16 bit patterns (uint16), round to nearest even.");
  m.def("f16_to_f32", [](const py::array& x) { return convert_array<uint16_t, float>(x, DType::F16, f16_to_f32); },
        py::arg("x"), "float16 (or its uint16 bit patterns) -> float32 (exact).");
}

}  // namespace ecomllm::bindings
