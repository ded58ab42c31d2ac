// Bindings for csrc/io/tokenizer.h: _core.Tokenizer (sentencepiece) and _core.TokenizerTrainOptions.
// Encode, decode, the batch calls and training run with the GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <string>
#include <vector>

#include "base/error.h"
#include "io/tokenizer.h"

namespace py = pybind11;

namespace ecomllm::bindings {
namespace {

using io::Tokenizer;
using io::TokenizerTrainOptions;

// A sequence of Python ints (or numpy integers) -> int32 ids; ValueError for a non-integer or an
// id outside [0, V) (checked here too, so huge ints are a ValueError, not an OverflowError).
std::vector<int32_t> ids_from_python(const Tokenizer& tok, const py::handle& seq, const char* what) {
  ECOM_CHECK_ARG(py::isinstance<py::sequence>(seq) || py::hasattr(seq, "__iter__"), what,
                 ": expected a sequence of token ids, got ", std::string(py::str(py::type::handle_of(seq).attr("__name__"))));
  const int64_t v = tok.vocab_size();
  std::vector<int32_t> out;
  if (py::isinstance<py::sequence>(seq)) out.reserve(py::len(seq));
  for (const py::handle item : seq) {
    ECOM_CHECK_ARG(PyIndex_Check(item.ptr()) && !PyBool_Check(item.ptr()), what,
                   ": token ids must be integers, got ", std::string(py::repr(item)), " at position ", out.size());
    int overflow = 0;
    const py::object as_int = py::reinterpret_steal<py::object>(PyNumber_Index(item.ptr()));
    if (!as_int) throw py::error_already_set();
    const long long id = PyLong_AsLongLongAndOverflow(as_int.ptr(), &overflow);
    ECOM_CHECK_ARG(overflow == 0 && id >= 0 && id < v, what, ": token id ", std::string(py::str(as_int)),
                   " at position ", out.size(), " is out of range [0, ", v, ")");
    out.push_back(static_cast<int32_t>(id));
  }
  return out;
}

int32_t one_id(const Tokenizer& tok, int64_t id, const char* what) {
  ECOM_CHECK_ARG(id >= 0 && id < tok.vocab_size(), what, ": token id ", id, " is out of range [0, ", tok.vocab_size(), ")");
  return static_cast<int32_t>(id);
}

// A str as UTF-8; ValueError (not TypeError) for one that has none, e.g. a lone surrogate.
std::string utf8(const py::handle& text, const char* what, size_t position) {
  ECOM_CHECK_ARG(py::isinstance<py::str>(text), what, ": texts must be str, got ", std::string(py::repr(text)),
                 " at position ", position);
  Py_ssize_t n = 0;
  const char* p = PyUnicode_AsUTF8AndSize(text.ptr(), &n);
  if (p == nullptr) {
    PyErr_Clear();
    throw ValueError(detail::concat(what, ": text at position ", position,
                                    " cannot be encoded as UTF-8 (lone surrogate?)"));
  }
  return std::string(p, static_cast<size_t>(n));
}

std::vector<std::string> texts_from_python(const py::handle& seq) {
  ECOM_CHECK_ARG(!py::isinstance<py::str>(seq) && py::hasattr(seq, "__iter__"),
                 "encode_batch: expected a list of str");
  std::vector<std::string> out;
  for (const py::handle item : seq) out.push_back(utf8(item, "encode_batch", out.size()));
  return out;
}

py::list id_lists(const std::vector<std::vector<int32_t>>& ids) {
  py::list out(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) out[i] = py::cast(ids[i]);
  return out;
}

}  // namespace

void bind_tokenizer(py::module_& m) {
  py::class_<TokenizerTrainOptions>(m, "TokenizerTrainOptions",
                                    "Options of Tokenizer.train; the defaults give a Llama-style BPE model.")
      .def(py::init<>())
      .def_readwrite("vocab_size", &TokenizerTrainOptions::vocab_size)
      .def_readwrite("model_type", &TokenizerTrainOptions::model_type)
      .def_readwrite("byte_fallback", &TokenizerTrainOptions::byte_fallback)
      .def_readwrite("character_coverage", &TokenizerTrainOptions::character_coverage)
      .def_readwrite("split_digits", &TokenizerTrainOptions::split_digits)
      .def_readwrite("user_defined_symbols", &TokenizerTrainOptions::user_defined_symbols)
      .def_readwrite("max_sentence_length", &TokenizerTrainOptions::max_sentence_length)
      .def_readwrite("input_sentence_size", &TokenizerTrainOptions::input_sentence_size)
      .def_readwrite("shuffle_input_sentence", &TokenizerTrainOptions::shuffle_input_sentence)
      .def_readwrite("num_threads", &TokenizerTrainOptions::num_threads)
      .def_readwrite("seed", &TokenizerTrainOptions::seed)
      .def_readwrite("normalization_rule_name", &TokenizerTrainOptions::normalization_rule_name)
      .def_readwrite("add_dummy_prefix", &TokenizerTrainOptions::add_dummy_prefix)
      .def_readwrite("remove_extra_whitespaces", &TokenizerTrainOptions::remove_extra_whitespaces)
      .def_readwrite("allow_whitespace_only_pieces", &TokenizerTrainOptions::allow_whitespace_only_pieces)
      .def_readwrite("unk_id", &TokenizerTrainOptions::unk_id)
      .def_readwrite("bos_id", &TokenizerTrainOptions::bos_id)
      .def_readwrite("eos_id", &TokenizerTrainOptions::eos_id)
      .def_readwrite("pad_id", &TokenizerTrainOptions::pad_id)
      .def_readwrite("verbose", &TokenizerTrainOptions::verbose);

  py::class_<Tokenizer>(m, "Tokenizer", "A sentencepiece model (tokenizer.model).")
      .def_static("from_file", [](const std::string& path) {
        py::gil_scoped_release release;
        return Tokenizer::from_file(path);
      }, py::arg("path"), "Load a model file; ValueError naming the path if it is missing or not a model.")
      .def_static("from_bytes", [](const py::bytes& b) {
        std::string bytes = b;
        py::gil_scoped_release release;
        return Tokenizer::from_serialized(bytes);
      }, py::arg("data"), "Load a model from the bytes of a model file.")
      .def_static("train", [](const std::vector<std::string>& corpus_files, const std::string& output_path,
                              const TokenizerTrainOptions& options) {
        py::gil_scoped_release release;
        return Tokenizer::train(corpus_files, output_path, options);
      }, py::arg("corpus_files"), py::arg("output_path"), py::arg("options"),
          "Train on the lines of corpus_files; the model is written atomically to output_path.")
      .def("serialized_model", [](const Tokenizer& t) { return py::bytes(t.serialized_model()); },
           "The model file's bytes.")
      .def("save", [](const Tokenizer& t, const std::string& path) {
        py::gil_scoped_release release;
        t.save(path);
      }, py::arg("path"), "Write the model file atomically.")
      .def("encode", [](const Tokenizer& t, const py::str& s, bool add_bos, bool add_eos) {
        const std::string text = utf8(s, "encode", 0);
        std::vector<int32_t> ids;
        {
          py::gil_scoped_release release;
          ids = t.encode(text, add_bos, add_eos);
        }
        return ids;
      }, py::arg("text"), py::arg("add_bos") = false, py::arg("add_eos") = false)
      .def("encode_batch", [](const Tokenizer& t, const py::object& texts, bool add_bos, bool add_eos) {
        const std::vector<std::string> in = texts_from_python(texts);
        std::vector<std::vector<int32_t>> ids;
        {
          py::gil_scoped_release release;
          ids = t.encode_batch(in, add_bos, add_eos);
        }
        return id_lists(ids);
      }, py::arg("texts"), py::arg("add_bos") = false, py::arg("add_eos") = false)
      .def("encode_as_pieces", [](const Tokenizer& t, const py::str& s) {
        const std::string text = utf8(s, "encode_as_pieces", 0);
        py::gil_scoped_release release;
        return t.encode_as_pieces(text);
      }, py::arg("text"))
      .def("decode", [](const Tokenizer& t, const py::object& ids) {
        const std::vector<int32_t> in = ids_from_python(t, ids, "decode");
        std::string text;
        {
          py::gil_scoped_release release;
          text = t.decode(in);
        }
        return py::str(text);
      }, py::arg("ids"))
      .def("decode_batch", [](const Tokenizer& t, const py::object& batch) {
        ECOM_CHECK_ARG(py::hasattr(batch, "__iter__"), "decode_batch: expected a list of id lists");
        std::vector<std::vector<int32_t>> in;
        for (const py::handle ids : batch)
          in.push_back(ids_from_python(t, ids, ("decode_batch[" + std::to_string(in.size()) + "]").c_str()));
        std::vector<std::string> texts;
        {
          py::gil_scoped_release release;
          texts = t.decode_batch(in);
        }
        return texts;
      }, py::arg("batch"))
      .def_property_readonly("vocab_size", &Tokenizer::vocab_size)
      .def_property_readonly("unk_id", &Tokenizer::unk_id)
      .def_property_readonly("bos_id", &Tokenizer::bos_id)
      .def_property_readonly("eos_id", &Tokenizer::eos_id)
      .def_property_readonly("pad_id", &Tokenizer::pad_id)
      .def("id_to_piece", [](const Tokenizer& t, int64_t id) { return t.id_to_piece(one_id(t, id, "id_to_piece")); },
           py::arg("id"))
      .def("piece_to_id", &Tokenizer::piece_to_id, py::arg("piece"))
      .def("is_byte", [](const Tokenizer& t, int64_t id) { return t.is_byte(one_id(t, id, "is_byte")); }, py::arg("id"))
      .def("is_control", [](const Tokenizer& t, int64_t id) { return t.is_control(one_id(t, id, "is_control")); },
           py::arg("id"))
      .def("is_unknown", [](const Tokenizer& t, int64_t id) { return t.is_unknown(one_id(t, id, "is_unknown")); },
           py::arg("id"));
}

}  // namespace ecomllm::bindings
