// Bindings for csrc/io: safetensors files and HF checkpoints (read-only numpy views into the
// mapping, fp32 conversion), atomic saving from numpy arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <functional>
#include <memory>
#include <optional>

#include "bindings/numpy_views.h"
#include "io/safetensors.h"

namespace ecomllm::bindings {
namespace {

using io::Checkpoint;
using io::SafetensorsFile;
using io::StDType;
using io::TensorInfo;

// str or os.PathLike -> a path string.
std::string fspath(const py::handle& p) { return py::module_::import("os").attr("fsdecode")(p).cast<std::string>(); }

py::dtype numpy_dtype(StDType t) {
  switch (t) {
    case StDType::BOOL: return py::dtype("?");
    case StDType::U8: return py::dtype("u1");
    case StDType::I8: return py::dtype("i1");
    case StDType::U16: return py::dtype("<u2");
    case StDType::I16: return py::dtype("<i2");
    case StDType::F16: return py::dtype("<f2");
    case StDType::BF16: return py::dtype::from_args(py::module_::import("ml_dtypes").attr("bfloat16"));
    case StDType::U32: return py::dtype("<u4");
    case StDType::I32: return py::dtype("<i4");
    case StDType::F32: return py::dtype("<f4");
    case StDType::U64: return py::dtype("<u8");
    case StDType::I64: return py::dtype("<i8");
    case StDType::F64: return py::dtype("<f8");
  }
  throw ValueError("invalid dtype");
}

// The safetensors dtype of a numpy dtype (ml_dtypes.bfloat16 -> BF16), or ValueError.
StDType st_dtype_of(const py::dtype& dt, const std::string& what) {
  const std::string name = py::str(dt.attr("name"));
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  if (name == "bfloat16" && size == 2) return StDType::BF16;
  if (kind == 'b' && size == 1) return StDType::BOOL;
  if (kind == 'u' && size == 1) return StDType::U8;
  if (kind == 'u' && size == 2) return StDType::U16;
  if (kind == 'u' && size == 4) return StDType::U32;
  if (kind == 'u' && size == 8) return StDType::U64;
  if (kind == 'i' && size == 1) return StDType::I8;
  if (kind == 'i' && size == 2) return StDType::I16;
  if (kind == 'i' && size == 4) return StDType::I32;
  if (kind == 'i' && size == 8) return StDType::I64;
  if (kind == 'f' && size == 2) return StDType::F16;
  if (kind == 'f' && size == 4) return StDType::F32;
  if (kind == 'f' && size == 8) return StDType::F64;
  throw ValueError(what + ": dtype " + name + " cannot be stored in safetensors");
}

py::tuple shape_tuple(const TensorInfo& t) {
  py::tuple out(t.shape.size());
  for (size_t i = 0; i < t.shape.size(); ++i) out[i] = t.shape[i];
  return out;
}

py::list tensor_list(const std::vector<const TensorInfo*>& infos) {
  py::list out;
  for (const TensorInfo* t : infos) out.append(py::make_tuple(t->name, io::st_dtype_name(t->dtype), shape_tuple(*t)));
  return out;
}

// A read-only array over the mapped bytes of `t`; `owner` (the Python file/checkpoint object)
// stays alive as long as the array does.
// numpy's own refusals of a shape the file allows (more than 64 dimensions, a size it cannot
// index) as a ValueError that names the file and the tensor.
template <typename Make>
auto numpy_shape_checked(const std::string& file, const std::string& name, Make make) {
  try {
    return make();
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_ValueError)) throw;
    throw ValueError(
        detail::concat(file, ": tensor '", printable(name), "': numpy cannot hold its shape (", e.what(), ")"));
  }
}

