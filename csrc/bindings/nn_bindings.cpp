// Bindings for csrc/nn: numpy-level wrappers of each op (forward/backward pairs) in the submodule
// ecomllm._core.nn. They exist for the tests; the model calls the C++ functions directly.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "bindings/numpy_views.h"
#include "nn/attention.h"
#include "nn/cross_entropy.h"
#include "nn/embedding.h"
#include "nn/rmsnorm.h"
#include "nn/rope.h"
#include "nn/swiglu.h"

namespace ecomllm::bindings {
namespace {

std::vector<int64_t> shape_of(const TensorView& v) { return std::vector<int64_t>(v.shape.begin(), v.shape.begin() + v.ndim); }

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

// A C-contiguous array of `dtype` with at least `min_ndim` dimensions.
TensorView arr(const py::array& a, DType dtype, const char* what, int min_ndim = 0) {
  TensorView v = expect_array(a, dtype, -1, what);
  ECOM_CHECK_ARG(v.ndim >= min_ndim, what, ": expected at least ", min_ndim, " dimensions, got shape ", v.shape_str());
  return v;
}

void expect_shape(const TensorView& v, const std::vector<int64_t>& want, const char* what) {
  ECOM_CHECK_ARG(shape_of(v) == want, what, ": expected shape ", shape_str(want), ", got ", v.shape_str());
}

std::vector<int64_t> with_last(std::vector<int64_t> s, int64_t last) {
  s.push_back(last);
  return s;
}

// A new float32 array shaped like `shape`, filled with a copy of `src` (or zeros when src is null).
py::array_t<float> f32_array(const std::vector<int64_t>& shape, const float* src = nullptr) {
  auto a = new_array<float>(shape);
  const size_t n = static_cast<size_t>(a.size());
  if (src) std::memcpy(a.mutable_data(), src, n * sizeof(float));
  else std::memset(a.mutable_data(), 0, n * sizeof(float));
  return a;
}

py::array_t<float> embedding_fwd(const py::array& ids, const py::array& table, bool bf16) {
  const TensorView iv = arr(ids, DType::I32, "ids");
  const TensorView tv = bf16 ? bits16_view(table, DType::BF16, "table") : arr(table, DType::F32, "table");
  tv.expect_ndim(2, "table");
  const int64_t N = iv.numel(), V = tv.shape[0], C = tv.shape[1];
  auto out = new_array<float>(with_last(shape_of(iv), C));
  float* o = out.mutable_data();
  py::gil_scoped_release release;
  if (bf16) nn::embedding_forward_bf16(o, iv.ptr<const int32_t>(), tv.ptr<const uint16_t>(), N, V, C);
  else nn::embedding_forward(o, iv.ptr<const int32_t>(), tv.ptr<const float>(), N, V, C);
  return out;
}

py::array_t<float> embedding_bwd(const py::array& dout, const py::array& ids, int64_t V) {
  const TensorView iv = arr(ids, DType::I32, "ids");
  const TensorView dv = arr(dout, DType::F32, "dout", 1);
  const int64_t C = dv.shape[dv.ndim - 1];
  expect_shape(dv, with_last(shape_of(iv), C), "dout");
  ECOM_CHECK_ARG(V > 0, "V must be > 0, got ", V);
  auto dtable = f32_array({V, C});
  float* dt = dtable.mutable_data();
  py::gil_scoped_release release;
  nn::embedding_backward(dt, dv.ptr<const float>(), iv.ptr<const int32_t>(), iv.numel(), V, C);
  return dtable;
}

// x [..., C], w [C] -> (y [..., C], rstd [...])
py::tuple rmsnorm_fwd(const py::array& x, const py::array& w, float eps) {
  const TensorView xv = arr(x, DType::F32, "x", 1);
  const int64_t C = xv.shape[xv.ndim - 1], N = xv.numel() / std::max<int64_t>(C, 1);
  expect_shape(arr(w, DType::F32, "w"), {C}, "w");
  std::vector<int64_t> rows = shape_of(xv);
  rows.pop_back();
  auto y = new_array<float>(shape_of(xv));
  auto rstd = new_array<float>(rows);
  float *yp = y.mutable_data(), *rp = rstd.mutable_data();
  const float* wp = static_cast<const float*>(w.data());
  {
    py::gil_scoped_release release;
    nn::rmsnorm_forward(yp, rp, xv.ptr<const float>(), wp, N, C, eps);
  }
  return py::make_tuple(y, rstd);
}

py::tuple rmsnorm_bwd(const py::array& dy, const py::array& x, const py::array& w, const py::array& rstd) {
  const TensorView xv = arr(x, DType::F32, "x", 1);
  const int64_t C = xv.shape[xv.ndim - 1], N = xv.numel() / std::max<int64_t>(C, 1);
  const TensorView dyv = arr(dy, DType::F32, "dy");
  expect_shape(dyv, shape_of(xv), "dy");
  expect_shape(arr(w, DType::F32, "w"), {C}, "w");
  std::vector<int64_t> rows = shape_of(xv);
  rows.pop_back();
  expect_shape(arr(rstd, DType::F32, "rstd"), rows, "rstd");
  auto dx = f32_array(shape_of(xv));
  auto dw = f32_array({C});
  float *dxp = dx.mutable_data(), *dwp = dw.mutable_data();
  const float *wp = static_cast<const float*>(w.data()), *rp = static_cast<const float*>(rstd.data());
  {
    py::gil_scoped_release release;
    nn::rmsnorm_backward(dxp, dwp, dyv.ptr<const float>(), xv.ptr<const float>(), wp, rp, N, C);
  }
  return py::make_tuple(dx, dw);
}

// x [..., H, D], pos [...] -> rotated copy of x.
py::array_t<float> rope_apply(const py::array& x, const py::array& pos, float theta, bool backward) {
  const TensorView xv = arr(x, DType::F32, "x", 2);
  const int64_t H = xv.shape[xv.ndim - 2], D = xv.shape[xv.ndim - 1];
  std::vector<int64_t> rows = shape_of(xv);
  rows.resize(rows.size() - 2);
  const TensorView pv = arr(pos, DType::I32, "pos");
  expect_shape(pv, rows, "pos");
  auto y = f32_array(shape_of(xv), xv.ptr<const float>());
  float* yp = y.mutable_data();
  py::gil_scoped_release release;
  if (backward) nn::rope_backward(yp, pv.ptr<const int32_t>(), pv.numel(), H, D, theta);
  else nn::rope_forward(yp, pv.ptr<const int32_t>(), pv.numel(), H, D, theta);
  return y;
}

py::array_t<float> swiglu_fwd(const py::array& g, const py::array& u) {
  const TensorView gv = arr(g, DType::F32, "g"), uv = arr(u, DType::F32, "u");
  expect_shape(uv, shape_of(gv), "u");
  auto h = new_array<float>(shape_of(gv));
  float* hp = h.mutable_data();
  py::gil_scoped_release release;
  nn::swiglu_forward(hp, gv.ptr<const float>(), uv.ptr<const float>(), gv.numel());
  return h;
}

py::tuple swiglu_bwd(const py::array& dh, const py::array& g, const py::array& u) {
  const TensorView gv = arr(g, DType::F32, "g"), uv = arr(u, DType::F32, "u"), dv = arr(dh, DType::F32, "dh");
  expect_shape(uv, shape_of(gv), "u");
  expect_shape(dv, shape_of(gv), "dh");
  auto dg = f32_array(shape_of(gv)), du = f32_array(shape_of(gv));
  float *dgp = dg.mutable_data(), *dup = du.mutable_data();
  {
    py::gil_scoped_release release;
    nn::swiglu_backward(dgp, dup, dv.ptr<const float>(), gv.ptr<const float>(), uv.ptr<const float>(), gv.numel());
  }
  return py::make_tuple(dg, du);
}

// logits [n, V], labels [n]
std::pair<TensorView, TensorView> ce_args(const py::array& logits, const py::array& labels) {
  const TensorView lv = arr(logits, DType::F32, "logits");
  lv.expect_ndim(2, "logits");
  const TensorView yv = arr(labels, DType::I32, "labels");
  expect_shape(yv, {lv.shape[0]}, "labels");
  return {lv, yv};
}

py::tuple ce_fwd_bwd(const py::array& logits, const py::array& labels, float grad_scale) {
  const auto [lv, yv] = ce_args(logits, labels);
  auto grad = f32_array(shape_of(lv), lv.ptr<const float>());
  float* gp = grad.mutable_data();
  double loss;
  {
    py::gil_scoped_release release;
    loss = nn::cross_entropy_forward_backward(gp, yv.ptr<const int32_t>(), lv.shape[0], lv.shape[1], grad_scale);
  }
  return py::make_tuple(loss, grad);
}

double ce_fwd(const py::array& logits, const py::array& labels) {
  const auto [lv, yv] = ce_args(logits, labels);
  py::gil_scoped_release release;
  return nn::cross_entropy_forward(lv.ptr<const float>(), yv.ptr<const int32_t>(), lv.shape[0], lv.shape[1]);
}

// q [B,T,H,D], k, v [B,T,KV,D], seg [B,T] or None -> dims (validated) and the seg pointer.
nn::AttentionDims attention_dims(const TensorView& q, const TensorView& k, const TensorView& v,
                                 const std::optional<py::array>& seg, int64_t window, std::optional<float> scale,
                                 const int32_t** seg_ptr) {
  q.expect_ndim(4, "q");
  k.expect_ndim(4, "k");
  nn::AttentionDims d;
  d.B = q.shape[0];
  d.T = q.shape[1];
  d.H = q.shape[2];
  d.D = q.shape[3];
  d.KV = k.shape[2];
  expect_shape(k, {d.B, d.T, d.KV, d.D}, "k");
  expect_shape(v, {d.B, d.T, d.KV, d.D}, "v");
  ECOM_CHECK_ARG(d.KV > 0 && d.H % d.KV == 0, "q has ", d.H, " heads, not a multiple of the ", d.KV, " kv heads of k");
  ECOM_CHECK_ARG(window >= 0, "window must be >= 0 (0 = off), got ", window);
  d.window = window;
  d.scale = scale ? *scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(d.D, 1))));
  *seg_ptr = nullptr;
  if (seg) {
    const TensorView sv = arr(*seg, DType::I32, "seg");
    expect_shape(sv, {d.B, d.T}, "seg");
    *seg_ptr = sv.ptr<const int32_t>();
  }
  return d;
}

