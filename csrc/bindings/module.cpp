// The single extension module ecomllm._core. Each csrc folder has one bind_* function.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace ecomllm::bindings {
void bind_base(py::module_& m);
void bind_quant(py::module_& m);
void bind_nn_linear(py::module_& m);
void bind_io(py::module_& m);
void bind_nn(py::module_& m);
void bind_bm25(py::module_& m);
void bind_model(py::module_& m);
void bind_index(py::module_& m);
void bind_tokenizer(py::module_& m);
}  // namespace ecomllm::bindings

PYBIND11_MODULE(_core, m) {
  m.doc() = "ecomllm C++ core (private: use the ecomllm package)";
  ecomllm::bindings::bind_base(m);
  ecomllm::bindings::bind_quant(m);
  ecomllm::bindings::bind_nn_linear(m);
  ecomllm::bindings::bind_io(m);
  ecomllm::bindings::bind_nn(m);
  ecomllm::bindings::bind_bm25(m);
  ecomllm::bindings::bind_model(m);
  ecomllm::bindings::bind_index(m);
  ecomllm::bindings::bind_tokenizer(m);
}