py::array tensor_view(const std::string& file, const TensorInfo& t, const std::byte* p, const py::object& owner) {
  const py::dtype dt = numpy_dtype(t.dtype);
  std::vector<py::ssize_t> shape(t.shape.begin(), t.shape.end()), strides(t.shape.size());
  py::ssize_t stride = dt.itemsize();
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= shape[i];
  }
  py::array arr = numpy_shape_checked(file, t.name, [&] { return py::array(dt, shape, strides, p, owner); });
  arr.attr("setflags")(py::arg("write") = false);
  return arr;
}

py::array_t<float> read_f32_array(const std::string& file, const TensorInfo& t,
                                  const std::function<void(float*)>& read) {
  auto out = numpy_shape_checked(file, t.name, [&] { return new_array<float>(t.shape); });
  float* dst = out.mutable_data();
  py::gil_scoped_release release;
  read(dst);
  return out;
}

// dict name -> array as SaveTensors (C-contiguous little-endian arrays kept alive in `keep`).
std::vector<io::SaveTensor> save_list(const py::dict& tensors, std::vector<py::array>& keep) {
  std::vector<io::SaveTensor> out;
  const py::module_ np = py::module_::import("numpy");
  for (const auto& [key, value] : tensors) {
    ECOM_CHECK_ARG(py::isinstance<py::str>(key), "tensor names must be strings, got ", std::string(py::repr(key)));
    const std::string name = key.cast<std::string>();
    py::array arr = np.attr("asarray")(value);
    const StDType dtype = st_dtype_of(arr.dtype(), "tensor '" + name + "'");
    if (py::str(arr.dtype().attr("byteorder")).cast<std::string>() == ">")
      arr = arr.attr("astype")(arr.dtype().attr("newbyteorder")("<"));
    if (!(arr.flags() & py::array::c_style)) arr = arr.attr("copy")("C");
    std::vector<int64_t> shape(arr.shape(), arr.shape() + arr.ndim());
    out.push_back({name, dtype, std::move(shape), arr.data()});
    keep.push_back(std::move(arr));
  }
  return out;
}

std::map<std::string, std::string> metadata_map(const std::optional<py::dict>& metadata) {
  std::map<std::string, std::string> out;
  if (!metadata) return out;
  for (const auto& [k, v] : *metadata) {
    ECOM_CHECK_ARG(py::isinstance<py::str>(k) && py::isinstance<py::str>(v),
                   "metadata keys and values must be strings, got ", std::string(py::repr(k)), ": ",
                   std::string(py::repr(v)));
    out[k.cast<std::string>()] = v.cast<std::string>();
  }
  return out;
}

}  // namespace

