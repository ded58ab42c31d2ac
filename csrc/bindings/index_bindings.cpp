// Bindings for csrc/index: the HNSW vector index. The Python facade is ecomllm.index.HNSWIndex;
// this layer only validates arrays strictly (dtype, shape, contiguity) and releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>

#include "bindings/numpy_views.h"
#include "index/distance.h"
#include "index/hnsw.h"

namespace ecomllm::bindings {
namespace {

using index::HnswIndex;
using index::HnswParams;

// A [N, dim] float32 matrix; returns N.
int64_t expect_rows(const py::array& a, int64_t dim, const char* what) {
  const TensorView v = expect_array(a, DType::F32, 2, what);
  ECOM_CHECK_ARG(v.shape[1] == dim, what, ": expected rows of dimension ", dim, ", got shape ", v.shape_str());
  return v.shape[0];
}

// A 1-D int64 array; returns its length.
int64_t expect_ids(const py::array& a, const char* what) { return expect_array(a, DType::I64, 1, what).numel(); }

class PyHnswIndex {
 public:
  PyHnswIndex(int64_t dim, const std::string& metric, int64_t M, int64_t ef_construction, const std::string& dtype,
              int64_t max_elements, uint64_t seed) {
    HnswParams p;
    p.dim = dim;
    p.metric = index::parse_metric(metric);
    p.storage = index::parse_storage(dtype);
    p.M = M;
    p.ef_construction = ef_construction;
    p.seed = seed;
    ix_ = std::make_unique<HnswIndex>(p, max_elements);
  }
  explicit PyHnswIndex(std::unique_ptr<HnswIndex> ix) : ix_(std::move(ix)) {}

  py::array_t<int64_t> add(const py::array& x, const std::optional<py::array>& ids, int num_threads) {
    const int64_t n = expect_rows(x, ix_->params().dim, "vectors");
    if (ids) ECOM_CHECK_ARG(expect_ids(*ids, "ids") == n, "ids: expected ", n, " ids (one per row), got ", ids->size());
    auto assigned = new_array<int64_t>({n});
    const float* px = static_cast<const float*>(x.data());
    const int64_t* pid = ids ? static_cast<const int64_t*>(ids->data()) : nullptr;
    int64_t* out = assigned.mutable_data();
    py::gil_scoped_release release;
    ix_->add(px, pid, n, num_threads, out);
    return assigned;
  }

  py::tuple search(const py::array& q, int64_t k, int64_t ef, const std::optional<py::array>& filter_ids,
                   const std::optional<py::array>& filter_labels, double exact_threshold, int num_threads) {
    const int64_t nq = expect_rows(q, ix_->params().dim, "queries");
    ECOM_CHECK_ARG(k >= 1, "k must be >= 1, got ", k);
    index::SearchFilter f;
    f.exact_threshold = exact_threshold;
    if (filter_ids) {
      f.n_ids = expect_ids(*filter_ids, "filter ids");
      f.ids = static_cast<const int64_t*>(filter_ids->data());
    }
    if (filter_labels) {
      f.n_labels = expect_ids(*filter_labels, "filter labels");
      f.labels = static_cast<const int64_t*>(filter_labels->data());
    }
    auto ids = new_array<int64_t>({nq, k});
    auto dist = new_array<float>({nq, k});
    auto counts = new_array<int64_t>({nq});
    index::SearchStats stats;
    {
      const float* pq = static_cast<const float*>(q.data());
      int64_t* pi = ids.mutable_data();
      float* pd = dist.mutable_data();
      int64_t* pc = counts.mutable_data();
      const bool filtered = filter_ids || filter_labels;
      py::gil_scoped_release release;
      stats = ix_->search(pq, nq, k, ef, filtered ? &f : nullptr, num_threads, pi, pd, pc);
    }
    return py::make_tuple(ids, dist, counts, stats.exact);
  }