py::tuple attention_fwd(const py::array& q, const py::array& k, const py::array& v, std::optional<py::array> seg,
                        int64_t window, std::optional<float> scale) {
  const TensorView qv = arr(q, DType::F32, "q"), kv = arr(k, DType::F32, "k"), vv = arr(v, DType::F32, "v");
  const int32_t* sp;
  const nn::AttentionDims d = attention_dims(qv, kv, vv, seg, window, scale, &sp);
  auto out = new_array<float>(shape_of(qv));
  auto lse = new_array<float>({d.B, d.H, d.T});
  float *op = out.mutable_data(), *lp = lse.mutable_data();
  {
    py::gil_scoped_release release;
    nn::attention_forward(op, lp, qv.ptr<const float>(), kv.ptr<const float>(), vv.ptr<const float>(), sp, d);
  }
  return py::make_tuple(out, lse);
}

py::tuple attention_bwd(const py::array& dout, const py::array& q, const py::array& k, const py::array& v,
                        const py::array& out, const py::array& lse, std::optional<py::array> seg, int64_t window,
                        std::optional<float> scale) {
  const TensorView qv = arr(q, DType::F32, "q"), kv = arr(k, DType::F32, "k"), vv = arr(v, DType::F32, "v");
  const int32_t* sp;
  const nn::AttentionDims d = attention_dims(qv, kv, vv, seg, window, scale, &sp);
  const TensorView dov = arr(dout, DType::F32, "dout"), ov = arr(out, DType::F32, "out"),
                   lv = arr(lse, DType::F32, "lse");
  expect_shape(dov, shape_of(qv), "dout");
  expect_shape(ov, shape_of(qv), "out");
  expect_shape(lv, {d.B, d.H, d.T}, "lse");
  auto dq = f32_array(shape_of(qv)), dk = f32_array(shape_of(kv)), dv = f32_array(shape_of(vv));
  float *dqp = dq.mutable_data(), *dkp = dk.mutable_data(), *dvp = dv.mutable_data();
  {
    py::gil_scoped_release release;
    nn::attention_backward(dqp, dkp, dvp, dov.ptr<const float>(), qv.ptr<const float>(), kv.ptr<const float>(),
                           vv.ptr<const float>(), ov.ptr<const float>(), lv.ptr<const float>(), sp, d);
  }
  return py::make_tuple(dq, dk, dv);
}

}  // namespace

