// Bindings for csrc/nn: Linear (+ LoRA adapters), ParameterList, AdamW, gradient clipping.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <unordered_map>

#include "base/half.h"
#include "bindings/numpy_views.h"
#include "bindings/parameter_list.h"
#include "nn/adamw.h"
#include "nn/linear.h"
#include "quant/nf4.h"
#include "quant/nf4_weight.h"

namespace ecomllm::bindings {
namespace {

using nn::Linear;
using nn::LoraAdapter;

// A numpy view of `n`-shaped float storage kept alive by a shared_ptr (held in a capsule).
py::array_t<float> shared_view(float* data, const std::vector<int64_t>& shape, std::shared_ptr<void> keep) {
  auto* holder = new std::shared_ptr<void>(std::move(keep));
  py::capsule base(holder, [](void* h) { delete static_cast<std::shared_ptr<void>*>(h); });
  std::vector<py::ssize_t> dims(shape.begin(), shape.end());
  return py::array_t<float>(dims, data, base);
}

// A numpy view of float storage kept alive by a Python object.
py::array_t<float> object_view(float* data, const std::vector<int64_t>& shape, py::handle owner) {
  std::vector<py::ssize_t> dims(shape.begin(), shape.end());
  return py::array_t<float>(dims, data, owner);
}

TensorView float_array(const py::array& a, const char* what) {
  ECOM_CHECK_ARG(a.dtype().is(py::dtype::of<float>()), what, ": expected a float32 array, got dtype ",
                 std::string(py::str(a.dtype())));
  return expect_array(a, DType::F32, -1, what);
}

std::shared_ptr<LoraAdapter> require_adapter(const Linear& lin, const std::string& name) {
  auto ad = lin.adapter_shared(name);
  ECOM_CHECK_ARG(ad, "no adapter named '", name, "' (have ", lin.adapter_names().size(), ")");
  return ad;
}

std::vector<int64_t> shape_of(const TensorView& v) { return {v.shape.begin(), v.shape.begin() + v.ndim}; }

// x [..., in] float32 -> (view, rows N).
std::pair<TensorView, int64_t> rows_view(const py::array& x, int64_t last, const char* what) {
  const TensorView v = float_array(x, what);
  ECOM_CHECK_ARG(v.ndim >= 1 && v.shape[v.ndim - 1] == last, what, ": expected shape (..., ", last, "), got ",
                 v.shape_str());
  return {v, v.numel() / last};
}

std::unique_ptr<Linear> make_linear(const py::array& weight, const std::string& format, int64_t blocksize,
                                    bool double_quant, bool trainable) {
  TensorView w = view_of(weight, "weight");
  w.expect_ndim(2, "weight");
  ECOM_CHECK_ARG(format == "f32" || format == "bf16" || format == "nf4", "format must be 'f32', 'bf16' or 'nf4', got '",
                 format, "'");
  ECOM_CHECK_ARG(!trainable || format == "f32", "only an f32 weight can be trainable");
  auto lin = std::make_unique<Linear>(w.shape[1], w.shape[0]);
  py::gil_scoped_release release;
  if (format == "f32") {
    w.expect_dtype(DType::F32, "weight (format f32)");
    lin->set_weight_f32(w.ptr<const float>(), trainable);
  } else if (format == "bf16") {
    ECOM_CHECK_ARG(w.dtype == DType::BF16 || w.dtype == DType::F32, "weight (format bf16): expected bfloat16 or "
                   "float32 (rounded to bf16), got ", dtype_name(w.dtype));
    if (w.dtype == DType::BF16) {
      lin->set_weight_bf16(w.ptr<const uint16_t>());
    } else {
      std::vector<uint16_t> bits(static_cast<size_t>(w.numel()));
      for (int64_t i = 0; i < w.numel(); ++i) bits[i] = f32_to_bf16(w.ptr<const float>()[i]);
      lin->set_weight_bf16(bits.data());
    }
  } else {
    lin->set_weight_nf4(quant::NF4Weight::quantize(w, blocksize, double_quant));
  }
  return lin;
}

template <typename T>
std::span<const T> optional_span(const std::optional<py::array>& a, DType dtype, const char* what) {
  if (!a) return {};
  const TensorView v = expect_array(*a, dtype, -1, what);
  return {v.ptr<const T>(), static_cast<size_t>(v.numel())};
}

std::unique_ptr<Linear> linear_from_nf4_state(int64_t rows, int64_t cols, int64_t blocksize, const py::array& packed,
                                              const py::array& code, std::optional<py::array> absmax,
                                              std::optional<py::array> qabsmax, std::optional<py::array> nested_absmax,
                                              std::optional<py::array> nested_code, double offset) {
  ECOM_CHECK_ARG(std::isfinite(static_cast<float>(offset)), "offset ", offset, " is not finite as a float32");
  auto w = quant::NF4Weight::from_bnb(
      rows, cols, blocksize, optional_span<uint8_t>(packed, DType::U8, "packed"),
      optional_span<float>(code, DType::F32, "quant_map"), optional_span<float>(absmax, DType::F32, "absmax"),
      optional_span<uint8_t>(qabsmax, DType::U8, "qabsmax"),
      optional_span<float>(nested_absmax, DType::F32, "nested_absmax"),
      optional_span<float>(nested_code, DType::F32, "nested_quant_map"), static_cast<float>(offset));
  auto lin = std::make_unique<Linear>(cols, rows);
  lin->set_weight_nf4(std::move(w));
  return lin;
}

void copy_into(float* dst, const py::array& src, const std::vector<int64_t>& shape, const char* what) {
  const TensorView v = float_array(src, what);
  ECOM_CHECK_ARG(shape_of(v) == shape, what, ": expected shape (", shape[0], ", ", shape[1], "), got ",
                 v.shape_str());
  std::memcpy(dst, v.data, sizeof(float) * static_cast<size_t>(v.numel()));
}

py::array_t<float> linear_forward(const Linear& lin, const py::array& x, bool training, uint64_t key) {
  auto [xv, N] = rows_view(x, lin.in_features(), "x");
  std::vector<int64_t> shape = shape_of(xv);
  shape.back() = lin.out_features();
  auto y = new_array<float>(shape);
  float* yp = y.mutable_data();
  py::gil_scoped_release release;
  lin.forward(yp, xv.ptr<const float>(), N, training, key);
  return y;
}

py::array_t<float> linear_backward(Linear& lin, const py::array& x, const py::array& dy, bool training, uint64_t key) {
  auto [xv, N] = rows_view(x, lin.in_features(), "x");
  const TensorView dv = float_array(dy, "dy");
  std::vector<int64_t> want = shape_of(xv);
  want.back() = lin.out_features();
  ECOM_CHECK_ARG(shape_of(dv) == want, "dy: expected the shape of x with the last dimension ", lin.out_features(),
                 ", got ", dv.shape_str());
  auto dx = new_array<float>(shape_of(xv));
  float* dxp = dx.mutable_data();
  std::fill(dxp, dxp + xv.numel(), 0.0f);
  py::gil_scoped_release release;
  lin.backward(dxp, dv.ptr<const float>(), xv.ptr<const float>(), N, training, key);
  return dx;
}

PyParameterList linear_parameters(py::object self, const std::string& prefix) {
  Linear& lin = self.cast<Linear&>();
  PyParameterList out;
  lin.collect_trainable(prefix, out.params);
  out.owner = self;
  if (!lin.active_adapter().empty()) out.storage.push_back(lin.adapter_shared(lin.active_adapter()));
  if (auto w = lin.weight_f32_storage()) out.storage.push_back(w);
  if (auto g = lin.weight_grad_storage()) out.storage.push_back(g);
  return out;
}

const nn::ParamRef& find_param(const PyParameterList& pl, const std::string& name) {
  for (const auto& p : pl.params)
    if (p.name == name) return p;
  throw ValueError("no parameter named '" + name + "'");
}

// Wraps writable float32 arrays: values[name] and grads[name] of equal shapes.
PyParameterList parameters_from_arrays(const py::dict& values, const py::dict& grads) {
  PyParameterList out;
  ECOM_CHECK_ARG(py::len(values) == py::len(grads), "values and grads must have the same names");
  for (auto item : values) {
    const std::string name = py::str(item.first);
    ECOM_CHECK_ARG(grads.contains(item.first), "grads lacks '", name, "'");
    py::array v = py::reinterpret_borrow<py::array>(item.second), g = grads[item.first].cast<py::array>();
    const TensorView vv = float_array(v, "value"), gv = float_array(g, "grad");
    ECOM_CHECK_ARG(v.writeable() && g.writeable(), "parameter '", name, "': arrays must be writable");
    ECOM_CHECK_ARG(shape_of(vv) == shape_of(gv), "parameter '", name, "': value ", vv.shape_str(), " and grad ",
                   gv.shape_str(), " differ in shape");
    out.params.push_back({name, vv.ptr<float>(), gv.ptr<float>(), shape_of(vv)});
  }
  nn::validate_params(out.params);
  out.owner = py::make_tuple(values, grads);
  return out;
}

PyParameterList concat_parameters(const std::vector<PyParameterList*>& lists) {
  PyParameterList out;
  py::list owners;
  for (const PyParameterList* l : lists) {
    out.params.insert(out.params.end(), l->params.begin(), l->params.end());
    out.storage.insert(out.storage.end(), l->storage.begin(), l->storage.end());
    owners.append(l->owner);
  }
  nn::validate_params(out.params);
  out.owner = py::tuple(owners);
  return out;
}

// The optimizer keeps its ParameterList (and so the storage) alive.
struct PyAdamW {
  std::unique_ptr<nn::AdamW> opt;
  py::object plist;
};

py::dict adamw_state_dict(PyAdamW& a) {
  py::dict m, v;
  const auto& params = a.opt->params();
  for (size_t i = 0; i < params.size(); ++i) {
    auto em = new_array<float>(params[i].shape), ev = new_array<float>(params[i].shape);
    std::memcpy(em.mutable_data(), a.opt->exp_avg(i), sizeof(float) * static_cast<size_t>(params[i].numel()));
    std::memcpy(ev.mutable_data(), a.opt->exp_avg_sq(i), sizeof(float) * static_cast<size_t>(params[i].numel()));
    m[py::str(params[i].name)] = em;
    v[py::str(params[i].name)] = ev;
  }
  py::dict out;
  out["step"] = a.opt->step_count();
  out["exp_avg"] = m;
  out["exp_avg_sq"] = v;
  return out;
}

void adamw_load_state_dict(PyAdamW& a, const py::dict& state) {
  for (const char* key : {"step", "exp_avg", "exp_avg_sq"})
    ECOM_CHECK_ARG(state.contains(key), "AdamW state: missing '", key, "'");
  py::object step = state["step"];
  ECOM_CHECK_ARG(py::isinstance<py::int_>(step) && !py::isinstance<py::bool_>(step),
                 "AdamW state: 'step' must be an int");
  const int64_t t = step.cast<int64_t>();
  ECOM_CHECK_ARG(t >= 0, "AdamW state: 'step' must be >= 0, got ", t);
  const auto& params = a.opt->params();
  // Validate everything before changing anything.
  std::vector<std::pair<TensorView, TensorView>> views;
  for (const char* key : {"exp_avg", "exp_avg_sq"}) {
    ECOM_CHECK_ARG(py::isinstance<py::dict>(state[key]), "AdamW state: '", key, "' must be a dict");
    ECOM_CHECK_ARG(py::len(state[key]) == params.size(), "AdamW state: '", key, "' has ", py::len(state[key]),
                   " entries, the optimizer has ", params.size(), " parameters");
  }
  py::dict m = state["exp_avg"], v = state["exp_avg_sq"];
  std::vector<py::array> keep;
  for (const auto& p : params) {
    py::str name(p.name);
    ECOM_CHECK_ARG(m.contains(name) && v.contains(name), "AdamW state: no entry for parameter '", p.name, "'");
    keep.push_back(py::array::ensure(m[name]));
    keep.push_back(py::array::ensure(v[name]));
    ECOM_CHECK_ARG(keep[keep.size() - 2] && keep.back(), "AdamW state: '", p.name, "' is not an array");
    const TensorView mv = float_array(keep[keep.size() - 2], "exp_avg"), vv = float_array(keep.back(), "exp_avg_sq");
    ECOM_CHECK_ARG(shape_of(mv) == p.shape && shape_of(vv) == p.shape, "AdamW state: '", p.name, "' has shape ",
                   mv.shape_str(), " / ", vv.shape_str(), ", the parameter has ", p.numel(), " elements in another shape");
    views.emplace_back(mv, vv);
  }
  for (size_t i = 0; i < params.size(); ++i) {
    std::memcpy(a.opt->exp_avg(i), views[i].first.data, sizeof(float) * static_cast<size_t>(params[i].numel()));
    std::memcpy(a.opt->exp_avg_sq(i), views[i].second.data, sizeof(float) * static_cast<size_t>(params[i].numel()));
  }
  a.opt->set_step_count(t);
}

}  // namespace

void bind_nn_linear(py::module_& m) {
  py::class_<PyParameterList>(m, "ParameterList",
                              "Named trainable fp32 tensors and their gradients (views into layer storage).")
      .def_static("from_arrays", &parameters_from_arrays, py::arg("values"), py::arg("grads"),
                  "Wraps writable float32 arrays (dicts name -> array, same names and shapes); no copies.")
      .def_static("concat", &concat_parameters, py::arg("lists"), "One list of the parameters of several lists.")
      .def("names", [](const PyParameterList& p) {
        std::vector<std::string> n;
        for (const auto& r : p.params) n.push_back(r.name);
        return n;
      })
      .def("__len__", [](const PyParameterList& p) { return p.params.size(); })
      .def("shape", [](const PyParameterList& p, const std::string& name) { return find_param(p, name).shape; })
      .def("value", [](py::object self, const std::string& name) {
        const auto& r = find_param(self.cast<const PyParameterList&>(), name);
        return object_view(r.value, r.shape, self);
      }, py::arg("name"), "Writable view of the parameter.")
      .def("grad", [](py::object self, const std::string& name) {
        const auto& r = find_param(self.cast<const PyParameterList&>(), name);
        return object_view(r.grad, r.shape, self);
      }, py::arg("name"), "Writable view of the gradient.");

  py::class_<Linear>(m, "Linear", "y = x W^T (+ LoRA) on an f32, bf16 or NF4 base weight W[out, in].")
      .def(py::init(&make_linear), py::arg("weight"), py::arg("format") = "f32", py::arg("blocksize") = 64,
           py::arg("double_quant") = true, py::arg("trainable") = false,
           "weight [out, in]: float32 for 'f32'; bfloat16 or float32 (rounded) for 'bf16'; float32/float16/bfloat16 "
           "quantized for 'nf4'. trainable only for 'f32'.")
      .def_static("from_nf4_state", &linear_from_nf4_state, py::arg("rows"), py::arg("cols"), py::arg("blocksize"),
                  py::arg("packed"), py::arg("code"), py::arg("absmax") = py::none(), py::arg("qabsmax") = py::none(),
                  py::arg("nested_absmax") = py::none(), py::arg("nested_code") = py::none(),
                  py::arg("offset") = 0.0, "An NF4 layer from bitsandbytes state arrays (copied, sizes validated).")
      .def_property_readonly("in_features", &Linear::in_features)
      .def_property_readonly("out_features", &Linear::out_features)
      .def_property_readonly("format", [](const Linear& l) { return nn::weight_format_name(l.format()); })
      .def_property_readonly("weight_trainable", &Linear::weight_trainable)
      .def_property_readonly("weight_nbytes", &Linear::weight_nbytes)
      .def_property_readonly("merged", &Linear::merged)
      .def_property_readonly("active_adapter", &Linear::active_adapter)
      .def("adapter_names", &Linear::adapter_names)
      .def("add_adapter", [](Linear& l, const std::string& name, int64_t r, float alpha, float dropout, bool rslora,
                             uint64_t seed) { l.add_adapter(name, {r, alpha, dropout, rslora, seed}); },
           py::arg("name"), py::arg("r"), py::arg("alpha"), py::arg("dropout") = 0.0f, py::arg("rslora") = false,
           py::arg("seed") = 0, "PEFT initialisation: A ~ U(-1/sqrt(in), 1/sqrt(in)) from seed, B = 0.")
      .def("remove_adapter", &Linear::remove_adapter, py::arg("name"))
      .def("set_active_adapter", &Linear::set_active_adapter, py::arg("name"), "'' deactivates every adapter.")
      .def("scaling", [](const Linear& l, const std::string& name) { return require_adapter(l, name)->scale; },
           py::arg("name"))
      .def("lora_A", [](const Linear& l, const std::string& name) {
        auto ad = require_adapter(l, name);
        return shared_view(ad->a(), {ad->spec.r, l.in_features()}, ad);
      }, py::arg("name"), "Writable view of A [r, in].")
      .def("lora_B", [](const Linear& l, const std::string& name) {
        auto ad = require_adapter(l, name);
        return shared_view(ad->b(), {l.out_features(), ad->spec.r}, ad);
      }, py::arg("name"), "Writable view of B [out, r].")
      .def("lora_A_grad", [](const Linear& l, const std::string& name) {
        auto ad = require_adapter(l, name);
        return shared_view(ad->da(), {ad->spec.r, l.in_features()}, ad);
      }, py::arg("name"))
      .def("lora_B_grad", [](const Linear& l, const std::string& name) {
        auto ad = require_adapter(l, name);
        return shared_view(ad->db(), {l.out_features(), ad->spec.r}, ad);
      }, py::arg("name"))
      .def("set_lora", [](Linear& l, const std::string& name, const py::array& A, const py::array& B) {
        auto ad = require_adapter(l, name);
        ECOM_CHECK_ARG(!(l.merged() && l.active_adapter() == name), "set_lora: '", name, "' is merged; unmerge first");
        copy_into(ad->a(), A, {ad->spec.r, l.in_features()}, "A");
        copy_into(ad->b(), B, {l.out_features(), ad->spec.r}, "B");
      }, py::arg("name"), py::arg("A"), py::arg("B"), "Copies A [r, in] and B [out, r] in.")
      .def("weight", [](const Linear& l) -> py::object {
        auto w = l.weight_f32_storage();
        if (!w) return py::none();
        return shared_view(w->as<float>(), {l.out_features(), l.in_features()}, w);
      }, "Writable view of an f32 weight (None for bf16 / NF4).")
      .def("weight_grad", [](const Linear& l) -> py::object {
        auto g = l.weight_grad_storage();
        if (!g) return py::none();
        return shared_view(g->as<float>(), {l.out_features(), l.in_features()}, g);
      }, "View of dW (None unless the weight is trainable).")
      .def("nf4_state", [](const Linear& l) -> py::object {
        const quant::NF4Weight* w = l.weight_nf4();
        if (!w) return py::none();
        const quant::NF4Matrix v = w->view();
        AlignedBuffer restored;  // the codes, if prepare_decoding(keep_codes=False) released them
        const uint8_t* packed = w->packed_codes(restored);
        const int64_t nb = v.num_blocks(), nn_ = (nb + quant::kNestedBlocksize - 1) / quant::kNestedBlocksize;
        auto copy_u8 = [](const uint8_t* p, int64_t n) {
          auto a = new_array<uint8_t>({n});
          std::memcpy(a.mutable_data(), p, static_cast<size_t>(n));
          return a;
        };
        auto copy_f32 = [](const float* p, int64_t n) {
          auto a = new_array<float>({n});
          std::memcpy(a.mutable_data(), p, sizeof(float) * static_cast<size_t>(n));
          return a;
        };
        py::dict d;
        d["rows"] = v.rows;
        d["cols"] = v.cols;
        d["blocksize"] = v.blocksize;
        d["packed"] = copy_u8(packed, quant::nf4_packed_bytes(v.numel()));
        d["code"] = copy_f32(v.code, 16);
        if (v.absmax) {
          d["absmax"] = copy_f32(v.absmax, nb);
        } else {
          d["qabsmax"] = copy_u8(v.qabsmax, nb);
          d["nested_absmax"] = copy_f32(v.nested_absmax, nn_);
          d["nested_code"] = copy_f32(v.nested_code, 256);
          d["offset"] = v.offset;
        }
        return d;
      }, "Copies of the NF4 state arrays (the keyword names of from_nf4_state), or None for other formats.")
      .def(
          "prepare_decoding",
          [](Linear& l, bool enabled, bool keep_codes) {
            py::gil_scoped_release release;
            return l.prepare_decoding(enabled, keep_codes);
          },
          py::arg("enabled") = true, py::arg("keep_codes") = true,
          "Builds (or drops) the NF4 weight's decode layout for exact, faster forward passes of 1-16 rows; "
          "keep_codes=False releases the packed codes it also holds. Returns whether the layout exists. Not to be "
          "called while another thread runs forward / backward on this layer.")
      .def_property_readonly("decoding_nbytes", &Linear::decoding_nbytes)
      .def("dequantize_weight", [](const Linear& l) {
        auto out = new_array<float>({l.out_features(), l.in_features()});
        float* p = out.mutable_data();
        py::gil_scoped_release release;
        l.dequantize_weight(p);
        return out;
      }, "The weight the layer computes with, as fp32 [out, in].")
      .def("forward", &linear_forward, py::arg("x"), py::arg("training") = false, py::arg("dropout_key") = 0,
           "y[..., out] = x[..., in] W^T + scale (dropout(x) A^T) B^T (active adapter). GIL released.")
      .def("backward", &linear_backward, py::arg("x"), py::arg("dy"), py::arg("training") = false,
           py::arg("dropout_key") = 0,
           "Returns dx[..., in]; accumulates the active adapter's grads (and dW when trainable). GIL released.")
      .def("zero_grad", &Linear::zero_grad)
      .def("merge", &Linear::merge_active, "W += scale B A for the active adapter.")
      .def("unmerge", &Linear::unmerge, "Undo merge (NF4 / bf16 bases are restored exactly).")
      .def("dropout_mask", [](const Linear& l, int64_t N, uint64_t key) {
        ECOM_CHECK_ARG(N >= 0, "N must be >= 0");
        auto out = new_array<uint8_t>({N, l.in_features()});
        l.dropout_mask(N, key, out.mutable_data());
        return out;
      }, py::arg("N"), py::arg("dropout_key"), "Test helper: 1 where the active adapter's dropout keeps x[n, k].")
      .def("trainable_parameters", &linear_parameters, py::arg("prefix") = "",
           "ParameterList of the active adapter's A/B (and W when trainable), PEFT-style names.");

  py::class_<PyAdamW>(m, "AdamW", "torch.optim.AdamW semantics (decoupled decay, bias correction), fused in C++.")
      .def(py::init([](py::object plist, double lr, std::pair<double, double> betas, double eps, double weight_decay) {
             const PyParameterList& pl = plist.cast<const PyParameterList&>();
             PyAdamW a;
             a.opt = std::make_unique<nn::AdamW>(pl.params,
                                                 nn::AdamWConfig{lr, betas.first, betas.second, eps, weight_decay});
             a.plist = plist;
             return a;
           }),
           py::arg("params"), py::arg("lr") = 1e-3, py::arg("betas") = std::make_pair(0.9, 0.999),
           py::arg("eps") = 1e-8, py::arg("weight_decay") = 0.01)
      .def("step", [](PyAdamW& a) {
        py::gil_scoped_release release;
        a.opt->step();
      })
      .def_property("lr", [](const PyAdamW& a) { return a.opt->lr(); },
                    [](PyAdamW& a, double lr) { a.opt->set_lr(lr); })
      .def_property_readonly("step_count", [](const PyAdamW& a) { return a.opt->step_count(); })
      .def_property_readonly("betas", [](const PyAdamW& a) {
        return std::make_pair(a.opt->config().beta1, a.opt->config().beta2);
      })
      .def_property_readonly("eps", [](const PyAdamW& a) { return a.opt->config().eps; })
      .def_property_readonly("weight_decay", [](const PyAdamW& a) { return a.opt->config().weight_decay; })
      .def_property_readonly("params", [](const PyAdamW& a) { return a.plist; })
      .def("state_dict", &adamw_state_dict, "{'step': int, 'exp_avg': {name: array}, 'exp_avg_sq': {...}} (copies).")
      .def("load_state_dict", &adamw_load_state_dict, py::arg("state"),
           "Restores step and moments; names and shapes must match exactly (ValueError).");

  m.def("clip_grad_norm", [](const PyParameterList& pl, double max_norm) {
    py::gil_scoped_release release;
    return nn::clip_grad_norm(pl.params, max_norm);
  }, py::arg("params"), py::arg("max_norm"),
     "torch.nn.utils.clip_grad_norm_: returns the total L2 norm; scales grads by max_norm/(norm+1e-6) when < 1.");
  m.def("grad_norm", [](const PyParameterList& pl) {
    py::gil_scoped_release release;
    return nn::grad_norm(pl.params);
  }, py::arg("params"));
  m.def("zero_grads", [](const PyParameterList& pl) { nn::zero_grads(pl.params); }, py::arg("params"));
}

}  // namespace ecomllm::bindings
