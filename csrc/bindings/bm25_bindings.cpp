// Bindings for csrc/index/bm25: the BM25 inverted index and its tokeniser. Texts arrive as Python
// str (pybind11 encodes them to UTF-8); every long call runs without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "bindings/numpy_views.h"
#include "index/bm25.h"

namespace ecomllm::bindings {
namespace {

using index::BM25Index;

// A 1-D int64 array's values (ids, filters).
std::vector<int64_t> id_vector(const py::array& a, const char* what) {
  const TensorView v = expect_array(a, DType::I64, 1, what);
  const auto* p = v.ptr<const int64_t>();
  return std::vector<int64_t>(p, p + v.numel());
}

// Pointer and count of an optional allowed-ids array (nullptr, -1 when absent).
std::pair<const int64_t*, int64_t> filter_view(const std::optional<py::array>& allowed) {
  if (!allowed) return {nullptr, -1};
  const TensorView v = expect_array(*allowed, DType::I64, 1, "filter");
  return {v.ptr<const int64_t>(), v.numel()};
}

py::array_t<int64_t> to_array(const std::vector<int64_t>& v) {
  auto out = new_array<int64_t>({static_cast<int64_t>(v.size())});
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

}  // namespace

void bind_bm25(py::module_& m) {
  m.def(
      "bm25_tokenize",
      [](const std::string& text) {
        py::gil_scoped_release release;
        return index::bm25_tokenize(text);
      },
      py::arg("text"), "BM25 tokens of a text (rules in csrc/index/bm25.h)");
  m.attr("BM25_TOKENIZER_VERSION") = index::kTokenizerVersion;

  py::class_<BM25Index>(m, "BM25Index")
      .def(py::init<double, double>(), py::arg("k1") = 1.2, py::arg("b") = 0.75)
      .def(
          "add",
          [](BM25Index& self, const std::vector<std::string>& texts, const py::array& ids) {
            const std::vector<int64_t> id_vec = id_vector(ids, "ids");
            py::gil_scoped_release release;
            self.add(texts, id_vec);
          },
          py::arg("texts"), py::arg("ids"))
      .def(
          "add_auto",
          [](BM25Index& self, const std::vector<std::string>& texts) {
            std::vector<int64_t> ids;
            {
              py::gil_scoped_release release;
              ids = self.add_auto(texts);
            }
            return to_array(ids);
          },
          py::arg("texts"))
      .def(
          "remove",
          [](BM25Index& self, const py::array& ids, bool missing_ok) {
            const std::vector<int64_t> id_vec = id_vector(ids, "ids");
            py::gil_scoped_release release;
            return self.remove(id_vec, missing_ok);
          },
          py::arg("ids"), py::arg("missing_ok") = false)
      .def(
          "search",
          [](const BM25Index& self, const std::string& query, int64_t k, std::optional<py::array> allowed) {
            const auto [fp, fn] = filter_view(allowed);
            index::BM25Hits hits;
            {
              py::gil_scoped_release release;
              hits = self.search(query, k, fp, fn);
            }
            auto scores = new_array<float>({static_cast<int64_t>(hits.scores.size())});
            std::copy(hits.scores.begin(), hits.scores.end(), scores.mutable_data());
            return py::make_tuple(to_array(hits.ids), scores);
          },
          py::arg("query"), py::arg("k"), py::arg("filter") = py::none())
      .def(
          "search_batch",
          [](const BM25Index& self, const std::vector<std::string>& queries, int64_t k,
             std::optional<py::array> allowed) {
            ECOM_CHECK_ARG(k >= 1, "k must be >= 1, got ", k);
            const auto [fp, fn] = filter_view(allowed);
            const auto q = static_cast<int64_t>(queries.size());
            auto ids = new_array<int64_t>({q, k});
            auto scores = new_array<float>({q, k});
            int64_t* ip = ids.mutable_data();
            float* sp = scores.mutable_data();
            {
              py::gil_scoped_release release;
              self.search_batch(queries, k, fp, fn, ip, sp);
            }
            return py::make_tuple(ids, scores);
          },
          py::arg("queries"), py::arg("k"), py::arg("filter") = py::none())
      .def(
          "save",
          [](const BM25Index& self, const std::string& path) {
            py::gil_scoped_release release;
            self.save(path);
          },
          py::arg("path"))
      .def_static(
          "load",
          [](const std::string& path) {
            py::gil_scoped_release release;
            return BM25Index::load(path);
          },
          py::arg("path"))
      .def_static(
          "from_bytes",
          [](const py::bytes& data) {
            const std::string_view s = data;
            py::gil_scoped_release release;
            return BM25Index::deserialize(reinterpret_cast<const uint8_t*>(s.data()), s.size());
          },
          py::arg("data"))
      .def("to_bytes",
           [](const BM25Index& self) {
             std::vector<uint8_t> bytes;
             {
               py::gil_scoped_release release;
               bytes = self.serialize();
             }
             return py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
           })
      .def("__len__", &BM25Index::size)
      .def("contains", &BM25Index::contains, py::arg("id"))
      .def("ids", [](const BM25Index& self) { return to_array(self.ids()); })
      .def("idf", &BM25Index::idf, py::arg("term"))
      .def_property_readonly("num_terms", &BM25Index::num_terms)
      .def_property_readonly("avgdl", &BM25Index::avgdl)
      .def_property_readonly("next_id", &BM25Index::next_id)
      .def_property_readonly("k1", &BM25Index::k1)
      .def_property_readonly("b", &BM25Index::b);
}

}  // namespace ecomllm::bindings
