// Unit tests for csrc/index: distance kernels of every SIMD level against the scalar reference at
// odd lengths, and HNSW graph basics (self search, short results, delete + compact, files).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "base/cpu_features.h"
#include "base/error.h"
#include "base/half.h"
#include "index/distance.h"
#include "index/hnsw.h"

namespace ecomllm::index {
namespace {

std::vector<SimdLevel> supported_levels() {
  std::vector<SimdLevel> out{SimdLevel::Scalar};
  const SimdLevel best = cpu_features().best_level();
  if (best >= SimdLevel::AVX2) out.push_back(SimdLevel::AVX2);
  if (best >= SimdLevel::AVX512) out.push_back(SimdLevel::AVX512);
  return out;
}

TEST(DistanceKernels, EveryLevelMatchesScalarAtOddLengths) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  const DistanceKernels& ref = distance_kernels(SimdLevel::Scalar);
  for (int64_t n : {1, 3, 17, 63, 65, 127, 384, 4097}) {
    std::vector<float> q(n), x(n);
    std::vector<uint16_t> xb(n);
    std::vector<int8_t> xi(n);
    float scale = 0;  // sum |q| * max |x|: bounds the rounding of any summation order
    for (int64_t i = 0; i < n; ++i) {
      q[i] = normal(rng);
      x[i] = normal(rng);
      xb[i] = f32_to_bf16(x[i]);
      xi[i] = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
      scale += std::fabs(q[i]) * (std::fabs(q[i]) + 127.f);
    }
    for (SimdLevel level : supported_levels()) {
      const DistanceKernels& k = distance_kernels(level);
      const float tol = 2e-6f * scale;
      EXPECT_NEAR(k.l2_f32(q.data(), x.data(), n), ref.l2_f32(q.data(), x.data(), n), tol) << n;
      EXPECT_NEAR(k.dot_f32(q.data(), x.data(), n), ref.dot_f32(q.data(), x.data(), n), tol) << n;
      EXPECT_NEAR(k.l2_bf16(q.data(), xb.data(), n), ref.l2_bf16(q.data(), xb.data(), n), tol) << n;
      EXPECT_NEAR(k.dot_bf16(q.data(), xb.data(), n), ref.dot_bf16(q.data(), xb.data(), n), tol) << n;
      EXPECT_NEAR(k.dot_i8(q.data(), xi.data(), n), ref.dot_i8(q.data(), xi.data(), n), tol) << n;
    }
    // the scalar reference itself against a double-precision sum
    double l2 = 0;
    for (int64_t i = 0; i < n; ++i) l2 += (double(q[i]) - x[i]) * (double(q[i]) - x[i]);
    EXPECT_NEAR(ref.l2_f32(q.data(), x.data(), n), l2, 1e-5 * (l2 + 1));
  }
}

std::vector<float> random_rows(int64_t n, int64_t dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(n * dim);
  for (float& v : x) v = normal(rng);
  return x;
}

TEST(Hnsw, EveryRowFindsItselfAndShortResultsArePadded) {
  for (Storage st : {Storage::F32, Storage::BF16, Storage::I8}) {
    HnswParams p;
    p.dim = 17;
    p.metric = Metric::L2;
    p.storage = st;
    p.M = 8;
    HnswIndex ix(p);
    const int64_t n = 500;
    const std::vector<float> x = random_rows(n, p.dim, 3);
    std::vector<int64_t> ids(n);
    for (int64_t i = 0; i < n; ++i) ids[i] = 1000 + i;
    ix.add(x.data(), ids.data(), n, 2);
    ix.check_graph();
    EXPECT_EQ(ix.size(), n);
    std::vector<int64_t> out(n), cnt(n);
    std::vector<float> dist(n);
    ix.search(x.data(), n, 1, 64, nullptr, 2, out.data(), dist.data(), cnt.data());
    int64_t self = 0;
    for (int64_t i = 0; i < n; ++i) self += out[i] == ids[i];
    EXPECT_GE(self, n - n / 100) << storage_name(st);  // 1-NN recall >= 0.99

    HnswIndex tiny(p);
    tiny.add(x.data(), ids.data(), 3, 1);
    std::vector<int64_t> tid(5), tcnt(1);
    std::vector<float> td(5);
    tiny.search(x.data(), 1, 5, 10, nullptr, 1, tid.data(), td.data(), tcnt.data());
    EXPECT_EQ(tcnt[0], 3);
    EXPECT_EQ(tid[3], -1);
    EXPECT_TRUE(std::isinf(td[4]));
  }
}

TEST(Hnsw, DeleteCompactAndReuseSlots) {
  HnswParams p;
  p.dim = 8;
  p.metric = Metric::Cosine;
  p.M = 6;
  HnswIndex ix(p);
  const int64_t n = 400;
  const std::vector<float> x = random_rows(n, p.dim, 5);
  ix.add(x.data(), nullptr, n, 2);
  std::vector<int64_t> gone;
  for (int64_t i = 0; i < n; i += 10) gone.push_back(i);  // 10%: the local repair path
  EXPECT_EQ(ix.remove(gone.data(), static_cast<int64_t>(gone.size()), false), static_cast<int64_t>(gone.size()));
  EXPECT_THROW(ix.remove(gone.data(), 1, false), ValueError);
  ix.compact(2);
  ix.check_graph();
  EXPECT_EQ(ix.deleted_count(), 0);
  const int64_t used = ix.slots_used();
  ix.add(x.data(), gone.data(), static_cast<int64_t>(gone.size()), 1);  // same ids back, freed slots
  EXPECT_EQ(ix.slots_used(), used);
  ix.check_graph();
  EXPECT_THROW(ix.add(x.data(), gone.data(), 1, 1), ValueError);  // now live again: duplicate
}

TEST(Hnsw, SaveLoadRoundTripAndCorruptionIsValueError) {
  HnswParams p;
  p.dim = 5;
  p.metric = Metric::IP;
  p.storage = Storage::I8;
  HnswIndex ix(p);
  const std::vector<float> x = random_rows(200, p.dim, 7);
  ix.add(x.data(), nullptr, 200, 1);
  const std::string path = testing::TempDir() + "/hnsw_cpp_test.hnsw";
  ix.save(path);
  for (bool mmap : {false, true}) {
    auto back = HnswIndex::load(path, mmap);
    back->check_graph();
    EXPECT_EQ(back->size(), 200);
    EXPECT_EQ(back->read_only(), mmap);
    std::vector<int64_t> a(10), b(10), c(1);
    std::vector<float> da(10), db(10);
    ix.search(x.data(), 1, 10, 20, nullptr, 1, a.data(), da.data(), c.data());
    back->search(x.data(), 1, 10, 20, nullptr, 1, b.data(), db.data(), c.data());
    EXPECT_EQ(a, b);
    EXPECT_EQ(da, db);
  }
  // flip one payload byte
  std::FILE* f = std::fopen(path.c_str(), "r+b");
  ASSERT_NE(f, nullptr);
  std::fseek(f, 300, SEEK_SET);
  const int byte = std::fgetc(f);
  std::fseek(f, 300, SEEK_SET);
  std::fputc(byte ^ 0x10, f);
  std::fclose(f);
  EXPECT_THROW(HnswIndex::load(path, false), ValueError);
  std::remove(path.c_str());
}

TEST(Hnsw, Crc32MatchesKnownValue) {
  const std::string s = "123456789";
  EXPECT_EQ(crc32(s.data(), s.size()), 0xCBF43926u);  // the standard CRC-32 check value
  EXPECT_EQ(crc32(s.data() + 4, 5, crc32(s.data(), 4)), 0xCBF43926u);
}

}  // namespace
}  // namespace ecomllm::index