  // One unfiltered query [dim] -> (ids [k], dists [k], count): the one-query-per-call path (an
  // online service, ann-benchmarks) without the batch call's filter arguments and [1, k] arrays.
  py::tuple search_single(const py::array& q, int64_t k, int64_t ef) {
    const TensorView v = expect_array(q, DType::F32, 1, "query");
    ECOM_CHECK_ARG(v.shape[0] == ix_->params().dim, "query: expected ", ix_->params().dim, " values, got shape ",
                   v.shape_str());
    ECOM_CHECK_ARG(k >= 1, "k must be >= 1, got ", k);
    auto ids = new_array<int64_t>({k});
    auto dist = new_array<float>({k});
    int64_t count = 0;
    {
      const float* pq = static_cast<const float*>(q.data());
      int64_t* pi = ids.mutable_data();
      float* pd = dist.mutable_data();
      py::gil_scoped_release release;
      ix_->search(pq, 1, k, ef, nullptr, /*num_threads=*/0, pi, pd, &count);
    }
    return py::make_tuple(ids, dist, count);
  }

  int64_t remove(const py::array& ids, bool missing_ok) {
    const int64_t n = expect_ids(ids, "ids");
    const int64_t* p = static_cast<const int64_t*>(ids.data());
    py::gil_scoped_release release;
    return ix_->remove(p, n, missing_ok);
  }

  void set_labels(const py::array& ids, const py::array& labels) {
    const int64_t n = expect_ids(ids, "ids");
    ECOM_CHECK_ARG(expect_ids(labels, "labels") == n, "labels: expected ", n, " labels (one per id), got ", labels.size());
    ix_->set_labels(static_cast<const int64_t*>(ids.data()), static_cast<const int64_t*>(labels.data()), n);
  }

  py::array_t<int64_t> get_labels(const py::array& ids) {
    const int64_t n = expect_ids(ids, "ids");
    auto out = new_array<int64_t>({n});
    ix_->get_labels(static_cast<const int64_t*>(ids.data()), n, out.mutable_data());
    return out;
  }

  py::array_t<float> get_vectors(const py::array& ids) {
    const int64_t n = expect_ids(ids, "ids");
    auto out = new_array<float>({n, ix_->params().dim});
    const int64_t* p = static_cast<const int64_t*>(ids.data());
    float* po = out.mutable_data();
    py::gil_scoped_release release;
    ix_->get_vectors(p, n, po);
    return out;
  }

  py::array_t<int64_t> ids() const {
    std::vector<int64_t> v;
    {
      py::gil_scoped_release release;
      v = ix_->ids();
    }
    auto out = new_array<int64_t>({static_cast<int64_t>(v.size())});
    std::copy(v.begin(), v.end(), out.mutable_data());
    return out;
  }

  HnswIndex& ix() { return *ix_; }

