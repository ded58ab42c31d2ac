// The single extension module ecomllm._core. Each csrc folder has one bind_* function.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace ecomllm::bindings {
void bind_base(py::module_& m);
void bind_quant(py::module_& m);
void bind_index(py::module_& m);
}  // namespace ecomllm::bindings

PYBIND11_MODULE(_core, m) {
  m.doc() = "ecomllm C++ core (private: use the ecomllm package)";
  ecomllm::bindings::bind_base(m);
  ecomllm::bindings::bind_quant(m);
  ecomllm::bindings::bind_index(m);
}