void bind_nn(py::module_& root) {
  py::module_ m = root.def_submodule("nn", "Transformer ops (forward/backward pairs), numpy wrappers for tests.");
  m.def("embedding_forward", [](const py::array& ids, const py::array& table) { return embedding_fwd(ids, table, false); },
        py::arg("ids"), py::arg("table"), "table[V,C] float32, ids int32 [...] -> [..., C].");
  m.def("embedding_forward_bf16", [](const py::array& ids, const py::array& table) { return embedding_fwd(ids, table, true); },
        py::arg("ids"), py::arg("table"), "table[V,C] as uint16 bf16 bits, ids int32 [...] -> float32 [..., C].");
  m.def("embedding_backward", &embedding_bwd, py::arg("dout"), py::arg("ids"), py::arg("V"),
        "dout [..., C], ids int32 [...] -> dtable [V, C] (scatter-add of dout rows).");
  m.def("rmsnorm_forward", &rmsnorm_fwd, py::arg("x"), py::arg("w"), py::arg("eps"),
        "x [..., C], w [C] -> (y [..., C], rstd [...]).");
  m.def("rmsnorm_backward", &rmsnorm_bwd, py::arg("dy"), py::arg("x"), py::arg("w"), py::arg("rstd"),
        "-> (dx [..., C], dw [C]).");
  m.def("rope_forward", [](const py::array& x, const py::array& pos, float theta) { return rope_apply(x, pos, theta, false); },
        py::arg("x"), py::arg("pos"), py::arg("theta"), "x [..., H, D], pos int32 [...] -> rotated copy (HF rotate_half).");
  m.def("rope_backward", [](const py::array& dy, const py::array& pos, float theta) { return rope_apply(dy, pos, theta, true); },
        py::arg("dy"), py::arg("pos"), py::arg("theta"), "dy [..., H, D] -> dx = R^T dy.");
  m.def("rope_inv_freq", [](int64_t D, float theta) {
        ECOM_CHECK_ARG(D > 0 && D % 2 == 0, "D must be even and > 0, got ", D);
        auto a = new_array<float>({D / 2});
        nn::rope_inv_freq(a.mutable_data(), D, theta);
        return a;
      }, py::arg("D"), py::arg("theta"));
  m.def("swiglu_forward", &swiglu_fwd, py::arg("g"), py::arg("u"), "silu(g) * u.");
  m.def("swiglu_backward", &swiglu_bwd, py::arg("dh"), py::arg("g"), py::arg("u"), "-> (dg, du).");
  m.def("cross_entropy_forward_backward", &ce_fwd_bwd, py::arg("logits"), py::arg("labels"), py::arg("grad_scale") = 1.0f,
        "logits [n, V], labels int32 [n] (-100 ignored) -> (sum of losses, grad_scale * dloss/dlogits).");
  m.def("cross_entropy_forward", &ce_fwd, py::arg("logits"), py::arg("labels"), "-> sum of losses.");
  m.def("attention_forward", &attention_fwd, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("seg") = py::none(),
        py::arg("window") = 0, py::arg("scale") = py::none(),
        "q [B,T,H,D], k, v [B,T,KV,D], seg int32 [B,T] or None -> (out [B,T,H,D], lse [B,H,T]).");
  m.def("attention_backward", &attention_bwd, py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("lse"), py::arg("seg") = py::none(), py::arg("window") = 0, py::arg("scale") = py::none(),
        "-> (dq [B,T,H,D], dk [B,T,KV,D], dv [B,T,KV,D]).");
}

}  // namespace ecomllm::bindings
