// safetensors files (read through a read-only mmap, written atomically) and Hugging Face model
// directories made of one model.safetensors or of shards listed in model.safetensors.index.json.
//
// Format: u64 little-endian header length L, L bytes of UTF-8 JSON {name: {"dtype", "shape",
// "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the data section; offsets are
// relative to the data section. Opening a file validates everything a truncated or hostile file can
// get wrong and throws ValueError("<path>: <reason>"), so every TensorInfo of an open file lies
// inside the mapping. Tensor data is not necessarily aligned (other writers may not pad the header
// to 8 bytes): read it with memcpy, or through read_f32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace ecomllm::io {

enum class StDType { BOOL, U8, I8, U16, I16, F16, BF16, U32, I32, F32, U64, I64, F64 };

const char* st_dtype_name(StDType);  // "F32", ...
int64_t st_dtype_size(StDType);      // bytes per element
bool st_dtype_parse(const std::string& name, StDType* out);  // false for an unknown name

struct TensorInfo {
  std::string name;
  StDType dtype = StDType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the data section (as in the header)
  int64_t numel() const;        // 1 for a 0-d tensor, 0 when a dimension is 0
};

// Converts n elements of a F32/F16/BF16/F64 tensor (any alignment) to fp32; ValueError otherwise.
void convert_to_f32(StDType dtype, const std::byte* src, int64_t n, float* out, const std::string& what);

class SafetensorsFile {  // move-only; owns a read-only mmap of the file
 public:
  static SafetensorsFile open(const std::string& path);  // validates everything; ValueError on a bad file

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in header order
  const TensorInfo* find(const std::string& name) const;              // nullptr if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }  // "__metadata__"
  uint64_t file_size() const { return map_size_; }
  uint64_t data_offset() const { return data_offset_; }  // 8 + header length
  // Pointer into the mapping (stays valid while this object, even moved, lives).
  const std::byte* data(const TensorInfo& t) const;
  // Converts F32/F16/BF16 (and F64) to fp32 into out[numel]; ValueError for other dtypes or a missing name.
  void read_f32(const std::string& name, float* out) const;

 private:
  SafetensorsFile() = default;
  void release() noexcept;

  std::string path_;
  const std::byte* map_ = nullptr;  // whole file, PROT_READ / MAP_PRIVATE
  uint64_t map_size_ = 0;
  uint64_t data_offset_ = 0;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

// A Hugging Face model directory (or a single .safetensors file): model.safetensors, or shards listed in
// model.safetensors.index.json ({"metadata": {...}, "weight_map": {name: file}}); every shard opened
// (mmap) and validated; the weight_map must agree with the shards' contents (ValueError otherwise).
class Checkpoint {
 public:
  static Checkpoint open(const std::string& dir_or_file);

  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // ValueError naming the tensor if absent
  const std::byte* data(const std::string& name) const;
  void read_f32(const std::string& name, float* out) const;
  const SafetensorsFile& file_of(const std::string& name) const;  // the shard holding `name`
  const std::vector<SafetensorsFile>& files() const { return files_; }  // shards in file-name order
  // "__metadata__" of the first shard (transformers writes the same {"format": "pt"} into every shard).
  const std::map<std::string, std::string>& metadata() const;

 private:
  std::vector<SafetensorsFile> files_;
  std::map<std::string, std::pair<size_t, const TensorInfo*>> where_;  // name -> (file, info)
};

struct SaveTensor {
  std::string name;
  StDType dtype;
  std::vector<int64_t> shape;
  const void* data;  // numel * itemsize bytes, little-endian, C order
};

// Atomic write: temp file in the same directory, fsync, rename. Header JSON padded with spaces to a
// multiple of 8 bytes; tensors laid out contiguously in the given order; "__metadata__" written when non-empty.
void save_safetensors(const std::string& path, const std::vector<SaveTensor>& tensors,
                      const std::map<std::string, std::string>& metadata);

// HF sharding: one model.safetensors when everything fits in max_shard_bytes, else
// model-0000K-of-0000N.safetensors + model.safetensors.index.json (metadata.total_size, weight_map).
// Tensors fill shards greedily in the given order; one larger than max_shard_bytes gets a shard of
// its own. The directory is created if missing; weight files of an earlier save that the new one
// does not use (the other layout, surplus shards) are removed afterwards.
void save_checkpoint(const std::string& dir, const std::vector<SaveTensor>& tensors,
                     const std::map<std::string, std::string>& metadata, int64_t max_shard_bytes);

}  // namespace ecomllm::io