 private:
  std::unique_ptr<HnswIndex> ix_;
};

}  // namespace

void bind_index(py::module_& m) {
  py::class_<PyHnswIndex>(m, "HNSWIndex", "HNSW vector index (private: use ecomllm.HNSWIndex)")
      .def(py::init<int64_t, const std::string&, int64_t, int64_t, const std::string&, int64_t, uint64_t>(),
           py::arg("dim"), py::arg("metric") = "cosine", py::arg("M") = 16, py::arg("ef_construction") = 200,
           py::arg("dtype") = "f32", py::arg("max_elements") = 0, py::arg("seed") = 100)
      .def("add", &PyHnswIndex::add, py::arg("vectors"), py::arg("ids") = py::none(), py::arg("num_threads") = 0)
      .def("search", &PyHnswIndex::search, py::arg("queries"), py::arg("k"), py::arg("ef"),
           py::arg("filter_ids") = py::none(), py::arg("filter_labels") = py::none(),
           py::arg("exact_threshold") = 0.05, py::arg("num_threads") = 0)
      .def("search_single", &PyHnswIndex::search_single, py::arg("query"), py::arg("k"), py::arg("ef"))
      .def("reorder", [](PyHnswIndex& s) {
             py::gil_scoped_release release;
             s.ix().reorder();
           })
      .def("remove", &PyHnswIndex::remove, py::arg("ids"), py::arg("missing_ok") = false)
      .def("compact", [](PyHnswIndex& s, int num_threads) {
             py::gil_scoped_release release;
             s.ix().compact(num_threads);
           }, py::arg("num_threads") = 0)
      .def("set_labels", &PyHnswIndex::set_labels, py::arg("ids"), py::arg("labels"))
      .def("get_labels", &PyHnswIndex::get_labels, py::arg("ids"))
      .def("get_vectors", &PyHnswIndex::get_vectors, py::arg("ids"))
      .def("ids", &PyHnswIndex::ids)
      .def("contains", [](PyHnswIndex& s, int64_t id) { return s.ix().contains(id); }, py::arg("id"))
      .def("next_auto_id", [](PyHnswIndex& s) { return s.ix().next_auto_id(); })
      .def("save", [](PyHnswIndex& s, const std::string& path) {
             py::gil_scoped_release release;
             s.ix().save(path);
           }, py::arg("path"))
      .def_static("load", [](const std::string& path, bool mmap) {
             std::unique_ptr<HnswIndex> ix;
             {
               py::gil_scoped_release release;
               ix = HnswIndex::load(path, mmap);
             }
             return std::make_unique<PyHnswIndex>(std::move(ix));
           }, py::arg("path"), py::arg("mmap") = false)
      .def("check_graph", [](PyHnswIndex& s) { s.ix().check_graph(); })
      .def("__len__", [](PyHnswIndex& s) { return s.ix().size(); })
      .def_property_readonly("dim", [](PyHnswIndex& s) { return s.ix().params().dim; })
      .def_property_readonly("metric", [](PyHnswIndex& s) { return index::metric_name(s.ix().params().metric); })
      .def_property_readonly("dtype", [](PyHnswIndex& s) { return index::storage_name(s.ix().params().storage); })
      .def_property_readonly("M", [](PyHnswIndex& s) { return s.ix().params().M; })
      .def_property_readonly("ef_construction", [](PyHnswIndex& s) { return s.ix().params().ef_construction; })
      .def_property_readonly("deleted_count", [](PyHnswIndex& s) { return s.ix().deleted_count(); })
      .def_property_readonly("capacity", [](PyHnswIndex& s) { return s.ix().capacity(); })
      .def_property_readonly("slots_used", [](PyHnswIndex& s) { return s.ix().slots_used(); })
      .def_property_readonly("max_level", [](PyHnswIndex& s) { return s.ix().max_level(); })
      .def_property_readonly("memory_bytes", [](PyHnswIndex& s) { return s.ix().memory_bytes(); })
      .def_property_readonly("read_only", [](PyHnswIndex& s) { return s.ix().read_only(); });

  m.def("hnsw_crc32", [](py::bytes data) {
    const std::string s = data;
    return index::crc32(s.data(), s.size());
  }, py::arg("data"), "CRC-32 of bytes as the index files use it (equal to zlib.crc32)");
  m.def("index_distance", [](const py::array& q, const py::array& x, const std::string& kernel, const std::string& level) {
    // One kernel of one SIMD level, for tests against the scalar reference. x: float32, uint16
    // (bf16 bits) or int8 row of the same length as q.
    const TensorView qv = expect_array(q, DType::F32, 1, "q");
    const int64_t n = qv.numel();
    ECOM_CHECK_ARG(n >= 1 && static_cast<int64_t>(x.size()) == n && x.ndim() == 1, "x: expected ", n, " elements");
    ECOM_CHECK_ARG(x.flags() & py::array::c_style, "x: expected a C-contiguous array");
    const index::DistanceKernels& k = index::distance_kernels(parse_simd_level(level));
    const float* pq = qv.ptr<const float>();
    if (kernel == "l2_f32" || kernel == "dot_f32") {
      ECOM_CHECK_ARG(x.dtype().is(py::dtype::of<float>()), "x: expected float32");
      const float* px = static_cast<const float*>(x.data());
      return kernel == "l2_f32" ? k.l2_f32(pq, px, n) : k.dot_f32(pq, px, n);
    }
    if (kernel == "l2_bf16" || kernel == "dot_bf16") {
      ECOM_CHECK_ARG(x.dtype().is(py::dtype::of<uint16_t>()), "x: expected uint16 (bf16 bits)");
      const uint16_t* px = static_cast<const uint16_t*>(x.data());
      return kernel == "l2_bf16" ? k.l2_bf16(pq, px, n) : k.dot_bf16(pq, px, n);
    }
    ECOM_CHECK_ARG(kernel == "dot_i8", "unknown kernel '", kernel, "'");
    ECOM_CHECK_ARG(x.dtype().is(py::dtype::of<int8_t>()), "x: expected int8");
    return k.dot_i8(pq, static_cast<const int8_t*>(x.data()), n);
  }, py::arg("q"), py::arg("x"), py::arg("kernel"), py::arg("level"));
}

}  // namespace ecomllm::bindings