void bind_io(py::module_& m) {
  py::class_<SafetensorsFile, std::shared_ptr<SafetensorsFile>>(
      m, "SafetensorsFile", "A validated, memory-mapped safetensors file (read-only).")
      .def_static("open", [](const py::object& path) {
        const std::string p = fspath(path);
        py::gil_scoped_release release;
        return std::make_shared<SafetensorsFile>(SafetensorsFile::open(p));
      }, py::arg("path"), "Open and validate a file; ValueError('<path>: <reason>') for a bad one.")
      .def_property_readonly("path", &SafetensorsFile::path)
      .def("tensors", [](const SafetensorsFile& f) {
        std::vector<const TensorInfo*> infos;
        for (const TensorInfo& t : f.tensors()) infos.push_back(&t);
        return tensor_list(infos);
      }, "[(name, dtype, shape)] in header order; dtype as in the file ('F32', 'BF16', ...).")
      .def("metadata", &SafetensorsFile::metadata, "The '__metadata__' dict ({} if absent).")
      .def("__contains__", [](const SafetensorsFile& f, const std::string& name) { return f.find(name) != nullptr; })
      .def("__len__", [](const SafetensorsFile& f) { return f.tensors().size(); })
      .def("numpy", [](const py::object& self, const std::string& name) {
        const auto& f = self.cast<const SafetensorsFile&>();
        const TensorInfo* t = f.find(name);
        ECOM_CHECK_ARG(t != nullptr, f.path(), ": no tensor named '", name, "'");
        return tensor_view(f.path(), *t, f.data(*t), self);
      }, py::arg("name"), "A read-only view of the tensor in the mapping (BF16 as ml_dtypes.bfloat16).")
      .def("read_f32", [](const SafetensorsFile& f, const std::string& name) {
        const TensorInfo* t = f.find(name);
        ECOM_CHECK_ARG(t != nullptr, f.path(), ": no tensor named '", name, "'");
        return read_f32_array(f.path(), *t, [&](float* out) { f.read_f32(name, out); });
      }, py::arg("name"), "The tensor converted to float32 (F32/F16/BF16/F64 only).");

  py::class_<Checkpoint, std::shared_ptr<Checkpoint>>(
      m, "Checkpoint", "A Hugging Face model directory: model.safetensors or shards + model.safetensors.index.json.")
      .def_static("open", [](const py::object& path) {
        const std::string p = fspath(path);
        py::gil_scoped_release release;
        return std::make_shared<Checkpoint>(Checkpoint::open(p));
      }, py::arg("path"), "Open a directory (or one .safetensors file); every shard validated.")
      .def("names", &Checkpoint::names, "Tensor names, sorted.")
      .def("tensors", [](const Checkpoint& c) {
        std::vector<const TensorInfo*> infos;
        for (const std::string& n : c.names()) infos.push_back(&c.info(n));
        return tensor_list(infos);
      }, "[(name, dtype, shape)] sorted by name.")
      .def("metadata", &Checkpoint::metadata, "'__metadata__' of the first shard.")
      .def("files", [](const Checkpoint& c) {
        std::vector<std::string> out;
        for (const SafetensorsFile& f : c.files()) out.push_back(f.path());
        return out;
      }, "Paths of the opened safetensors files.")
      .def("file_of", [](const Checkpoint& c, const std::string& name) { return c.file_of(name).path(); },
           py::arg("name"), "Path of the shard holding a tensor.")
      .def("__contains__", &Checkpoint::contains)
      .def("__len__", [](const Checkpoint& c) { return c.names().size(); })
      .def("numpy", [](const py::object& self, const std::string& name) {
        const auto& c = self.cast<const Checkpoint&>();
        return tensor_view(c.file_of(name).path(), c.info(name), c.data(name), self);
      }, py::arg("name"), "A read-only view of the tensor in its shard's mapping.")
      .def("read_f32", [](const Checkpoint& c, const std::string& name) {
        return read_f32_array(c.file_of(name).path(), c.info(name), [&](float* out) { c.read_f32(name, out); });
      }, py::arg("name"), "The tensor converted to float32 (F32/F16/BF16/F64 only).");

  m.def("save_safetensors", [](const py::object& path, const py::dict& tensors, std::optional<py::dict> metadata) {
    const std::string p = fspath(path);
    std::vector<py::array> keep;
    const auto list = save_list(tensors, keep);
    const auto meta = metadata_map(metadata);
    py::gil_scoped_release release;
    io::save_safetensors(p, list, meta);
  }, py::arg("path"), py::arg("tensors"), py::arg("metadata") = py::none(),
        "Write {name: array} atomically, in dict order (bfloat16 via ml_dtypes).");
  m.def("save_checkpoint", [](const py::object& dir, const py::dict& tensors, std::optional<py::dict> metadata,
                              int64_t max_shard_bytes) {
    const std::string p = fspath(dir);
    std::vector<py::array> keep;
    const auto list = save_list(tensors, keep);
    const auto meta = metadata_map(metadata);
    py::gil_scoped_release release;
    io::save_checkpoint(p, list, meta, max_shard_bytes);
  }, py::arg("dir"), py::arg("tensors"), py::arg("metadata") = py::none(),
        py::arg("max_shard_bytes") = int64_t{5'000'000'000},
        "Write a HF model directory: model.safetensors, or shards + index when larger than max_shard_bytes.");
}

}  // namespace ecomllm::bindings
