// sentencepiece models: loading, encode/decode, training. See tokenizer.h.
#include "io/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstring>
#include <filesystem>
#include <optional>
#include <string_view>
#include <fstream>
#include <iomanip>
#include <mutex>
#include <set>
#include <sstream>
#include <unordered_map>

#include "base/error.h"
#include "base/parallel.h"
#include "io/atomic_file.h"

namespace ecomllm::io {
namespace fs = std::filesystem;

namespace {

constexpr uintmax_t kMaxModelBytes = 1ull << 30;  // real models are a few MB; protobuf caps at 2 GB

// The whole file, or ValueError "<path>: ..." when it is missing, not a file or unreadable.
std::string read_model_file(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  ECOM_CHECK_ARG(fs::exists(st), path, ": no such file (expected a sentencepiece tokenizer.model)");
  ECOM_CHECK_ARG(fs::is_regular_file(st), path, ": not a regular file (expected a sentencepiece tokenizer.model)");
  const uintmax_t size = fs::file_size(path, ec);
  ECOM_CHECK_ARG(!ec && size <= kMaxModelBytes, path, ": too large (", size, " bytes) to be a sentencepiece model");
  std::ifstream in(path, std::ios::binary);
  ECOM_CHECK_ARG(in.good(), path, ": cannot open for reading");
  std::string bytes(static_cast<size_t>(size), '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(size));
  ECOM_CHECK_ARG(in.gcount() == static_cast<std::streamsize>(size), path, ": read failed");
  return bytes;
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? "," : "") + items[i];
  return out;
}

std::string str(double v) {
  std::ostringstream os;
  os << std::setprecision(10) << v;
  return os.str();
}

const char* str(bool v) { return v ? "true" : "false"; }

// sentencepiece's global generator seed and log level are process-wide: one training at a time.
std::mutex g_train_mutex;

void validate_train_args(const std::vector<std::string>& corpus_files, const std::string& output_path,
                         const TokenizerTrainOptions& o) {
  ECOM_CHECK_ARG(!corpus_files.empty(), "Tokenizer.train: no corpus files given");
  for (const std::string& f : corpus_files) {
    // sentencepiece takes its inputs as one comma-separated list.
    ECOM_CHECK_ARG(f.find(',') == std::string::npos, f, ": corpus file names must not contain ','");
    std::error_code ec;
    const fs::file_status st = fs::status(f, ec);
    ECOM_CHECK_ARG(fs::exists(st), f, ": corpus file not found");
    ECOM_CHECK_ARG(fs::is_regular_file(st), f, ": corpus file is not a regular file");
    ECOM_CHECK_ARG(std::ifstream(f).good(), f, ": cannot open corpus file for reading");
  }
  ECOM_CHECK_ARG(!output_path.empty(), "Tokenizer.train: empty output path");
  const fs::path out(output_path);
  std::error_code ec;
  ECOM_CHECK_ARG(!fs::is_directory(out, ec), output_path, ": output path is a directory");
  const fs::path dir = out.has_parent_path() ? out.parent_path() : fs::path(".");
  ECOM_CHECK_ARG(fs::is_directory(dir, ec), output_path, ": output directory ", dir.string(), " does not exist");

  ECOM_CHECK_ARG(o.vocab_size > 0, "vocab_size must be positive, got ", o.vocab_size);
  ECOM_CHECK_ARG(o.model_type == "bpe" || o.model_type == "unigram", "model_type must be 'bpe' or 'unigram', got '",
                 o.model_type, "'");
  ECOM_CHECK_ARG(o.character_coverage > 0.0 && o.character_coverage <= 1.0, "character_coverage must be in (0, 1], got ",
                 o.character_coverage);
  ECOM_CHECK_ARG(o.max_sentence_length > 0, "max_sentence_length must be positive, got ", o.max_sentence_length);
  ECOM_CHECK_ARG(o.input_sentence_size >= 0, "input_sentence_size must be >= 0, got ", o.input_sentence_size);
  ECOM_CHECK_ARG(o.num_threads >= 0, "num_threads must be >= 0, got ", o.num_threads);
  ECOM_CHECK_ARG(o.seed != 0xFFFFFFFFu, "seed 4294967295 is reserved by sentencepiece");
  const std::string& n = o.normalization_rule_name;
  ECOM_CHECK_ARG(n == "identity" || n == "nfkc" || n == "nmt_nfkc" || n == "nfkc_cf" || n == "nmt_nfkc_cf",
                 "normalization_rule_name must be identity, nfkc, nmt_nfkc, nfkc_cf or nmt_nfkc_cf, got '", n, "'");
  std::set<std::string> symbols;
  for (const std::string& s : o.user_defined_symbols) {
    ECOM_CHECK_ARG(!s.empty() && s.find(',') == std::string::npos,
                   "user_defined_symbols must be non-empty and contain no ',', got '", s, "'");
    ECOM_CHECK_ARG(symbols.insert(s).second, "user_defined_symbols: '", s, "' is given twice");
  }
  ECOM_CHECK_ARG(o.unk_id >= 0, "unk_id must be >= 0 (sentencepiece requires <unk>), got ", o.unk_id);
  std::set<int> ids;
  for (int id : {o.unk_id, o.bos_id, o.eos_id, o.pad_id}) {
    ECOM_CHECK_ARG(id >= -1 && id < o.vocab_size, "special ids must be in [0, vocab_size), or -1 to disable, got ", id);
    ECOM_CHECK_ARG(id < 0 || ids.insert(id).second, "special ids must differ: unk ", o.unk_id, ", bos ", o.bos_id,
                   ", eos ", o.eos_id, ", pad ", o.pad_id);
  }
}

// sentencepiece's failed check, with a plain reason for the common one that has no message.
std::string train_error(const std::string& message) {
  if (message.find("sentences_.empty()") != std::string::npos)
    return "the corpus has no usable lines (empty files, or every line longer than max_sentence_length)";
  return message;
}

// ---- checks sentencepiece does not make on a model it loads ----------------------------------
// A few fields of the serialized ModelProto, read with a minimal protobuf walker (the generated
// sentencepiece_model.pb.h is not part of Debian's libsentencepiece-dev).

bool read_varint(const unsigned char*& p, const unsigned char* end, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64 && p < end; shift += 7) {
    const unsigned char b = *p++;
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

// The last length-delimited field `field` of a message (protobuf: the last one wins), or nullopt.
// Nullopt also for malformed bytes (sentencepiece parsed them already, so that does not happen).
std::optional<std::string_view> last_bytes_field(std::string_view msg, uint32_t field) {
  auto p = reinterpret_cast<const unsigned char*>(msg.data());
  const auto* end = p + msg.size();
  std::optional<std::string_view> found;
  while (p < end) {
    uint64_t key, v;
    if (!read_varint(p, end, key)) return std::nullopt;
    switch (key & 7) {
      case 0:
        if (!read_varint(p, end, v)) return std::nullopt;
        break;
      case 1:
        if (end - p < 8) return std::nullopt;
        p += 8;
        break;
      case 5:
        if (end - p < 4) return std::nullopt;
        p += 4;
        break;
      case 2:
        if (!read_varint(p, end, v) || v > static_cast<uint64_t>(end - p)) return std::nullopt;
        if ((key >> 3) == field) found = std::string_view(reinterpret_cast<const char*>(p), v);
        p += v;
        break;
      default:
        return std::nullopt;
    }
  }
  return found;
}

// Whether a normalizer's precompiled_charsmap can be used without reading out of bounds.
// sentencepiece checks only its size prefix; the double-array trie inside is trusted, and a
// corrupt one made encode() read anywhere (a segfault). Layout: uint32 trie bytes, the trie
// (darts-clone units of 4 bytes), then the replacement strings, each NUL-terminated. Walks every
// trie state reachable from the root, as darts-clone's commonPrefixSearch does for any input
// byte, and checks each unit read and each replacement string. Empty: no normalization, fine.
std::string charsmap_problem(std::string_view blob) {
  if (blob.empty()) return "";
  uint32_t trie_bytes = 0;
  if (blob.size() <= 4) return "shorter than its size prefix";
  std::memcpy(&trie_bytes, blob.data(), 4);
  if (trie_bytes > blob.size() - 4 || trie_bytes < 4) return "trie size out of range";
  const size_t n = trie_bytes / 4;
  std::vector<uint32_t> unit(n);
  std::memcpy(unit.data(), blob.data() + 4, n * 4);
  const std::string_view strings = blob.substr(4 + static_cast<size_t>(trie_bytes));
  // darts-clone's unit fields
  auto offset = [](uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); };
  auto label = [](uint32_t u) { return u & ((1u << 31) | 0xffu); };
  auto has_leaf = [](uint32_t u) { return ((u >> 8) & 1) == 1; };
  std::vector<uint8_t> seen(n, 0);
  std::vector<uint32_t> todo;
  auto visit = [&](uint64_t base) {  // a state: the node position after `^= offset`
    if (base >= n) return false;
    if (!seen[base]) seen[base] = 1, todo.push_back(static_cast<uint32_t>(base));
    return true;
  };
  if (!visit(offset(unit[0]))) return "trie root points outside the trie";
  while (!todo.empty()) {
    const uint32_t base = todo.back();
    todo.pop_back();
    for (uint32_t c = 0; c < 256; ++c) {
      const uint64_t pos = base ^ c;
      if (pos >= n) return "trie node points outside the trie";
      const uint32_t u = unit[pos];
      if (label(u) != c) continue;
      const uint64_t child = pos ^ offset(u);
      if (!visit(child)) return "trie node points outside the trie";
      if (has_leaf(u)) {
        const uint32_t value = unit[child] & 0x7fffffffu;
        if (value >= strings.size() || strings.find('\0', value) == std::string_view::npos)
          return "trie value points outside the replacement strings";
      }
    }
  }
  return "";
}

void check_model(const sentencepiece::SentencePieceProcessor& sp, const std::string& where) {
  const std::string proto = sp.serialized_model_proto();  // canonical: each field once
  const struct { uint32_t field; const char* name; } specs[] = {{3, "normalizer_spec"}, {5, "denormalizer_spec"}};
  for (const auto& spec : specs) {
    const std::optional<std::string_view> msg = last_bytes_field(proto, spec.field);
    if (!msg) continue;
    const std::optional<std::string_view> charsmap = last_bytes_field(*msg, 2);  // precompiled_charsmap
    const std::string problem = charsmap ? charsmap_problem(*charsmap) : "";
    ECOM_CHECK_ARG(problem.empty(), where, ": sentencepiece model has a corrupt ", spec.name,
                   ".precompiled_charsmap (", problem, ")");
  }
  // Pieces come back to Python as str: each must be UTF-8 (sentencepiece's trainer writes only such).
  for (int id = 0; id < sp.GetPieceSize(); ++id)
    ECOM_CHECK_ARG(is_valid_utf8(sp.IdToPiece(id)), where, ": sentencepiece model piece ", id, " ('",
                   printable(sp.IdToPiece(id)), "') is not valid UTF-8");
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> sp) : sp_(std::move(sp)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(std::string_view bytes, const std::string& where) {
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  sentencepiece::util::Status status;
  try {
    status = sp->LoadFromSerializedProto(bytes);
  } catch (const std::exception& e) {  // darts-clone throws on some corrupt vocabularies (a "\0" piece)
    throw ValueError(detail::concat(where, ": not a valid sentencepiece model (", printable(e.what()), ")"));
  }
  ECOM_CHECK_ARG(status.ok(), where, ": not a valid sentencepiece model (", printable(status.message()), ")");
  ECOM_CHECK_ARG(sp->GetPieceSize() > 0, where, ": sentencepiece model has an empty vocabulary");
  check_model(*sp, where);
  return Tokenizer(std::move(sp));
}

Tokenizer Tokenizer::from_file(const std::string& path) { return load(read_model_file(path), path); }

Tokenizer Tokenizer::from_serialized(std::string_view bytes) {
  ECOM_CHECK_ARG(!bytes.empty(), "serialized tokenizer model: no bytes given");
  return load(bytes, "serialized tokenizer model");
}

Tokenizer Tokenizer::train(const std::vector<std::string>& corpus_files, const std::string& output_path,
                           const TokenizerTrainOptions& o) {
  validate_train_args(corpus_files, output_path, o);
  std::string user_symbols = join(o.user_defined_symbols);
  const std::unordered_map<std::string, std::string> args = {
      {"input", join(corpus_files)},
      {"model_type", o.model_type},
      {"vocab_size", std::to_string(o.vocab_size)},
      {"byte_fallback", str(o.byte_fallback)},
      {"character_coverage", str(o.character_coverage)},
      {"split_digits", str(o.split_digits)},
      {"user_defined_symbols", user_symbols},
      {"max_sentence_length", std::to_string(o.max_sentence_length)},
      {"input_sentence_size", std::to_string(o.input_sentence_size)},
      {"shuffle_input_sentence", str(o.shuffle_input_sentence)},
      {"num_threads", std::to_string(o.num_threads > 0 ? o.num_threads : max_threads())},
      {"normalization_rule_name", o.normalization_rule_name},
      {"add_dummy_prefix", str(o.add_dummy_prefix)},
      {"remove_extra_whitespaces", str(o.remove_extra_whitespaces)},
      {"allow_whitespace_only_pieces", str(o.allow_whitespace_only_pieces)},
      {"unk_id", std::to_string(o.unk_id)},
      {"bos_id", std::to_string(o.bos_id)},
      {"eos_id", std::to_string(o.eos_id)},
      {"pad_id", std::to_string(o.pad_id)},
      {"minloglevel", o.verbose ? "0" : "2"},
  };
  // The model comes back as bytes (no model_prefix: sentencepiece writes no files itself); only a
  // model that loads is written, atomically, to output_path.
  std::string serialized;
  {
    std::lock_guard<std::mutex> lock(g_train_mutex);
    sentencepiece::SetRandomGeneratorSeed(o.seed);
    const auto status = sentencepiece::SentencePieceTrainer::Train(args, nullptr, &serialized);
    ECOM_CHECK_ARG(status.ok(), "training a tokenizer (", output_path, ") failed: ", train_error(status.message()));
  }
  Tokenizer tok = load(serialized, output_path + " (just trained)");
  write_file_atomic(output_path, serialized);
  return tok;
}

std::string Tokenizer::serialized_model() const { return sp_->serialized_model_proto(); }

void Tokenizer::save(const std::string& path) const {
  ECOM_CHECK_ARG(!path.empty(), "Tokenizer.save: empty path");
  write_file_atomic(path, serialized_model());
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool add_eos) const {
  const int bos = sp_->bos_id(), eos = sp_->eos_id();
  ECOM_CHECK_ARG(!add_bos || bos >= 0, "add_bos: this tokenizer model has no <s> token");
  ECOM_CHECK_ARG(!add_eos || eos >= 0, "add_eos: this tokenizer model has no </s> token");
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  ECOM_CHECK_ARG(status.ok(), "encode failed: ", status.message());
  std::vector<int32_t> out;
  out.reserve(ids.size() + 2);
  if (add_bos) out.push_back(bos);
  out.insert(out.end(), ids.begin(), ids.end());
  if (add_eos) out.push_back(eos);
  return out;
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(const std::vector<std::string>& texts, bool add_bos,
                                                          bool add_eos) const {
  std::vector<std::vector<int32_t>> out(texts.size());
  // Each text is a few to a few thousand tokens; chunks of 8 keep the threads busy without overhead.
  parallel_for(0, static_cast<int64_t>(texts.size()), 8, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = encode(texts[i], add_bos, add_eos);
  });
  return out;
}

std::vector<std::string> Tokenizer::encode_as_pieces(std::string_view text) const {
  std::vector<std::string> pieces;
  const auto status = sp_->Encode(text, &pieces);
  ECOM_CHECK_ARG(status.ok(), "encode failed: ", status.message());
  return pieces;
}

void Tokenizer::check_ids(const int32_t* ids, size_t n, const char* what) const {
  const int32_t v = vocab_size();
  for (size_t i = 0; i < n; ++i)
    ECOM_CHECK_ARG(ids[i] >= 0 && ids[i] < v, what, ": token id ", ids[i], " at position ", i,
                   " is out of range [0, ", v, ")");
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  check_ids(ids.data(), ids.size(), "decode");
  const std::vector<int> in(ids.begin(), ids.end());
  std::string text;
  const auto status = sp_->Decode(in, &text);
  ECOM_CHECK_ARG(status.ok(), "decode failed: ", status.message());
  return text;
}

std::vector<std::string> Tokenizer::decode_batch(const std::vector<std::vector<int32_t>>& ids) const {
  for (size_t i = 0; i < ids.size(); ++i)
    check_ids(ids[i].data(), ids[i].size(), ("decode_batch[" + std::to_string(i) + "]").c_str());
  std::vector<std::string> out(ids.size());
  parallel_for(0, static_cast<int64_t>(ids.size()), 8, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = decode(ids[i]);
  });
  return out;
}

int32_t Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }
int32_t Tokenizer::unk_id() const { return sp_->unk_id(); }
int32_t Tokenizer::bos_id() const { return sp_->bos_id(); }
int32_t Tokenizer::eos_id() const { return sp_->eos_id(); }
int32_t Tokenizer::pad_id() const { return sp_->pad_id(); }

std::string Tokenizer::id_to_piece(int32_t id) const {
  check_ids(&id, 1, "id_to_piece");
  return sp_->IdToPiece(id);
}

int32_t Tokenizer::piece_to_id(std::string_view piece) const { return sp_->PieceToId(piece); }

bool Tokenizer::is_byte(int32_t id) const {
  check_ids(&id, 1, "is_byte");
  return sp_->IsByte(id);
}

bool Tokenizer::is_control(int32_t id) const {
  check_ids(&id, 1, "is_control");
  return sp_->IsControl(id);
}

bool Tokenizer::is_unknown(int32_t id) const {
  check_ids(&id, 1, "is_unknown");
  return sp_->IsUnknown(id);
}

}  // namespace ecomllm::io
