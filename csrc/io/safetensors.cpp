// safetensors reader (validating, mmap) and writer (atomic), HF sharded checkpoints. See safetensors.h.
#include "io/safetensors.h"
#include "io/atomic_file.h"
#include "io/json_util.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <utility>

#include "base/error.h"
#include "base/half.h"
#include "base/parallel.h"

namespace ecomllm::io {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian; so must the host be");

namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;                // parsing: std::map objects, O(log n) per key
using OrderedJson = nlohmann::ordered_json;  // writing: keeps the given tensor order

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the reference implementation's limit
constexpr int kMaxHeaderDepth = 16;                  // a valid header nests 3 deep
constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

struct DTypeEntry {
  StDType dtype;
  const char* name;
  int64_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {StDType::BOOL, "BOOL", 1}, {StDType::U8, "U8", 1},     {StDType::I8, "I8", 1},     {StDType::U16, "U16", 2},
    {StDType::I16, "I16", 2},   {StDType::F16, "F16", 2},   {StDType::BF16, "BF16", 2}, {StDType::U32, "U32", 4},
    {StDType::I32, "I32", 4},   {StDType::F32, "F32", 4},   {StDType::U64, "U64", 8},   {StDType::I64, "I64", 8},
    {StDType::F64, "F64", 8},
};

const DTypeEntry& dtype_entry(StDType t) {
  for (const DTypeEntry& e : kDTypes)
    if (e.dtype == t) return e;
  throw ValueError(detail::concat("invalid StDType ", static_cast<int>(t)));
}

std::string errno_text(int err) { return std::strerror(err); }


// Byte size of numel(shape) elements of `itemsize` bytes; false when it does not fit in int64.
bool byte_size(const std::vector<int64_t>& shape, int64_t itemsize, uint64_t* out) {
  uint64_t n = static_cast<uint64_t>(itemsize);
  for (int64_t d : shape)
    if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  *out = n;
  return n <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
}

// Records the top-level keys of a JSON object in the order they appear (std::map objects sort
// them, and drop repeats). A SAX pass of its own: a parse callback would do the same, but
// nlohmann's callback parser rescans the parent object each time a child object closes, O(n^2)
// in the tensor count (a 6 MB header of 100k entries took minutes).
struct TopLevelKeys {
  std::vector<std::string>* keys;
  int depth = 0;
  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(Json::number_integer_t) { return true; }
  bool number_unsigned(Json::number_unsigned_t) { return true; }
  bool number_float(Json::number_float_t, const std::string&) { return true; }
  bool string(std::string&) { return true; }
  bool binary(Json::binary_t&) { return true; }
  bool start_object(std::size_t) { return ++depth, true; }
  bool end_object() { return --depth, true; }
  bool start_array(std::size_t) { return ++depth, true; }
  bool end_array() { return --depth, true; }
  bool key(std::string& k) {
    if (depth == 1) keys->push_back(k);
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    throw ValueError(e.what());  // the DOM parse before this pass already rejected invalid JSON
  }
};

// A JSON number that is a non-negative integer, as uint64; false for anything else (floats,
// negatives, strings, booleans).
bool json_uint(const Json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

// Parses and validates one tensor entry of a header; `fail(reason)` makes the exception (naming the file).
template <typename Fail>
TensorInfo parse_entry(const std::string& name, const Json& v, uint64_t data_size, Fail&& fail) {
  const std::string what = "tensor '" + printable(name) + "'";
  if (!v.is_object()) throw fail(what + ": entry is not an object");
  for (const auto& [key, _] : v.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets") throw fail(what + ": unknown key '" + printable(key) + "'");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!v.contains(key)) throw fail(what + ": missing key '" + key + "'");

  TensorInfo t;
  t.name = name;
  const Json& dt = v["dtype"];
  if (!dt.is_string() || !st_dtype_parse(dt.get<std::string>(), &t.dtype))
    throw fail(what + ": unknown dtype " + short_dump(dt));

  const Json& shape = v["shape"];
  if (!shape.is_array()) throw fail(what + ": shape is not a list");
  for (const Json& d : shape) {
    uint64_t u = 0;
    if (!json_uint(d, &u) || u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw fail(what + ": shape must be a list of non-negative integers, got " + short_dump(shape));
    t.shape.push_back(static_cast<int64_t>(u));
  }
  uint64_t nbytes = 0;
  if (!byte_size(t.shape, st_dtype_size(t.dtype), &nbytes))
    throw fail(what + ": shape " + short_dump(shape) + " is too large (its byte size overflows)");

  const Json& offs = v["data_offsets"];
  if (!offs.is_array() || offs.size() != 2 || !json_uint(offs[0], &t.begin) || !json_uint(offs[1], &t.end))
    throw fail(what + ": data_offsets must be two non-negative integers [begin, end], got " + short_dump(offs));
  if (t.begin > t.end) throw fail(what + ": data_offsets " + short_dump(offs) + " are not ordered (begin > end)");
  if (t.end - t.begin != nbytes)
    throw fail(detail::concat(what, ": data_offsets ", short_dump(offs), " span ", t.end - t.begin, " bytes but shape ",
                        short_dump(shape), " of ", st_dtype_name(t.dtype), " needs ", nbytes));
  if (t.end > data_size)
    throw fail(detail::concat(what, ": data_offsets ", short_dump(offs), " lie outside the ", data_size,
                        "-byte data section (truncated file?)"));
  return t;
}

// ---- writing ------------------------------------------------------------------------------------

void write_all(int fd, const void* data, size_t n, const std::string& tmp) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      throw RuntimeError(tmp + ": write failed (" + errno_text(errno) + ")");
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// Writes `path` atomically: body(fd, tmp_name) fills a temp file in the same directory, which is
// fsynced and renamed over `path`; on any failure the temp file is removed and `path` untouched.
void atomic_write(const std::string& path, const std::function<void(int, const std::string&)>& body) {
  std::string tmp = path + ".tmpXXXXXX";
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) throw RuntimeError(path + ": cannot create a temporary file next to it (" + errno_text(errno) + ")");
  try {
    ::fchmod(fd, 0644);  // mkstemp creates 0600; model files are meant to be shared
    body(fd, tmp);
    if (::fsync(fd) != 0) throw RuntimeError(tmp + ": fsync failed (" + errno_text(errno) + ")");
    const int closed = ::close(fd);
    if (closed != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      throw RuntimeError(tmp + ": close failed (" + errno_text(err) + ")");
    }
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw RuntimeError(path + ": rename from " + tmp + " failed (" + errno_text(err) + ")");
  }
  // Make the rename itself durable (best effort: some file systems refuse fsync on directories).
  std::string dir = fs::path(path).parent_path().string();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

// Checks every tensor to be saved (names, shapes, data); returns their byte sizes.
std::vector<uint64_t> validate_save(const std::string& where, const std::vector<SaveTensor>& tensors) {
  std::vector<uint64_t> sizes;
  std::set<std::string> seen;
  for (const SaveTensor& t : tensors) {
    ECOM_CHECK_ARG(!t.name.empty() && t.name != "__metadata__", where, ": invalid tensor name '", t.name, "'");
    ECOM_CHECK_ARG(seen.insert(t.name).second, where, ": tensor name '", t.name, "' given twice");
    dtype_entry(t.dtype);
    uint64_t n = 0;
    ECOM_CHECK_ARG(byte_size(t.shape, st_dtype_size(t.dtype), &n), where, ": tensor '", t.name,
                   "' has a negative or too large shape");
    ECOM_CHECK_ARG(n == 0 || t.data != nullptr, where, ": tensor '", t.name, "' has no data");
    sizes.push_back(n);
  }
  return sizes;
}

// The header bytes (JSON padded with spaces to a multiple of 8) for tensors laid out in order.
std::string build_header(const std::string& where, const std::vector<SaveTensor>& tensors,
                         const std::vector<uint64_t>& sizes, const std::map<std::string, std::string>& metadata) {
  OrderedJson header = OrderedJson::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    header[tensors[i].name] = {{"dtype", st_dtype_name(tensors[i].dtype)},
                               {"shape", tensors[i].shape},
                               {"data_offsets", {offset, offset + sizes[i]}}};
    offset += sizes[i];
  }
  std::string text;
  try {
    text = header.dump();  // strict: throws on invalid UTF-8 in names or metadata
  } catch (const OrderedJson::exception& e) {
    throw ValueError(where + ": tensor names and metadata must be valid UTF-8 (" + e.what() + ")");
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

void write_file(const std::string& path, const std::vector<SaveTensor>& tensors, const std::vector<uint64_t>& sizes,
                const std::map<std::string, std::string>& metadata) {
  const std::string header = build_header(path, tensors, sizes, metadata);
  atomic_write(path, [&](int fd, const std::string& tmp) {
    const uint64_t len = header.size();
    write_all(fd, &len, 8, tmp);
    write_all(fd, header.data(), header.size(), tmp);
    for (size_t i = 0; i < tensors.size(); ++i) write_all(fd, tensors[i].data, sizes[i], tmp);
  });
}

bool is_shard_name(const std::string& name) {
  static const std::regex pattern(R"(model-\d{5}-of-\d{5}\.safetensors)");
  return std::regex_match(name, pattern);
}

}  // namespace

// ---- dtypes / TensorInfo --------------------------------------------------------------------------

const char* st_dtype_name(StDType t) { return dtype_entry(t).name; }
int64_t st_dtype_size(StDType t) { return dtype_entry(t).size; }

bool st_dtype_parse(const std::string& name, StDType* out) {
  for (const DTypeEntry& e : kDTypes)
    if (name == e.name) {
      *out = e.dtype;
      return true;
    }
  return false;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // cannot overflow for a validated entry
  return n;
}

void convert_to_f32(StDType dtype, const std::byte* src, int64_t n, float* out, const std::string& what) {
  auto convert = [&](auto load) {
    parallel_for(0, n, int64_t{1} << 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) out[i] = load(i);
    });
  };
  auto u16 = [src](int64_t i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    return h;
  };
  switch (dtype) {
    case StDType::F32:
      std::memcpy(out, src, static_cast<size_t>(n) * 4);
      return;
    case StDType::F16:
      return convert([&](int64_t i) { return f16_to_f32(u16(i)); });
    case StDType::BF16:
      return convert([&](int64_t i) { return bf16_to_f32(u16(i)); });
    case StDType::F64:
      return convert([&](int64_t i) {
        double d;
        std::memcpy(&d, src + 8 * i, 8);
        return static_cast<float>(d);
      });
    default:
      throw ValueError(what + ": dtype " + st_dtype_name(dtype) + " cannot be read as float32 (F32/F16/BF16/F64 only)");
  }
}

// ---- SafetensorsFile ------------------------------------------------------------------------------

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  auto fail = [&](const std::string& reason) { return ValueError(path + ": " + reason); };
  SafetensorsFile f;
  f.path_ = path;
  {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw fail("cannot open (" + errno_text(errno) + ")");
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw fail("not a regular file");
    }
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    if (size < 8) {
      ::close(fd);
      throw fail(detail::concat("file is ", size, " bytes, too short for a safetensors header"));
    }
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);  // the mapping keeps the file
    if (p == MAP_FAILED) throw RuntimeError(path + ": mmap failed (" + errno_text(err) + ")");
    f.map_ = static_cast<const std::byte*>(p);
    f.map_size_ = size;
  }

  uint64_t header_len = 0;
  std::memcpy(&header_len, f.map_, 8);
  if (header_len > kMaxHeaderBytes)
    throw fail(detail::concat("header length ", header_len, " exceeds the ", kMaxHeaderBytes, "-byte limit"));
  if (header_len > f.map_size_ - 8)
    throw fail(detail::concat("header length ", header_len, " does not fit the file (", f.map_size_,
                        " bytes; truncated file?)"));
  f.data_offset_ = 8 + header_len;
  const uint64_t data_size = f.map_size_ - f.data_offset_;

  const char* text = reinterpret_cast<const char*>(f.map_ + 8);
  if (json_depth(std::string_view(text, header_len), kMaxHeaderDepth) > kMaxHeaderDepth)
    throw fail(detail::concat("header JSON nests deeper than ", kMaxHeaderDepth, " levels"));
  Json header;
  std::vector<std::string> order;  // top-level keys as they appear (std::map objects sort them)
  try {
    header = Json::parse(text, text + header_len);
    TopLevelKeys keys{&order};
    Json::sax_parse(text, text + header_len, &keys);
  } catch (const Json::exception& e) {
    throw fail("header is not valid UTF-8 JSON (" + printable(e.what()) + ")");
  }
  if (!header.is_object()) throw fail("header is not a JSON object");
  if (order.size() != header.size()) throw fail("header names a tensor (or __metadata__) twice");

  for (const std::string& name : order) {
    const Json& v = header.at(name);
    if (name == "__metadata__") {
      if (!v.is_object()) throw fail("__metadata__ is not an object of strings");
      for (const auto& [k, s] : v.items()) {
        if (!s.is_string()) throw fail("__metadata__ value of '" + printable(k) + "' is not a string");
        f.metadata_[k] = s.get<std::string>();
      }
      continue;
    }
    f.index_.emplace(name, f.tensors_.size());
    f.tensors_.push_back(parse_entry(name, v, data_size, fail));
  }

  // No two tensors may share bytes (empty tensors occupy none).
  std::vector<const TensorInfo*> by_offset;
  for (const TensorInfo& t : f.tensors_)
    if (t.end > t.begin) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i]->begin < by_offset[i - 1]->end)
      throw fail(detail::concat("tensors '", printable(by_offset[i - 1]->name), "' [", by_offset[i - 1]->begin, ", ",
                                by_offset[i - 1]->end, ") and '", printable(by_offset[i]->name), "' [",
                                by_offset[i]->begin, ", ", by_offset[i]->end, ") overlap"));
  return f;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& o) noexcept
    : path_(std::move(o.path_)),
      map_(std::exchange(o.map_, nullptr)),
      map_size_(std::exchange(o.map_size_, 0)),
      data_offset_(o.data_offset_),
      tensors_(std::move(o.tensors_)),
      index_(std::move(o.index_)),
      metadata_(std::move(o.metadata_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    map_ = std::exchange(o.map_, nullptr);
    map_size_ = std::exchange(o.map_size_, 0);
    data_offset_ = o.data_offset_;
    tensors_ = std::move(o.tensors_);
    index_ = std::move(o.index_);
    metadata_ = std::move(o.metadata_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { release(); }

void SafetensorsFile::release() noexcept {
  if (map_ != nullptr) ::munmap(const_cast<std::byte*>(map_), map_size_);
  map_ = nullptr;
  map_size_ = 0;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const std::byte* SafetensorsFile::data(const TensorInfo& t) const {
  ECOM_CHECK(map_ != nullptr && t.end <= map_size_ - data_offset_, "tensor '", t.name, "' is not from ", path_);
  return map_ + data_offset_ + t.begin;
}

void SafetensorsFile::read_f32(const std::string& name, float* out) const {
  const TensorInfo* t = find(name);
  ECOM_CHECK_ARG(t != nullptr, path_, ": no tensor named '", name, "'");
  convert_to_f32(t->dtype, data(*t), t->numel(), out, path_ + ": tensor '" + name + "'");
}

// ---- Checkpoint -----------------------------------------------------------------------------------

Checkpoint Checkpoint::open(const std::string& dir_or_file) {
  Checkpoint c;
  std::error_code ec;
  const fs::path root(dir_or_file);
  if (fs::is_directory(root, ec) && fs::exists(root / kIndexFile, ec)) {
    const std::string index_path = (root / kIndexFile).string();
    auto fail = [&](const std::string& reason) { return ValueError(index_path + ": " + reason); };
    const Json index = read_json_file(index_path);  // bounded size and nesting, printable errors
    if (!index.is_object() || !index.contains("weight_map") || !index.at("weight_map").is_object())
      throw fail("expected a JSON object with a \"weight_map\" object");
    std::map<std::string, std::string> weight_map;  // tensor -> shard file name
    std::set<std::string> shard_names;
    for (const auto& [name, file] : index.at("weight_map").items()) {
      if (!file.is_string()) throw fail("weight_map entry of '" + name + "' is not a file name");
      const std::string f = file.get<std::string>();
      if (f.empty() || f == "." || f == ".." || f.find('/') != std::string::npos)
        throw fail("weight_map names '" + f + "' for '" + name + "'; expected a file name in the same directory");
      weight_map[name] = f;
      shard_names.insert(f);
    }
    std::map<std::string, size_t> file_index;
    for (const std::string& s : shard_names) {
      file_index[s] = c.files_.size();
      c.files_.push_back(SafetensorsFile::open((root / s).string()));
    }
    for (const auto& [name, f] : weight_map)
      if (c.files_[file_index[f]].find(name) == nullptr)
        throw fail("weight_map puts '" + name + "' in " + f + ", which does not contain it");
    for (const SafetensorsFile& shard : c.files_) {
      const std::string shard_name = fs::path(shard.path()).filename().string();
      for (const TensorInfo& t : shard.tensors()) {
        auto it = weight_map.find(t.name);
        if (it == weight_map.end()) throw fail("tensor '" + t.name + "' of " + shard_name + " is missing from weight_map");
        if (it->second != shard_name)
          throw fail("tensor '" + t.name + "' is in " + shard_name + " but weight_map says " + it->second);
      }
    }
  } else {
    fs::path file = root;
    if (fs::is_directory(root, ec)) {
      file = root / kSingleFile;
      ECOM_CHECK_ARG(fs::exists(file, ec), dir_or_file, ": neither ", kSingleFile, " nor ", kIndexFile, " found");
    }
    c.files_.push_back(SafetensorsFile::open(file.string()));
  }
  for (size_t i = 0; i < c.files_.size(); ++i)
    for (const TensorInfo& t : c.files_[i].tensors()) c.where_[t.name] = {i, &t};
  return c;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, _] : where_) out.push_back(name);
  return out;
}

bool Checkpoint::contains(const std::string& name) const { return where_.count(name) != 0; }

const TensorInfo& Checkpoint::info(const std::string& name) const {
  auto it = where_.find(name);
  ECOM_CHECK_ARG(it != where_.end(), "checkpoint ", files_.empty() ? std::string("(empty)") : files_[0].path(),
                 ": no tensor named '", name, "'");
  return *it->second.second;
}

const SafetensorsFile& Checkpoint::file_of(const std::string& name) const {
  info(name);  // throws if absent
  return files_[where_.at(name).first];
}

const std::byte* Checkpoint::data(const std::string& name) const { return file_of(name).data(info(name)); }

void Checkpoint::read_f32(const std::string& name, float* out) const { file_of(name).read_f32(name, out); }

const std::map<std::string, std::string>& Checkpoint::metadata() const {
  static const std::map<std::string, std::string> empty;
  return files_.empty() ? empty : files_[0].metadata();
}

// ---- writing --------------------------------------------------------------------------------------

void save_safetensors(const std::string& path, const std::vector<SaveTensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  write_file(path, tensors, validate_save(path, tensors), metadata);
}

void save_checkpoint(const std::string& dir, const std::vector<SaveTensor>& tensors,
                     const std::map<std::string, std::string>& metadata, int64_t max_shard_bytes) {
  ECOM_CHECK_ARG(max_shard_bytes > 0, dir, ": max_shard_bytes must be positive, got ", max_shard_bytes);
  const std::vector<uint64_t> sizes = validate_save(dir, tensors);
  const uint64_t limit = static_cast<uint64_t>(max_shard_bytes);

  // Greedy shards in the given order: [first, last) index ranges.
  std::vector<std::pair<size_t, size_t>> shards;
  uint64_t total = 0, current = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (shards.empty() || (current > 0 && current + sizes[i] > limit)) {
      shards.push_back({i, i});
      current = 0;
    }
    shards.back().second = i + 1;
    current += sizes[i];
    total += sizes[i];
  }
  if (total <= limit) shards.assign(1, {0, tensors.size()});

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw RuntimeError(dir + ": cannot create the directory (" + ec.message() + ")");
  const fs::path root(dir);
  std::set<std::string> written;
  if (shards.size() == 1) {
    write_file((root / kSingleFile).string(), tensors, sizes, metadata);
    written.insert(kSingleFile);
  } else {
    Json weight_map = Json::object();
    std::vector<std::pair<std::string, std::string>> entries;
    for (size_t s = 0; s < shards.size(); ++s) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
      const auto [first, last] = shards[s];
      std::vector<SaveTensor> part(tensors.begin() + first, tensors.begin() + last);
      std::vector<uint64_t> part_sizes(sizes.begin() + first, sizes.begin() + last);
      write_file((root / name).string(), part, part_sizes, metadata);
      written.insert(name);
      for (const SaveTensor& t : part) entries.push_back({t.name, name});
    }
    std::sort(entries.begin(), entries.end());
    for (const auto& [tensor, file] : entries) weight_map[tensor] = file;
    Json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    const std::string text = index.dump(2) + "\n";
    atomic_write((root / kIndexFile).string(),
                 [&](int fd, const std::string& tmp) { write_all(fd, text.data(), text.size(), tmp); });
    written.insert(kIndexFile);
  }
  // Remove weight files of an earlier save in this directory that the new layout does not use
  // (a stale index would otherwise take precedence over a new model.safetensors).
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    const bool ours = name == kSingleFile || name == kIndexFile || is_shard_name(name);
    if (ours && !written.count(name)) fs::remove(entry.path(), ec);
  }
}

}  // namespace ecomllm::io

namespace ecomllm::io {

void write_file_atomic(const std::string& path, std::string_view bytes) {
  atomic_write(path, [&](int fd, const std::string& tmp) { write_all(fd, bytes.data(), bytes.size(), tmp); });
}

}  // namespace ecomllm::io
