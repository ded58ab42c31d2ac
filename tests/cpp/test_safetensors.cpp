// Unit tests for csrc/io safetensors: write + read back (every float dtype through read_f32),
// sharded checkpoints, and corrupted files refused with a ValueError naming the problem.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/half.h"
#include "io/safetensors.h"

namespace ecomllm::io {
namespace {

namespace fs = std::filesystem;

// A fresh directory under the system temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "ecomllm_st_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string operator/(const std::string& name) const { return (fs::path(path_) / name).string(); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

TEST(Safetensors, WriteThenReadBack) {
  TempDir dir;
  const std::vector<float> w = {1.5f, -2.0f, 0.25f, 3.0f, -0.0f, 0.0078125f};
  std::vector<uint16_t> wb, wh;
  for (float x : w) wb.push_back(f32_to_bf16(x)), wh.push_back(f32_to_f16(x));
  const std::vector<double> wd(w.begin(), w.end());
  const std::vector<int64_t> ids = {7, -1, 42};
  const std::string path = dir / "m.safetensors";
  save_safetensors(path,
                   {{"w", StDType::F32, {2, 3}, w.data()},
                    {"wb", StDType::BF16, {3, 2}, wb.data()},
                    {"wh", StDType::F16, {6}, wh.data()},
                    {"wd", StDType::F64, {6}, wd.data()},
                    {"ids", StDType::I64, {3}, ids.data()},
                    {"empty", StDType::F32, {0, 4}, nullptr}},
                   {{"format", "pt"}});
  const std::string bytes = read_bytes(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);

  const SafetensorsFile f = SafetensorsFile::open(path);
  ASSERT_EQ(f.tensors().size(), 6u);
  EXPECT_EQ(f.tensors()[0].name, "w");  // header order = given order
  EXPECT_EQ(f.tensors()[5].name, "empty");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const TensorInfo* t = f.find("wb");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, StDType::BF16);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(t->numel(), 6);
  EXPECT_EQ(f.find("nope"), nullptr);
  for (const char* name : {"w", "wb", "wh", "wd"}) {
    std::vector<float> out(6);
    f.read_f32(name, out.data());
    for (int i = 0; i < 6; ++i) EXPECT_EQ(out[i], w[i]) << name << "[" << i << "]";  // all exact in 16 bits
  }
  std::vector<int64_t> got(3);
  std::memcpy(got.data(), f.data(*f.find("ids")), 24);
  EXPECT_EQ(got, ids);
  EXPECT_EQ(f.find("empty")->numel(), 0);
  std::vector<float> dummy(3);
  EXPECT_THROW(f.read_f32("ids", dummy.data()), ValueError);
  EXPECT_THROW(f.read_f32("missing", dummy.data()), ValueError);

  SafetensorsFile moved = SafetensorsFile::open(path);
  SafetensorsFile other = std::move(moved);  // the mapping travels with the object
  std::vector<float> out(6);
  other.read_f32("w", out.data());
  EXPECT_EQ(out[0], 1.5f);
}

TEST(Safetensors, ShardedCheckpointRoundTrip) {
  TempDir dir;
  std::vector<std::vector<float>> data;
  std::vector<SaveTensor> tensors;
  for (int i = 0; i < 5; ++i) data.emplace_back(25, static_cast<float>(i));  // 100 bytes each
  for (int i = 0; i < 5; ++i) tensors.push_back({"t" + std::to_string(i), StDType::F32, {5, 5}, data[i].data()});
  save_checkpoint(dir.path(), tensors, {{"format", "pt"}}, 250);  // 2 per shard -> 3 shards
  EXPECT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(dir / "model-00003-of-00003.safetensors"));
  const Checkpoint ck = Checkpoint::open(dir.path());
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"t0", "t1", "t2", "t3", "t4"}));
  EXPECT_EQ(ck.files().size(), 3u);
  EXPECT_TRUE(ck.contains("t4"));
  std::vector<float> out(25);
  ck.read_f32("t3", out.data());
  EXPECT_EQ(out[24], 3.0f);
  EXPECT_EQ(ck.info("t2").shape, (std::vector<int64_t>{5, 5}));
  try {
    ck.info("t9");
    FAIL() << "expected ValueError";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("'t9'"), std::string::npos) << e.what();
  }
  // Saving again as one file removes the shards and the index.
  save_checkpoint(dir.path(), tensors, {}, 1 << 20);
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir / "model-00001-of-00003.safetensors"));
  EXPECT_EQ(Checkpoint::open(dir.path()).files().size(), 1u);
}

// Asserts that opening `path` throws a ValueError whose message contains `needle`.
void expect_refused(const std::string& path, const std::string& needle) {
  try {
    SafetensorsFile::open(path);
    FAIL() << "expected a ValueError containing '" << needle << "'";
  } catch (const ValueError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  }
}

TEST(Safetensors, CorruptFilesAreRefused) {
  TempDir dir;
  const std::vector<float> w(16, 1.0f);
  const std::string path = dir / "ok.safetensors";
  save_safetensors(path, {{"w", StDType::F32, {4, 4}, w.data()}}, {});
  const std::string good = read_bytes(path);
  const std::string bad = dir / "bad.safetensors";

  write_bytes(bad, good.substr(0, good.size() - 1));  // truncated data
  expect_refused(bad, "lie outside the 63-byte data section");
  write_bytes(bad, good.substr(0, 5));
  expect_refused(bad, "too short");
  write_bytes(bad, good.substr(0, 20));  // truncated header
  expect_refused(bad, "does not fit the file");
  std::string flipped = good;
  flipped[8] = '[';  // the header is no longer an object
  write_bytes(bad, flipped);
  expect_refused(bad, "not valid UTF-8 JSON");
  std::string offsets = good;
  const size_t at = offsets.find("[0,64]");
  ASSERT_NE(at, std::string::npos);
  offsets.replace(at, 6, "[0,60]");  // a 60-byte range for a 64-byte tensor
  write_bytes(bad, offsets);
  expect_refused(bad, "span 60 bytes but shape [4,4] of F32 needs 64");
  expect_refused(dir / "missing.safetensors", "cannot open");
}

}  // namespace
}  // namespace ecomllm::io
