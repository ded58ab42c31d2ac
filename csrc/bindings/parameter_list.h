// _core.ParameterList: a ParamList (raw pointers into layer storage) plus what keeps that storage
// alive. Other bindings (the model) build one with make_parameter_list and return it to Python.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <vector>

#include "nn/parameter.h"

namespace ecomllm::bindings {

namespace py = pybind11;

struct PyParameterList {
  nn::ParamList params;
  py::object owner;                             // a Python object owning the storage (a layer, a model, arrays)
  std::vector<std::shared_ptr<void>> storage;   // C++ storage shared with the owner (survives its removal)
};

}  // namespace ecomllm::bindings
