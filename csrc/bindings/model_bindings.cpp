// pybind11 glue for csrc/model: _core.LlamaModel. The Python facade (ecomllm.model) converts
// user input to the exact arrays these functions take (int32, C-contiguous, [B, T]).
#include <pybind11/stl.h>

#include "bindings/numpy_views.h"
#include "bindings/parameter_list.h"
#include "model/llama.h"
#include "model/peft.h"

namespace ecomllm::bindings {
namespace {

using model::LlamaModel;
using IdArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

// The batch arrays, checked against each other: ids [B, T]; mask and positions [B, T] or None.
struct BatchArrays {
  model::BatchInput in;
  IdArray ids, mask, pos;
};

BatchArrays batch_of(const py::array& ids, const py::object& mask, const py::object& pos) {
  BatchArrays b;
  b.ids = IdArray::ensure(ids);
  ECOM_CHECK_ARG(b.ids && b.ids.ndim() == 2, "input_ids: expected an int32 array [B, T]");
  b.in.B = b.ids.shape(0), b.in.T = b.ids.shape(1), b.in.ids = b.ids.data();
  auto side = [&](const py::object& o, IdArray& keep, const char* what) -> const int32_t* {
    if (o.is_none()) return nullptr;
    keep = IdArray::ensure(o);
    ECOM_CHECK_ARG(keep && keep.ndim() == 2 && keep.shape(0) == b.in.B && keep.shape(1) == b.in.T, what,
                   ": expected an int32 array of shape [", b.in.B, ", ", b.in.T, "] like input_ids");
    return keep.data();
  };
  b.in.attention_mask = side(mask, b.mask, "attention_mask");
  b.in.position_ids = side(pos, b.pos, "position_ids");
  return b;
}

const int32_t* labels_of(const py::array& labels, const BatchArrays& b, IdArray& keep) {
  keep = IdArray::ensure(labels);
  ECOM_CHECK_ARG(keep && keep.ndim() == 2 && keep.shape(0) == b.in.B && keep.shape(1) == b.in.T,
                 "labels: expected an int32 array of shape [", b.in.B, ", ", b.in.T, "] like input_ids");
  return keep.data();
}

py::array_t<float> weight_array(const LlamaModel& m, const std::string& name) {
  auto out = new_array<float>(m.weight_shape(name));
  m.get_weight(name, out.mutable_data());
  return out;
}

}  // namespace

void bind_model(py::module_& m) {
  py::class_<LlamaModel>(m, "LlamaModel")
      .def_static(
          "from_pretrained",
          [](const std::string& path, bool nf4, bool bf16, int64_t blocksize, bool double_quant) {
            model::LoadOptions opt{nf4, bf16, blocksize, double_quant};
            py::gil_scoped_release nogil;
            return LlamaModel::from_pretrained(path, opt);
          },
          py::arg("path"), py::arg("nf4") = false, py::arg("bf16") = false, py::arg("blocksize") = 64,
          py::arg("double_quant") = true)
      .def_static(
          "from_config",
          [](const std::string& config_json, uint64_t seed, float init_std) {
            nlohmann::json j;
            try {
              j = nlohmann::json::parse(config_json);
            } catch (const nlohmann::json::exception& e) {
              throw ValueError(std::string("config: not valid JSON: ") + e.what());
            }
            return LlamaModel::from_config(model::LlamaConfig::from_json(j), seed, init_std);
          },
          py::arg("config_json"), py::arg("seed") = 0, py::arg("init_std") = 0.02f)
      .def("config_json", [](const LlamaModel& self) { return self.config().to_json().dump(); })
      .def("weight_names", &LlamaModel::weight_names)
      .def("weight_shape", &LlamaModel::weight_shape)
      .def("get_weight", &weight_array)
      .def("set_weight",
           [](LlamaModel& self, const std::string& name, const py::array_t<float, py::array::c_style | py::array::forcecast>& w) {
             const auto shape = self.weight_shape(name);
             ECOM_CHECK_ARG(static_cast<size_t>(w.ndim()) == shape.size(), name, ": expected ", shape.size(),
                            " dimensions, got ", w.ndim());
             for (size_t i = 0; i < shape.size(); ++i)
               ECOM_CHECK_ARG(w.shape(i) == shape[i], name, ": shape mismatch in dimension ", i);
             self.set_weight(name, w.data(), w.size());
           })
      .def("save_pretrained",
           [](const LlamaModel& self, const std::string& dir, bool bf16, int64_t max_shard_bytes) {
             py::gil_scoped_release nogil;
             self.save_pretrained(dir, bf16, max_shard_bytes);
           },
           py::arg("dir"), py::arg("bf16") = false, py::arg("max_shard_bytes") = int64_t{5} << 30)
      .def("set_train_all", &LlamaModel::set_train_all)
      .def_property_readonly("train_all", &LlamaModel::train_all)
      .def_property("gradient_checkpointing", &LlamaModel::gradient_checkpointing,
                    &LlamaModel::set_gradient_checkpointing)
      .def_property("dropout_step", &LlamaModel::dropout_step, &LlamaModel::set_dropout_step)
      .def(
          "add_adapter",
          [](LlamaModel& self, const std::string& name, int64_t r, float alpha, float dropout, bool rslora,
             uint64_t seed, const py::object& targets) {
            model::AdapterConfig cfg;
            cfg.spec = nn::LoraSpec{r, alpha, dropout, rslora, seed};
            if (py::isinstance<py::str>(targets)) {
              const std::string s = targets.cast<std::string>();
              if (s == "all-linear") cfg.target_modules = {s};
              else cfg.target_regex = s;
            } else {
              cfg.target_modules = targets.cast<std::vector<std::string>>();
            }
            return self.add_adapter(name, cfg);
          },
          py::arg("name"), py::arg("r"), py::arg("alpha"), py::arg("dropout"), py::arg("rslora"), py::arg("seed"),
          py::arg("target_modules"))
      .def("set_active_adapter", &LlamaModel::set_active_adapter)
      .def_property_readonly("active_adapter", &LlamaModel::active_adapter)
      .def("remove_adapter", &LlamaModel::remove_adapter)
      .def("adapter_names", &LlamaModel::adapter_names)
      .def("adapter_modules", &LlamaModel::adapter_modules)
      .def("adapter_spec",
           [](const LlamaModel& self, const std::string& name) {
             const auto& c = self.adapter_config(name);
             py::dict d;
             d["r"] = c.spec.r, d["alpha"] = c.spec.alpha, d["dropout"] = c.spec.dropout, d["rslora"] = c.spec.rslora;
             if (c.target_regex.empty()) d["target_modules"] = c.target_modules;
             else d["target_modules"] = c.target_regex;
             return d;
           })
      .def("lora_weights",
           [](LlamaModel& self, const std::string& adapter, const std::string& module) {
             nn::LoraAdapter* ad = self.lora(adapter, module);
             ECOM_CHECK_ARG(ad, "adapter '", adapter, "' is not on module '", module, "'");
             const int64_t r = ad->spec.r;
             auto a = new_array<float>({r, static_cast<int64_t>(ad->A.size() / 4) / r});
             auto b = new_array<float>({static_cast<int64_t>(ad->B.size() / 4) / r, r});
             std::memcpy(a.mutable_data(), ad->a(), static_cast<size_t>(a.size()) * 4);
             std::memcpy(b.mutable_data(), ad->b(), static_cast<size_t>(b.size()) * 4);
             return py::make_tuple(a, b);
           })
      .def("set_lora_weights",
           [](LlamaModel& self, const std::string& adapter, const std::string& module,
              const py::array_t<float, py::array::c_style | py::array::forcecast>& a,
              const py::array_t<float, py::array::c_style | py::array::forcecast>& b) {
             nn::LoraAdapter* ad = self.lora(adapter, module);
             ECOM_CHECK_ARG(ad, "adapter '", adapter, "' is not on module '", module, "'");
             const int64_t r = ad->spec.r;
             ECOM_CHECK_ARG(a.ndim() == 2 && a.shape(0) == r && a.size() * 4 == static_cast<py::ssize_t>(ad->A.size()),
                            module, ".lora_A: expected shape [", r, ", ", ad->A.size() / 4 / r, "]");
             ECOM_CHECK_ARG(b.ndim() == 2 && b.shape(1) == r && b.size() * 4 == static_cast<py::ssize_t>(ad->B.size()),
                            module, ".lora_B: expected shape [", ad->B.size() / 4 / r, ", ", r, "]");
             std::memcpy(ad->a(), a.data(), ad->A.size());
             std::memcpy(ad->b(), b.data(), ad->B.size());
           })
      .def("save_adapter",
           [](LlamaModel& self, const std::string& name, const std::string& dir) {
             py::gil_scoped_release nogil;
             model::save_adapter(self, name, dir);
           })
      .def("load_adapter",
           [](LlamaModel& self, const std::string& dir, const std::string& name) {
             py::gil_scoped_release nogil;
             return model::load_adapter(self, dir, name);
           })
      .def("merge_adapter", &LlamaModel::merge_adapter)
      .def("unmerge_adapter", &LlamaModel::unmerge_adapter)
      .def("zero_grad", &LlamaModel::zero_grad)
      .def("num_parameters", &LlamaModel::num_parameters, py::arg("trainable_only") = false)
      .def(
          "prepare_decoding",
          [](LlamaModel& self, bool enabled, bool keep_codes) {
            py::gil_scoped_release nogil;
            return self.prepare_decoding(enabled, keep_codes);
          },
          py::arg("enabled") = true, py::arg("keep_codes") = true)
      .def("decoding_nbytes", &LlamaModel::decoding_nbytes)
      .def("trainable_parameters",
           [](py::object self_obj) {
             auto& self = self_obj.cast<LlamaModel&>();
             return PyParameterList{self.trainable_parameters(), self_obj, {}};
           })
      .def("gradients",
           [](LlamaModel& self) {
             py::dict out;
             for (const auto& ref : self.trainable_parameters()) {
               auto g = new_array<float>(ref.shape);
               std::memcpy(g.mutable_data(), ref.grad, static_cast<size_t>(ref.numel()) * 4);
               out[py::str(ref.name)] = g;
             }
             return out;
           })
      .def(
          "forward",
          [](LlamaModel& self, const py::array& ids, const py::object& mask, const py::object& pos) {
            BatchArrays b = batch_of(ids, mask, pos);
            auto logits = new_array<float>({b.in.B, b.in.T, self.config().vocab_size});
            float* out = logits.mutable_data();
            {
              py::gil_scoped_release nogil;
              self.forward(b.in, out);
            }
            return logits;
          },
          py::arg("input_ids"), py::arg("attention_mask") = py::none(), py::arg("position_ids") = py::none())
      .def(
          "forward_backward",
          [](LlamaModel& self, const py::array& ids, const py::array& labels, const py::object& mask,
             const py::object& pos, float grad_scale) {
            BatchArrays b = batch_of(ids, mask, pos);
            IdArray keep;
            const int32_t* lab = labels_of(labels, b, keep);
            model::LossResult r;
            {
              py::gil_scoped_release nogil;
              r = self.forward_backward(b.in, lab, grad_scale);
            }
            return py::make_tuple(r.loss_sum, r.num_targets);
          },
          py::arg("input_ids"), py::arg("labels"), py::arg("attention_mask") = py::none(),
          py::arg("position_ids") = py::none(), py::arg("grad_scale") = 0.0f)
      .def(
          "loss",
          [](LlamaModel& self, const py::array& ids, const py::array& labels, const py::object& mask,
             const py::object& pos) {
            BatchArrays b = batch_of(ids, mask, pos);
            IdArray keep;
            const int32_t* lab = labels_of(labels, b, keep);
            model::LossResult r;
            {
              py::gil_scoped_release nogil;
              r = self.loss(b.in, lab);
            }
            return py::make_tuple(r.loss_sum, r.num_targets);
          },
          py::arg("input_ids"), py::arg("labels"), py::arg("attention_mask") = py::none(),
          py::arg("position_ids") = py::none());
}

}  // namespace ecomllm::bindings
