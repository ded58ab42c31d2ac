// HNSW graph: insert, search (plain, filtered, exact fallback), delete, compact. See hnsw.h for the
// layout and the locking scheme.
#include "index/hnsw.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <thread>
#include <unordered_set>

#include "base/error.h"
#include "base/half.h"
#include "base/parallel.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define ECOM_CPU_RELAX() _mm_pause()
#else
#define ECOM_CPU_RELAX() ((void)0)
#endif

namespace ecomllm::index {

namespace {

constexpr uint8_t kFree = 0, kLive = 1, kDeleted = 2;
constexpr int kMaxLevel = 31;
constexpr float kInf = std::numeric_limits<float>::infinity();

using DistSlot = std::pair<float, uint32_t>;

inline uint64_t pack_entry(uint32_t slot, int level) { return (static_cast<uint64_t>(level) << 32) | slot; }
inline uint32_t entry_slot(uint64_t e) { return static_cast<uint32_t>(e); }
inline int entry_level(uint64_t e) { return static_cast<int>(e >> 32); }

inline bool test_bit(const uint64_t* bits, uint32_t i) { return (bits[i >> 6] >> (i & 63)) & 1u; }

// splitmix64: the level of the i-th insert is a pure function of (seed, i).
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Sets the calling thread's OpenMP thread count for one call (<= 0 keeps it).
class ThreadCountScope {
 public:
  explicit ThreadCountScope(int n) : saved_(max_threads()) {
#ifdef _OPENMP
    if (n > 0) omp_set_num_threads(n);
#endif
  }
  ~ThreadCountScope() {
#ifdef _OPENMP
    omp_set_num_threads(saved_);
#endif
  }

 private:
  int saved_;
};

// Link-list words: [0] seq, [1] low 16 bits count (level-0 lists keep level and state above it).
inline std::atomic_ref<uint32_t> seq_ref(uint32_t* list) { return std::atomic_ref<uint32_t>(list[0]); }
inline std::atomic_ref<uint16_t> count_ref(uint32_t* list) {
  return std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(list + 1));
}
inline std::atomic_ref<uint32_t> link_ref(uint32_t* list, int i) { return std::atomic_ref<uint32_t>(list[2 + i]); }

}  // namespace

// ---- names --------------------------------------------------------------------------------------

Metric parse_metric(const std::string& name) {
  if (name == "l2") return Metric::L2;
  if (name == "ip") return Metric::IP;
  if (name == "cosine") return Metric::Cosine;
  throw ValueError("unknown metric '" + name + "': expected one of l2, ip, cosine");
}

Storage parse_storage(const std::string& name) {
  if (name == "f32" || name == "float32") return Storage::F32;
  if (name == "bf16" || name == "bfloat16") return Storage::BF16;
  if (name == "int8" || name == "i8") return Storage::I8;
  throw ValueError("unknown dtype '" + name + "': expected one of f32, bf16, int8");
}

const char* metric_name(Metric m) {
  switch (m) {
    case Metric::L2: return "l2";
    case Metric::IP: return "ip";
    case Metric::Cosine: return "cosine";
  }
  return "?";
}

const char* storage_name(Storage s) {
  switch (s) {
    case Storage::F32: return "f32";
    case Storage::BF16: return "bf16";
    case Storage::I8: return "int8";
  }
  return "?";
}

// ---- per-thread scratch -------------------------------------------------------------------------

struct HnswIndex::Scratch {
  std::vector<uint16_t> visited;  // visited[slot] == epoch <=> seen in this walk
  uint16_t epoch = 0;
  std::vector<DistSlot> top;   // max-heap by distance: the best ef found
  std::vector<DistSlot> cand;  // min-heap by distance: the frontier
  std::vector<DistSlot> sel;   // neighbour selection
  std::vector<uint32_t> nbuf, dead_queue;
  std::vector<float> query, row, row2;

  void new_walk(size_t slots) {
    if (visited.size() < slots) {
      visited.assign(slots, 0);
      epoch = 0;
    }
    if (++epoch == 0) {  // wrapped: clear once every 65535 walks
      std::fill(visited.begin(), visited.end(), 0);
      epoch = 1;
    }
  }
  bool visit(uint32_t slot) {  // true the first time in this walk
    if (visited[slot] == epoch) return false;
    visited[slot] = epoch;
    return true;
  }
};

std::unique_ptr<HnswIndex::Scratch> HnswIndex::acquire_scratch() const {
  std::unique_ptr<Scratch> s;
  {
    std::lock_guard<std::mutex> lock(scratch_mutex_);
    if (!scratch_pool_.empty()) {
      s = std::move(scratch_pool_.back());
      scratch_pool_.pop_back();
    }
  }
  if (!s) s = std::make_unique<Scratch>();
  s->nbuf.resize(static_cast<size_t>(M0_) + 1);
  s->query.resize(p_.dim);
  s->row.resize(p_.dim);
  s->row2.resize(p_.dim);
  return s;
}

void HnswIndex::release_scratch(std::unique_ptr<Scratch> s) const {
  std::lock_guard<std::mutex> lock(scratch_mutex_);
  scratch_pool_.push_back(std::move(s));
}

// ---- distances ----------------------------------------------------------------------------------

// A query row (fp32, normalised for cosine) bound to the index's metric, storage and kernels.
struct HnswIndex::DistCtx {
  const HnswIndex& ix;
  const DistanceKernels& k;
  const float* q;
  float qnorm2 = 0.f;  // |q|^2, used by int8 L2

  DistCtx(const HnswIndex& index, const DistanceKernels& kernels, const float* query)
      : ix(index), k(kernels), q(query) {
    if (ix.p_.storage == Storage::I8 && ix.p_.metric == Metric::L2) qnorm2 = k.dot_f32(q, q, ix.p_.dim);
  }

  float operator()(uint32_t slot) const {
    const std::byte* v = ix.vec_at(slot);
    const int64_t n = ix.p_.dim;
    const bool l2 = ix.p_.metric == Metric::L2;
    switch (ix.p_.storage) {
      case Storage::F32: {
        const float* x = reinterpret_cast<const float*>(v);
        return l2 ? k.l2_f32(q, x, n) : 1.f - k.dot_f32(q, x, n);
      }
      case Storage::BF16: {
        const uint16_t* x = reinterpret_cast<const uint16_t*>(v);
        return l2 ? k.l2_bf16(q, x, n) : 1.f - k.dot_bf16(q, x, n);
      }
      case Storage::I8: {
        float aux[2];  // scale, |decoded row|^2
        std::memcpy(aux, ix.elem(slot) + ix.aux_offset_, sizeof(aux));
        const float dot = aux[0] * k.dot_i8(q, reinterpret_cast<const int8_t*>(v), n);
        return l2 ? std::max(0.f, qnorm2 - 2.f * dot + aux[1]) : 1.f - dot;
      }
    }
    return kInf;
  }
};

// ---- layout -------------------------------------------------------------------------------------

void HnswIndex::compute_layout() {
  M0_ = 2 * p_.M;
  level_mult_ = 1.0 / std::log(static_cast<double>(p_.M));
  const size_t links_bytes = (2 + static_cast<size_t>(M0_)) * sizeof(uint32_t);
  aux_offset_ = links_bytes;
  const size_t aux_bytes = p_.storage == Storage::I8 ? 2 * sizeof(float) : 0;
  // The vector starts on a cache line and elements are whole lines (level0_ is 64-byte aligned),
  // so a distance reads exactly ceil(vec_bytes / 64) lines and the prefetch can cover them all.
  vec_offset_ = (links_bytes + aux_bytes + 63) / 64 * 64;
  const size_t elem_size = p_.storage == Storage::F32 ? 4 : p_.storage == Storage::BF16 ? 2 : 1;
  vec_bytes_ = elem_size * static_cast<size_t>(p_.dim);
  elem_bytes_ = (vec_offset_ + vec_bytes_ + 63) / 64 * 64;
  upper_level_words_ = 2 + static_cast<size_t>(p_.M);
}

HnswIndex::HnswIndex(const HnswParams& params, int64_t initial_capacity) : p_(params) {
  ECOM_CHECK_ARG(p_.dim >= 1 && p_.dim <= (int64_t{1} << 20), "dim must be in [1, 1048576], got ", p_.dim);
  ECOM_CHECK_ARG(p_.M >= 2 && p_.M <= 512, "M must be in [2, 512], got ", p_.M);
  ECOM_CHECK_ARG(p_.ef_construction >= 1 && p_.ef_construction <= 100000,
                 "ef_construction must be in [1, 100000], got ", p_.ef_construction);
  ECOM_CHECK_ARG(initial_capacity >= 0 && initial_capacity < (int64_t{1} << 32) - 1,
                 "max_elements must be in [0, 2^32 - 1), got ", initial_capacity);
  p_.ef_construction = std::max(p_.ef_construction, p_.M);
  compute_layout();
  if (initial_capacity > 0) grow(initial_capacity);
}

HnswIndex::~HnswIndex() {
  if (map_base_) unmap_file(map_base_, map_bytes_);
}

uint32_t* HnswIndex::links_at(uint32_t slot, int level) const {
  if (level == 0) return reinterpret_cast<uint32_t*>(elem(slot));
  return upper_[slot].get() + static_cast<size_t>(level - 1) * upper_level_words_;
}

std::atomic_ref<uint8_t> HnswIndex::state_ref(uint32_t slot) const {
  return std::atomic_ref<uint8_t>(*reinterpret_cast<uint8_t*>(elem(slot) + 7));
}

int HnswIndex::level_of(uint32_t slot) const { return static_cast<int>(*reinterpret_cast<const uint8_t*>(elem(slot) + 6)); }

void HnswIndex::check_writable() const {
  ECOM_CHECK_ARG(!read_only_, "this index was opened with mmap=True and is read-only; load it with mmap=False to modify it");
}

void HnswIndex::grow(int64_t min_capacity) {
  check_writable();
  if (min_capacity <= capacity_) return;
  int64_t cap = std::max<int64_t>({min_capacity, capacity_ + capacity_ / 2, 1024});
  cap = std::min<int64_t>(cap, (int64_t{1} << 32) - 2);
  ECOM_CHECK_ARG(min_capacity <= cap, "the index cannot hold more than 2^32 - 2 vectors");
  AlignedBuffer next = AlignedBuffer::with_huge_pages(static_cast<size_t>(cap) * elem_bytes_, /*zero=*/true);
  if (capacity_ > 0) std::memcpy(next.data(), level0_, static_cast<size_t>(capacity_) * elem_bytes_);
  level0_owned_ = std::move(next);
  level0_ = level0_owned_.data();
  upper_.resize(cap);
  ext_id_.resize(cap, -1);
  label_.resize(cap, -1);
  capacity_ = cap;
}

int64_t HnswIndex::slots_used() const {
  std::lock_guard<std::mutex> lock(ids_mutex_);
  return slots_used_;
}

int64_t HnswIndex::next_auto_id() const {
  std::lock_guard<std::mutex> lock(ids_mutex_);
  return next_auto_id_;
}

int64_t HnswIndex::max_level() const {
  const uint64_t e = entry_.load(std::memory_order_acquire);
  return e == kNoEntry ? -1 : entry_level(e);
}

// ---- rows ---------------------------------------------------------------------------------------

void HnswIndex::prepare_query(const float* q, float* out) const {
  double n2 = 0;
  for (int64_t i = 0; i < p_.dim; ++i) {
    ECOM_CHECK_ARG(std::isfinite(q[i]), "vector contains a non-finite value (", q[i], ") at position ", i);
    n2 += static_cast<double>(q[i]) * q[i];
  }
  if (p_.metric == Metric::Cosine) {
    ECOM_CHECK_ARG(n2 > 0, "a zero vector has no direction: it cannot be used with the cosine metric");
    const float inv = static_cast<float>(1.0 / std::sqrt(n2));
    for (int64_t i = 0; i < p_.dim; ++i) out[i] = q[i] * inv;
  } else if (out != q) {
    std::memcpy(out, q, sizeof(float) * p_.dim);
  }
}

void HnswIndex::encode_row(const float* row, std::byte* dst) const {
  std::byte* v = dst + vec_offset_;
  switch (p_.storage) {
    case Storage::F32: std::memcpy(v, row, vec_bytes_); break;
    case Storage::BF16: {
      uint16_t* h = reinterpret_cast<uint16_t*>(v);
      for (int64_t i = 0; i < p_.dim; ++i) h[i] = f32_to_bf16(row[i]);
      break;
    }
    case Storage::I8: {
      float amax = 0.f;
      for (int64_t i = 0; i < p_.dim; ++i) amax = std::max(amax, std::fabs(row[i]));
      const float scale = amax > 0.f ? amax / 127.f : 1.f;
      int8_t* c = reinterpret_cast<int8_t*>(v);
      double n2 = 0;
      for (int64_t i = 0; i < p_.dim; ++i) {
        const float r = std::nearbyint(row[i] / scale);
        c[i] = static_cast<int8_t>(std::clamp(r, -127.f, 127.f));
        n2 += static_cast<double>(c[i]) * c[i];
      }
      const float aux[2] = {scale, static_cast<float>(n2 * scale * scale)};
      std::memcpy(dst + aux_offset_, aux, sizeof(aux));
      break;
    }
  }
}

void HnswIndex::decode_row(uint32_t slot, float* out) const {
  const std::byte* v = vec_at(slot);
  switch (p_.storage) {
    case Storage::F32: std::memcpy(out, v, vec_bytes_); break;
    case Storage::BF16: {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(v);
      for (int64_t i = 0; i < p_.dim; ++i) out[i] = bf16_to_f32(h[i]);
      break;
    }
    case Storage::I8: {
      float scale;
      std::memcpy(&scale, elem(slot) + aux_offset_, sizeof(float));
      const int8_t* c = reinterpret_cast<const int8_t*>(v);
      for (int64_t i = 0; i < p_.dim; ++i) out[i] = scale * c[i];
      break;
    }
  }
}

// ---- link lists (seqlocks) ----------------------------------------------------------------------

int HnswIndex::read_links(uint32_t slot, int level, uint32_t* out) const {
  uint32_t* list = links_at(slot, level);
  const int cap = static_cast<int>(level == 0 ? M0_ : p_.M);
  for (;;) {
    const uint32_t s1 = seq_ref(list).load(std::memory_order_acquire);
    if (s1 & 1u) {
      ECOM_CPU_RELAX();
      continue;
    }
    const int n = std::min<int>(count_ref(list).load(std::memory_order_relaxed), cap);
    for (int i = 0; i < n; ++i) out[i] = link_ref(list, i).load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (seq_ref(list).load(std::memory_order_relaxed) == s1) return n;
  }
}

void HnswIndex::lock_links(uint32_t* list) const {
  auto seq = seq_ref(list);
  uint32_t s = seq.load(std::memory_order_relaxed);
  for (;;) {
    if (!(s & 1u) && seq.compare_exchange_weak(s, s + 1, std::memory_order_acquire, std::memory_order_relaxed)) break;
    ECOM_CPU_RELAX();
    s = seq.load(std::memory_order_relaxed);
  }
  std::atomic_thread_fence(std::memory_order_release);  // list writes stay after the odd seq
}

void HnswIndex::unlock_links(uint32_t* list) const { seq_ref(list).fetch_add(1, std::memory_order_release); }

namespace {
void write_links(uint32_t* list, const DistSlot* nb, size_t n) {
  for (size_t i = 0; i < n; ++i) link_ref(list, static_cast<int>(i)).store(nb[i].second, std::memory_order_relaxed);
  count_ref(list).store(static_cast<uint16_t>(n), std::memory_order_relaxed);
}
}  // namespace

// ---- graph walks --------------------------------------------------------------------------------

uint32_t HnswIndex::greedy_descend(const DistCtx& d, uint32_t ep, float& ep_dist, int from_level, int to_level) const {
  uint32_t buf[512];  // M <= 512
  for (int level = from_level; level >= to_level; --level) {
    bool changed = true;
    while (changed) {
      changed = false;
      const int n = read_links(ep, level, buf);
      for (int i = 0; i < n; ++i) {
        const float dist = d(buf[i]);
        if (dist < ep_dist) {
          ep_dist = dist;
          ep = buf[i];
          changed = true;
        }
      }
    }
  }
  return ep;
}

// Best-first walk of one level from ep; leaves the best (at most ef) admitted nodes in s.top (a
// max-heap). Admitted: in `allowed` when given, else live when skip_dead, else any node.
void HnswIndex::search_layer(const DistCtx& d, uint32_t ep, float ep_dist, int64_t ef, int level,
                             const std::vector<uint64_t>* allowed, bool skip_dead, Scratch& s) const {
  const size_t nbits = allowed ? allowed->size() * 64 : 0;
  auto admitted = [&](uint32_t x) {
    if (allowed) return x < nbits && test_bit(allowed->data(), x);
    return !skip_dead || state_ref(x).load(std::memory_order_relaxed) == kLive;
  };
  const bool must_fill = allowed || skip_dead;  // keep walking until ef admitted nodes are found
  auto& top = s.top;
  auto& cand = s.cand;
  top.clear();
  cand.clear();
  s.new_walk(static_cast<size_t>(capacity_));
  s.visit(ep);
  float bound = kInf;
  if (admitted(ep)) {
    top.emplace_back(ep_dist, ep);
    bound = ep_dist;
  }
  cand.emplace_back(ep_dist, ep);
  uint32_t* nb = s.nbuf.data();
  // Lines of a neighbour's vector prefetched one distance ahead (its first line is requested when
  // the links are scanned). More than 8 measured no faster at dim 384: the hardware prefetcher
  // follows the rest of a long row.
  const size_t vec_lines = std::min<size_t>((vec_bytes_ + 63) / 64, 8);
  while (!cand.empty()) {
    const DistSlot c = cand.front();
    if (c.first > bound && (static_cast<int64_t>(top.size()) >= ef || !must_fill)) break;
    std::pop_heap(cand.begin(), cand.end(), std::greater<>());
    cand.pop_back();
    const int n = read_links(c.second, level, nb);
    int m = 0;
    for (int i = 0; i < n; ++i) {
      if (s.visit(nb[i])) {
        nb[m++] = nb[i];
        __builtin_prefetch(vec_at(nb[i]));
      }
    }
    for (int i = 0; i < m; ++i) {
      if (i + 1 < m) {
        const char* next = reinterpret_cast<const char*>(vec_at(nb[i + 1]));
        for (size_t l = 1; l < vec_lines; ++l) __builtin_prefetch(next + 64 * l);
      }
      const uint32_t x = nb[i];
      const float dist = d(x);
      if (static_cast<int64_t>(top.size()) < ef || dist < bound) {
        cand.emplace_back(dist, x);
        std::push_heap(cand.begin(), cand.end(), std::greater<>());
        // The frontier's best is expanded next: start loading its link list now (level 0 only;
        // upper levels are walked once per query).
        if (level == 0) {
          const char* links = reinterpret_cast<const char*>(elem(cand.front().second));
          __builtin_prefetch(links);
          __builtin_prefetch(links + 64);
        }
        if (admitted(x)) {
          top.emplace_back(dist, x);
          std::push_heap(top.begin(), top.end());
          if (static_cast<int64_t>(top.size()) > ef) {
            std::pop_heap(top.begin(), top.end());
            top.pop_back();
          }
          bound = top.front().first;
        }
      }
    }
  }
}

// hnswlib's "heuristic 2": walk candidates nearest first; keep one unless it is closer to an
// already kept neighbour than to the base node (so links spread in direction). cand: (distance to
// base, slot) -> at most m kept, nearest first.
void HnswIndex::select_neighbors(std::vector<DistSlot>& cand, int64_t m, Scratch& s) const {
  std::sort(cand.begin(), cand.end());
  if (static_cast<int64_t>(cand.size()) <= m) return;
  const DistanceKernels& k = distance_kernels();
  auto& kept = s.sel;
  kept.clear();
  for (const DistSlot& c : cand) {
    if (static_cast<int64_t>(kept.size()) >= m) break;
    const float* row = p_.storage == Storage::F32 ? reinterpret_cast<const float*>(vec_at(c.second)) : s.row2.data();
    if (p_.storage != Storage::F32) decode_row(c.second, s.row2.data());
    const DistCtx dc(*this, k, row);
    bool good = true;
    for (const DistSlot& r : kept) {
      if (dc(r.second) < c.first) {
        good = false;
        break;
      }
    }
    if (good) kept.push_back(c);
  }
  cand.swap(kept);
}

// Adds `slot` to nb's list at `level`; a full list is re-pruned with the heuristic.
void HnswIndex::connect(uint32_t slot, int level, uint32_t nb, int64_t cap, Scratch& s) {
  uint32_t* list = links_at(nb, level);
  lock_links(list);
  const int n = count_ref(list).load(std::memory_order_relaxed);
  bool present = false;
  for (int i = 0; i < n && !present; ++i) present = link_ref(list, i).load(std::memory_order_relaxed) == slot;
  if (!present) {
    if (n < cap) {
      link_ref(list, n).store(slot, std::memory_order_relaxed);
      count_ref(list).store(static_cast<uint16_t>(n + 1), std::memory_order_relaxed);
    } else {
      const float* base = p_.storage == Storage::F32 ? reinterpret_cast<const float*>(vec_at(nb)) : s.row.data();
      if (p_.storage != Storage::F32) decode_row(nb, s.row.data());
      const DistCtx dc(*this, distance_kernels(), base);
      std::vector<DistSlot> cand;
      cand.reserve(n + 1);
      for (int i = 0; i < n; ++i) {
        const uint32_t x = link_ref(list, i).load(std::memory_order_relaxed);
        cand.emplace_back(dc(x), x);
      }
      cand.emplace_back(dc(slot), slot);
      select_neighbors(cand, cap, s);
      write_links(list, cand.data(), cand.size());
    }
  }
  unlock_links(list);
}

// Writes a new node's list at `level`. Another insert may already have linked itself in (it
// reached this node on a higher level), so those links are kept: appended while there is room,
// else the heuristic picks from the union. `chosen` stays as given (nearest first).
void HnswIndex::set_own_links(uint32_t slot, int level, const std::vector<DistSlot>& chosen, int64_t cap, Scratch& s) {
  uint32_t* list = links_at(slot, level);
  lock_links(list);
  const int n = count_ref(list).load(std::memory_order_relaxed);
  std::vector<DistSlot> merged(chosen);
  std::vector<uint32_t> extra;
  for (int i = 0; i < n; ++i) {
    const uint32_t x = link_ref(list, i).load(std::memory_order_relaxed);
    if (std::none_of(chosen.begin(), chosen.end(), [x](const DistSlot& c) { return c.second == x; })) extra.push_back(x);
  }
  if (!extra.empty()) {
    const float* base = p_.storage == Storage::F32 ? reinterpret_cast<const float*>(vec_at(slot)) : s.row.data();
    if (p_.storage != Storage::F32) decode_row(slot, s.row.data());
    const DistCtx dc(*this, distance_kernels(), base);
    for (uint32_t x : extra) merged.emplace_back(dc(x), x);
    if (static_cast<int64_t>(merged.size()) > cap) select_neighbors(merged, cap, s);
  }
  write_links(list, merged.data(), merged.size());
  unlock_links(list);
}

// ---- insert -------------------------------------------------------------------------------------

void HnswIndex::insert_slot(uint32_t slot, const float* row, int64_t id, Scratch& s) {
  const uint64_t draw = mix64(p_.seed ^ mix64(level_counter_.fetch_add(1, std::memory_order_relaxed)));
  const double u = (static_cast<double>(draw >> 11) + 0.5) * 0x1.0p-53;  // (0, 1)
  const int level = std::min(kMaxLevel, static_cast<int>(-std::log(u) * level_mult_));

  std::byte* e = elem(slot);
  std::memset(e, 0, vec_offset_);  // seq, count, links (aux rewritten below)
  e[6] = static_cast<std::byte>(level);
  encode_row(row, e);
  upper_[slot].reset(level > 0 ? new uint32_t[level * upper_level_words_]() : nullptr);
  ext_id_[slot] = id;
  label_[slot] = -1;
  state_ref(slot).store(kLive, std::memory_order_release);

  std::unique_lock<std::mutex> top_lock(entry_mutex_, std::defer_lock);
  uint64_t entry = entry_.load(std::memory_order_acquire);
  if (entry == kNoEntry || level > entry_level(entry)) {
    top_lock.lock();
    entry = entry_.load(std::memory_order_acquire);
    if (entry != kNoEntry && level <= entry_level(entry)) top_lock.unlock();
  }
  if (entry == kNoEntry) {
    entry_.store(pack_entry(slot, level), std::memory_order_release);
    return;
  }
  const DistCtx d(*this, distance_kernels(), row);
  uint32_t ep = entry_slot(entry);
  const int top_level = entry_level(entry);
  float ep_dist = d(ep);
  if (level < top_level) ep = greedy_descend(d, ep, ep_dist, top_level, level + 1);
  for (int l = std::min(level, top_level); l >= 0; --l) {
    search_layer(d, ep, ep_dist, p_.ef_construction, l, nullptr, false, s);
    std::vector<DistSlot> chosen(s.top.begin(), s.top.end());
    select_neighbors(chosen, p_.M, s);  // sorted nearest first
    const int64_t cap = l == 0 ? M0_ : p_.M;
    set_own_links(slot, l, chosen, cap, s);
    for (const DistSlot& c : chosen) connect(slot, l, c.second, cap, s);
    if (!chosen.empty()) {
      ep = chosen.front().second;
      ep_dist = chosen.front().first;
    }
  }
  if (top_lock.owns_lock()) entry_.store(pack_entry(slot, level), std::memory_order_release);
}

void HnswIndex::add(const float* x, const int64_t* ids, int64_t n, int num_threads, int64_t* assigned) {
  check_writable();
  ECOM_CHECK_ARG(n >= 0, "row count must be >= 0");
  if (n == 0) return;
  const ThreadCountScope threads(num_threads);
  // Validate every row before touching the index, so a bad row inserts nothing.
  parallel_for(0, n, 256, [&](int64_t b, int64_t e) {
    std::vector<float> tmp(p_.dim);
    for (int64_t i = b; i < e; ++i) {
      try {
        prepare_query(x + i * p_.dim, tmp.data());
      } catch (const ValueError& err) {
        throw ValueError(detail::concat("vectors[", i, "]: ", err.what()));
      }
    }
  });
  std::vector<uint32_t> slots(n);
  std::vector<int64_t> auto_ids;
  const bool auto_assign = ids == nullptr;
  for (;;) {
    // global_ shared: compact() and reorder() (exclusive) never see a half-made reservation.
    std::shared_lock<std::shared_mutex> shared(global_);
    std::unique_lock<std::mutex> lock(ids_mutex_);
    if (auto_assign) {  // consecutive ids from next_auto_id_, taken under the same lock as the insert
      auto_ids.resize(n);
      for (int64_t i = 0; i < n; ++i) auto_ids[i] = next_auto_id_ + i;
      ids = auto_ids.data();
    }
    std::unordered_set<int64_t> batch;
    batch.reserve(n);
    for (int64_t i = 0; i < n; ++i) {
      ECOM_CHECK_ARG(ids[i] >= 0, "ids must be >= 0 (-1 pads search results), got ", ids[i], " at position ", i);
      ECOM_CHECK_ARG(batch.insert(ids[i]).second, "id ", ids[i], " appears twice in this batch");
      if (id_map_.count(ids[i]))
        throw ValueError(detail::concat("id ", ids[i],
                                        live_slot(ids[i]) >= 0
                                            ? " is already in the index (delete it first to replace its vector)"
                                            : " is being added by another add() call"));
    }
    const int64_t fresh = std::max<int64_t>(0, n - static_cast<int64_t>(free_slots_.size()));
    ECOM_CHECK_ARG(slots_used_ + fresh < (int64_t{1} << 32) - 1, "the index cannot hold more than 2^32 - 2 vectors");
    if (slots_used_ + fresh > capacity_) {
      // Grow first, then reserve (checking again: other adds may run meanwhile), so that no
      // reserved slot lies past the storage: a filtered search, ids() or get_vectors() reaches
      // reserved slots through id_map_ or slots_used_ and would read past it.
      const int64_t want = slots_used_ + fresh;
      lock.unlock();
      shared.unlock();
      std::unique_lock<std::shared_mutex> exclusive(global_);
      grow(want);
      continue;
    }
    for (int64_t i = 0; i < n; ++i) {
      uint32_t slot;
      if (!free_slots_.empty()) {
        slot = free_slots_.back();
        free_slots_.pop_back();
      } else {
        slot = static_cast<uint32_t>(slots_used_++);
      }
      slots[i] = slot;
      id_map_.emplace(ids[i], slot);
      next_auto_id_ = std::max(next_auto_id_, ids[i] + 1);
    }
    ++adds_in_flight_;  // its slots are reserved: nothing may renumber slots until it ends
    break;
  }
  struct InFlight {  // ends this add's reservation however add() leaves
    HnswIndex& ix;
    bool done = false;
    void end() {
      if (done) return;
      std::lock_guard<std::mutex> lock(ix.ids_mutex_);
      --ix.adds_in_flight_;
      done = true;
    }
    ~InFlight() { end(); }
  } in_flight{*this};
  if (assigned) std::copy(ids, ids + n, assigned);
  auto insert_range = [&](int64_t b, int64_t e) {
    std::unique_ptr<Scratch> s = acquire_scratch();
    for (int64_t i = b; i < e; ++i) {
      std::shared_lock<std::shared_mutex> shared(global_);
      prepare_query(x + i * p_.dim, s->query.data());
      insert_slot(slots[i], s->query.data(), ids[i], *s);
      live_.fetch_add(1, std::memory_order_relaxed);
    }
    release_scratch(std::move(s));
  };
  int64_t first = 0;
  if (entry_.load(std::memory_order_acquire) == kNoEntry) {  // the first node alone: it becomes the entry
    insert_range(0, 1);
    first = 1;
  }
  parallel_for(first, n, 16, insert_range);
  in_flight.end();
  // A bulk load (this batch is at least half the index) is laid out for locality once, here.
  if (n >= kReorderMinRows && 2 * n >= size()) reorder_slots(/*wait=*/false);
}

// ---- search -------------------------------------------------------------------------------------

void HnswIndex::search_one(const DistCtx& d, int64_t k, int64_t ef, const std::vector<uint64_t>* allowed,
                           const std::vector<uint32_t>* exact_set, Scratch& s, int64_t* ids, float* dist,
                           int64_t* count) const {
  auto& top = s.top;
  if (exact_set) {
    top.clear();
    for (uint32_t slot : *exact_set) {
      if (state_ref(slot).load(std::memory_order_relaxed) != kLive) continue;
      const float dd = d(slot);
      if (static_cast<int64_t>(top.size()) < k) {
        top.emplace_back(dd, slot);
        std::push_heap(top.begin(), top.end());
      } else if (dd < top.front().first) {
        std::pop_heap(top.begin(), top.end());
        top.back() = {dd, slot};
        std::push_heap(top.begin(), top.end());
      }
    }
  } else {
    const uint64_t entry = entry_.load(std::memory_order_acquire);
    if (entry == kNoEntry) {
      top.clear();
    } else {
      uint32_t ep = entry_slot(entry);
      float ep_dist = d(ep);
      ep = greedy_descend(d, ep, ep_dist, entry_level(entry), 1);
      search_layer(d, ep, ep_dist, ef, 0, allowed, deleted_.load(std::memory_order_relaxed) > 0, s);
    }
  }
  std::sort(top.begin(), top.end());
  // A node deleted while this walk ran is dropped here too.
  int64_t found = 0;
  for (const DistSlot& r : top) {
    if (found == k) break;
    if (state_ref(r.second).load(std::memory_order_acquire) != kLive) continue;
    ids[found] = ext_id_[r.second];
    dist[found] = r.first;
    ++found;
  }
  for (int64_t j = found; j < k; ++j) {
    ids[j] = -1;
    dist[j] = kInf;
  }
  *count = found;
}

SearchStats HnswIndex::search(const float* q, int64_t nq, int64_t k, int64_t ef, const SearchFilter* filter,
                              int num_threads, int64_t* out_ids, float* out_dist, int64_t* out_count) const {
  ECOM_CHECK_ARG(k >= 1, "k must be >= 1, got ", k);
  ECOM_CHECK_ARG(ef >= 1, "ef must be >= 1, got ", ef);
  ECOM_CHECK_ARG(nq >= 0, "query count must be >= 0");
  ef = std::max(ef, k);
  SearchStats stats;
  const ThreadCountScope threads(num_threads);
  std::shared_lock<std::shared_mutex> shared(global_);

  std::vector<uint64_t> allowed;
  std::vector<uint32_t> exact_set;
  if (filter && (filter->n_ids >= 0 || filter->n_labels >= 0)) {
    ECOM_CHECK_ARG(filter->exact_threshold >= 0 && filter->exact_threshold <= 1,
                   "exact_threshold must be in [0, 1], got ", filter->exact_threshold);
    int64_t used;
    {
      std::lock_guard<std::mutex> lock(ids_mutex_);
      used = slots_used_;
      allowed.assign((used + 63) / 64, 0);
      if (filter->n_ids >= 0) {
        for (int64_t i = 0; i < filter->n_ids; ++i) {
          const auto it = id_map_.find(filter->ids[i]);
          if (it != id_map_.end()) allowed[it->second >> 6] |= uint64_t{1} << (it->second & 63);
        }
      }
    }
    if (filter->n_ids < 0) {
      for (int64_t slot = 0; slot < used; ++slot)
        if (state_ref(static_cast<uint32_t>(slot)).load(std::memory_order_relaxed) == kLive)
          allowed[slot >> 6] |= uint64_t{1} << (slot & 63);
    }
    if (filter->n_labels >= 0) {
      std::vector<int64_t> labels(filter->labels, filter->labels + filter->n_labels);
      std::sort(labels.begin(), labels.end());
      for (int64_t w = 0; w < static_cast<int64_t>(allowed.size()); ++w) {
        for (uint64_t bits = allowed[w]; bits; bits &= bits - 1) {
          const int64_t slot = w * 64 + __builtin_ctzll(bits);
          if (!std::binary_search(labels.begin(), labels.end(), label_[slot]))
            allowed[w] &= ~(uint64_t{1} << (slot & 63));
        }
      }
    }
    int64_t count = 0;
    for (uint64_t w : allowed) count += __builtin_popcountll(w);
    stats.allowed = count;
    const double live = static_cast<double>(size());
    stats.exact = count <= kExactMinCount || count <= filter->exact_threshold * live;
    if (stats.exact) {
      exact_set.reserve(count);
      for (int64_t w = 0; w < static_cast<int64_t>(allowed.size()); ++w)
        for (uint64_t bits = allowed[w]; bits; bits &= bits - 1)
          exact_set.push_back(static_cast<uint32_t>(w * 64 + __builtin_ctzll(bits)));
    }
  }
  const std::vector<uint64_t>* allowed_bits = stats.allowed >= 0 ? &allowed : nullptr;
  const std::vector<uint32_t>* exact = stats.exact ? &exact_set : nullptr;
  const DistanceKernels& kernels = distance_kernels();
  parallel_for(0, nq, 1, [&](int64_t b, int64_t e) {
    std::unique_ptr<Scratch> s = acquire_scratch();
    for (int64_t i = b; i < e; ++i) {
      try {
        prepare_query(q + i * p_.dim, s->query.data());
      } catch (const ValueError& err) {
        release_scratch(std::move(s));
        throw ValueError(detail::concat("queries[", i, "]: ", err.what()));
      }
      const DistCtx d(*this, kernels, s->query.data());
      search_one(d, k, ef, allowed_bits, exact, *s, out_ids + i * k, out_dist + i * k, out_count + i);
    }
    release_scratch(std::move(s));
  });
  return stats;
}

// ---- delete, labels, reads ----------------------------------------------------------------------

int64_t HnswIndex::live_slot(int64_t id) const {
  const auto it = id_map_.find(id);
  if (it == id_map_.end() || state_ref(it->second).load(std::memory_order_acquire) != kLive) return -1;
  return it->second;
}

int64_t HnswIndex::remove(const int64_t* ids, int64_t n, bool missing_ok) {
  check_writable();
  std::shared_lock<std::shared_mutex> shared(global_);
  std::lock_guard<std::mutex> lock(ids_mutex_);
  // An id whose add is still running counts as absent: marking it deleted now would be undone
  // when its insert publishes the slot.
  if (!missing_ok)
    for (int64_t i = 0; i < n; ++i)
      ECOM_CHECK_ARG(live_slot(ids[i]) >= 0, "id ", ids[i], " is not in the index (pass missing_ok=True to ignore)");
  int64_t removed = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t slot = live_slot(ids[i]);
    if (slot < 0) continue;
    state_ref(static_cast<uint32_t>(slot)).store(kDeleted, std::memory_order_release);
    id_map_.erase(ids[i]);
    ++removed;
  }
  live_.fetch_sub(removed, std::memory_order_relaxed);
  deleted_.fetch_add(removed, std::memory_order_relaxed);
  return removed;
}

// The readers and set_labels below see an id once its insert has published the slot (the same
// rule as search): before that its label would be overwritten by the insert and its row may be
// unwritten.
std::vector<uint32_t> HnswIndex::live_slots(const int64_t* ids, int64_t n) const {
  std::vector<uint32_t> slots(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t slot = live_slot(ids[i]);
    ECOM_CHECK_ARG(slot >= 0, "id ", ids[i], " is not in the index");
    slots[static_cast<size_t>(i)] = static_cast<uint32_t>(slot);
  }
  return slots;
}

void HnswIndex::set_labels(const int64_t* ids, const int64_t* labels, int64_t n) {
  check_writable();
  std::shared_lock<std::shared_mutex> shared(global_);
  std::lock_guard<std::mutex> lock(ids_mutex_);
  const std::vector<uint32_t> slots = live_slots(ids, n);  // all checked before any is written
  for (int64_t i = 0; i < n; ++i) label_[slots[static_cast<size_t>(i)]] = labels[i];
}

void HnswIndex::get_labels(const int64_t* ids, int64_t n, int64_t* out) const {
  std::shared_lock<std::shared_mutex> shared(global_);
  std::lock_guard<std::mutex> lock(ids_mutex_);
  const std::vector<uint32_t> slots = live_slots(ids, n);
  for (int64_t i = 0; i < n; ++i) out[i] = label_[slots[static_cast<size_t>(i)]];
}

bool HnswIndex::contains(int64_t id) const {
  std::shared_lock<std::shared_mutex> shared(global_);  // live_slot reads the storage, which grow() moves
  std::lock_guard<std::mutex> lock(ids_mutex_);
  return live_slot(id) >= 0;
}

void HnswIndex::get_vectors(const int64_t* ids, int64_t n, float* out) const {
  std::shared_lock<std::shared_mutex> shared(global_);
  std::lock_guard<std::mutex> lock(ids_mutex_);
  const std::vector<uint32_t> slots = live_slots(ids, n);
  for (int64_t i = 0; i < n; ++i) decode_row(slots[static_cast<size_t>(i)], out + i * p_.dim);
}

std::vector<int64_t> HnswIndex::ids() const {
  std::shared_lock<std::shared_mutex> shared(global_);
  std::lock_guard<std::mutex> lock(ids_mutex_);
  std::vector<int64_t> out;
  out.reserve(id_map_.size());
  for (int64_t slot = 0; slot < slots_used_; ++slot)
    if (state_ref(static_cast<uint32_t>(slot)).load(std::memory_order_acquire) == kLive) out.push_back(ext_id_[slot]);
  return out;
}

size_t HnswIndex::memory_bytes() const {
  std::shared_lock<std::shared_mutex> shared(global_);
  std::lock_guard<std::mutex> lock(ids_mutex_);
  size_t bytes = static_cast<size_t>(capacity_) * elem_bytes_;
  for (int64_t slot = 0; slot < slots_used_; ++slot)
    if (upper_[slot]) bytes += level_of(static_cast<uint32_t>(slot)) * upper_level_words_ * sizeof(uint32_t);
  bytes += upper_.capacity() * sizeof(upper_[0]) + (ext_id_.capacity() + label_.capacity()) * sizeof(int64_t);
  // unordered_map: one heap node (next pointer + key + value, padded) per id plus the bucket array
  bytes += id_map_.size() * 32 + id_map_.bucket_count() * sizeof(void*);
  bytes += free_slots_.capacity() * sizeof(uint32_t);
  return bytes;
}

// ---- compaction ---------------------------------------------------------------------------------

void HnswIndex::compact(int num_threads) {
  check_writable();
  std::unique_lock<std::shared_mutex> exclusive(global_);
  {  // slots reserved by a running add() must not move or be handed out again
    const std::unique_lock<std::mutex> no_adds = lock_without_adds(exclusive, /*wait=*/true);
  }
  const ThreadCountScope threads(num_threads);
  const int64_t used = slots_used_;
  std::vector<uint8_t> dead(used, 0);
  int64_t n_dead = 0;
  for (int64_t slot = 0; slot < used; ++slot) {
    dead[slot] = state_ref(static_cast<uint32_t>(slot)).load(std::memory_order_relaxed) == kDeleted;
    n_dead += dead[slot];
  }
  if (n_dead == 0) return;
  if (n_dead * 4 >= used) {  // heavy deletion: rebuilding is about as cheap and as good as fresh
    rebuild_live();
    return;
  }
  const uint64_t entry = entry_.load(std::memory_order_acquire);
  const int top_level = entry == kNoEntry ? -1 : entry_level(entry);

  for (int level = 0; level <= top_level; ++level) {
    std::vector<uint32_t> nodes;  // live nodes on this level whose list points at a dead node
    for (int64_t slot = 0; slot < used; ++slot) {
      const uint32_t s = static_cast<uint32_t>(slot);
      if (state_ref(s).load(std::memory_order_relaxed) != kLive || level_of(s) < level) continue;
      uint32_t* list = links_at(s, level);
      const int n = count_ref(list).load(std::memory_order_relaxed);
      for (int i = 0; i < n; ++i) {
        if (dead[link_ref(list, i).load(std::memory_order_relaxed)]) {
          nodes.push_back(s);
          break;
        }
      }
    }
    const int64_t cap = level == 0 ? M0_ : p_.M;
    std::vector<std::vector<DistSlot>> repaired(nodes.size());
    // Phase 1 reads the old lists only; phase 2 writes. No list changes while phase 1 runs.
    parallel_for(0, static_cast<int64_t>(nodes.size()), 16, [&](int64_t b, int64_t e) {
      std::unique_ptr<Scratch> s = acquire_scratch();
      std::vector<uint32_t> links(std::max<int64_t>(M0_, p_.M));
      const DistanceKernels& k = distance_kernels();
      for (int64_t i = b; i < e; ++i) {
        const uint32_t p = nodes[i];
        s->new_walk(static_cast<size_t>(capacity_));
        s->visit(p);
        std::vector<uint32_t> cands;
        auto& queue = s->dead_queue;
        queue.clear();
        auto take = [&](uint32_t x) {
          if (!s->visit(x)) return;
          if (dead[x]) queue.push_back(x);
          else cands.push_back(x);
        };
        int n = read_links(p, level, links.data());
        for (int j = 0; j < n; ++j) take(links[j]);
        // Walk through dead nodes (chains of them too), at most `cap` of them per node.
        for (size_t qi = 0; qi < queue.size() && static_cast<int64_t>(qi) < cap; ++qi) {
          n = read_links(queue[qi], level, links.data());
          for (int j = 0; j < n; ++j) take(links[j]);
        }
        decode_row(p, s->row.data());
        const DistCtx d(*this, k, s->row.data());
        std::vector<DistSlot>& out = repaired[i];
        out.reserve(cands.size());
        for (uint32_t c : cands) out.emplace_back(d(c), c);
        const size_t keep = static_cast<size_t>(std::max<int64_t>(p_.ef_construction, cap));
        if (out.size() > keep) {
          std::nth_element(out.begin(), out.begin() + keep, out.end());
          out.resize(keep);
        }
        // The heuristic alone leaves repaired nodes with fewer links than their neighbours' back
        // links would give them; top the list up with the nearest pruned candidates.
        std::vector<DistSlot> all = out;
        select_neighbors(out, cap, *s);
        std::sort(all.begin(), all.end());
        for (const DistSlot& c : all) {
          if (static_cast<int64_t>(out.size()) >= cap) break;
          if (std::find(out.begin(), out.end(), c) == out.end()) out.push_back(c);
        }
      }
      release_scratch(std::move(s));
    });
    for (size_t i = 0; i < nodes.size(); ++i) write_links(links_at(nodes[i], level), repaired[i].data(), repaired[i].size());
  }

  // Unlink the dead nodes and free their slots.
  int new_top = -1;
  uint32_t new_entry = 0;
  {
    std::lock_guard<std::mutex> lock(ids_mutex_);
    for (int64_t slot = 0; slot < used; ++slot) {
      const uint32_t s = static_cast<uint32_t>(slot);
      if (dead[slot]) {
        std::memset(elem(s), 0, vec_offset_);  // seq, count, level, state = free, links
        upper_[s].reset();
        ext_id_[s] = -1;
        label_[s] = -1;
        free_slots_.push_back(s);
      } else if (state_ref(s).load(std::memory_order_relaxed) == kLive && level_of(s) > new_top) {
        new_top = level_of(s);
        new_entry = s;
      }
    }
    // Hand out low slots first.
    std::sort(free_slots_.begin(), free_slots_.end(), std::greater<>());
  }
  if (entry != kNoEntry && dead[entry_slot(entry)]) {
    entry_.store(new_top < 0 ? kNoEntry : pack_entry(new_entry, new_top), std::memory_order_release);
  } else if (new_top < 0) {
    entry_.store(kNoEntry, std::memory_order_release);
  }
  deleted_.store(0, std::memory_order_relaxed);
}

// Re-inserts the live rows into an empty graph on slots 0..live-1 (ids and labels kept). Caller
// holds global_ exclusive. Rows come back decoded (bf16 / int8 re-encode to the same bytes).
void HnswIndex::rebuild_live() {
  const int64_t used = slots_used_;
  std::vector<uint32_t> keep;
  for (int64_t slot = 0; slot < used; ++slot)
    if (state_ref(static_cast<uint32_t>(slot)).load(std::memory_order_relaxed) == kLive) keep.push_back(static_cast<uint32_t>(slot));
  const int64_t n = static_cast<int64_t>(keep.size());
  std::vector<float> rows(static_cast<size_t>(n) * p_.dim);
  std::vector<int64_t> ids(n), labels(n);
  for (int64_t i = 0; i < n; ++i) {
    decode_row(keep[i], rows.data() + i * p_.dim);
    ids[i] = ext_id_[keep[i]];
    labels[i] = label_[keep[i]];
  }
  {
    std::lock_guard<std::mutex> lock(ids_mutex_);
    std::memset(level0_, 0, static_cast<size_t>(used) * elem_bytes_);
    for (int64_t slot = 0; slot < used; ++slot) {
      upper_[slot].reset();
      ext_id_[slot] = label_[slot] = -1;
    }
    id_map_.clear();
    for (int64_t i = 0; i < n; ++i) id_map_.emplace(ids[i], static_cast<uint32_t>(i));
    free_slots_.clear();
    slots_used_ = n;
  }
  entry_.store(kNoEntry, std::memory_order_release);
  live_.store(0, std::memory_order_relaxed);
  deleted_.store(0, std::memory_order_relaxed);
  if (n == 0) return;
  // Row i keeps slot i (the old slot order, so a reorder()'s locality survives), but the rows go
  // in in a seeded shuffled order: after a reorder() the slot order is breadth-first, cluster by
  // cluster, and inserting in that order could build a worse graph. Measured on 24k clustered
  // 8-d rows, M = 8, ef_construction = 40, half deleted (the concurrent-adds test's graph in
  // tests/python/test_hnsw.py): k=1 recall of every live row at ef = 64, min over 30-40 runs,
  // 0.9949 in slot order against 0.9989 shuffled; test_rebuild_after_reorder_keeps_recall (20k
  // rows, M = 6, single-threaded) has 0.9986 against 0.9996. On 100k x 32-d rows, M = 16 no
  // difference beyond noise, and the rebuild takes ~25% longer shuffled (its inserts lose
  // locality): the price of a graph that does not depend on the layout.
  std::vector<uint32_t> insert_order(static_cast<size_t>(n));
  std::iota(insert_order.begin(), insert_order.end(), 0u);
  for (int64_t i = n - 1; i > 0; --i)  // Fisher-Yates over splitmix64 draws
    std::swap(insert_order[i], insert_order[mix64(p_.seed ^ mix64(~static_cast<uint64_t>(i))) % (i + 1)]);
  auto insert_range = [&](int64_t b, int64_t e) {
    std::unique_ptr<Scratch> s = acquire_scratch();
    for (int64_t j = b; j < e; ++j) {
      const uint32_t i = insert_order[j];
      const float* row = rows.data() + static_cast<size_t>(i) * p_.dim;
      std::copy(row, row + p_.dim, s->query.data());
      insert_slot(i, s->query.data(), ids[i], *s);
      label_[i] = labels[i];
      live_.fetch_add(1, std::memory_order_relaxed);
    }
    release_scratch(std::move(s));
  };
  insert_range(0, 1);  // the first row alone: it becomes the entry point
  parallel_for(1, n, 16, insert_range);
}

// ---- memory locality ----------------------------------------------------------------------------

// Breadth-first order of the level-0 graph from the entry point (then from any slot not reached),
// free slots last; returns new position -> old slot.
std::vector<uint32_t> HnswIndex::locality_order() const {
  const int64_t used = slots_used_;
  constexpr uint32_t kUnset = ~uint32_t{0};
  std::vector<uint32_t> order, placed(static_cast<size_t>(used), kUnset);
  order.reserve(static_cast<size_t>(used));
  auto place = [&](uint32_t slot) {
    if (placed[slot] != kUnset) return;
    placed[slot] = static_cast<uint32_t>(order.size());
    order.push_back(slot);
  };
  const uint64_t entry = entry_.load(std::memory_order_relaxed);
  if (entry != kNoEntry) place(entry_slot(entry));
  size_t head = 0;
  for (int64_t start = 0;; ++start) {
    for (; head < order.size(); ++head) {
      uint32_t* list = links_at(order[head], 0);
      const int n = std::min<int>(count_ref(list).load(std::memory_order_relaxed), static_cast<int>(M0_));
      for (int i = 0; i < n; ++i) place(link_ref(list, i).load(std::memory_order_relaxed));
    }
    while (start < used && (placed[start] != kUnset ||
                            state_ref(static_cast<uint32_t>(start)).load(std::memory_order_relaxed) == kFree))
      ++start;
    if (start >= used) break;
    place(static_cast<uint32_t>(start));
  }
  for (int64_t slot = 0; slot < used; ++slot) place(static_cast<uint32_t>(slot));  // free slots
  return order;
}

void HnswIndex::reorder() {
  check_writable();
  reorder_slots(/*wait=*/true);
}

std::unique_lock<std::mutex> HnswIndex::lock_without_adds(std::unique_lock<std::shared_mutex>& exclusive,
                                                          bool wait) const {
  for (;;) {
    std::unique_lock<std::mutex> ids_lock(ids_mutex_);
    if (adds_in_flight_ == 0 || !wait) return ids_lock;
    ids_lock.unlock();
    exclusive.unlock();  // let the running add() calls finish their rows
    std::this_thread::yield();
    exclusive.lock();
  }
}

void HnswIndex::reorder_slots(bool wait) {
  std::unique_lock<std::shared_mutex> exclusive(global_);
  const std::unique_lock<std::mutex> lock = lock_without_adds(exclusive, wait);
  if (adds_in_flight_ > 0) return;  // only when !wait: skipping is harmless, it is an optimisation
  const int64_t used = slots_used_;
  if (used < 2) return;
  const std::vector<uint32_t> order = locality_order();
  std::vector<uint32_t> new_of(static_cast<size_t>(used));
  for (size_t i = 0; i < order.size(); ++i) new_of[order[i]] = static_cast<uint32_t>(i);
  auto remap_list = [&](uint32_t* list, int cap) {
    const int n = std::min<int>(count_ref(list).load(std::memory_order_relaxed), cap);
    for (int i = 0; i < n; ++i) list[2 + i] = new_of[list[2 + i]];  // global_ held exclusively
  };

  // Links first (in place: they name slots, wherever their list lives), then the rows move.
  for (int64_t slot = 0; slot < used; ++slot) {
    const uint32_t sl = static_cast<uint32_t>(slot);
    remap_list(links_at(sl, 0), static_cast<int>(M0_));
    if (upper_[sl])
      for (int l = 1; l <= level_of(sl); ++l) remap_list(links_at(sl, l), static_cast<int>(p_.M));
  }
  // Level 0 is permuted in place, cycle by cycle (new row i = old row order[i]), so a graph of
  // any size needs one spare element, not a second copy of itself.
  std::vector<std::byte> spare(elem_bytes_);
  std::vector<uint8_t> moved(static_cast<size_t>(used), 0);
  for (int64_t start = 0; start < used; ++start) {
    if (moved[start] || order[start] == start) continue;
    std::memcpy(spare.data(), elem(static_cast<uint32_t>(start)), elem_bytes_);
    int64_t j = start;
    for (;;) {
      moved[j] = 1;
      const uint32_t src = order[j];
      if (src == start) {
        std::memcpy(elem(static_cast<uint32_t>(j)), spare.data(), elem_bytes_);
        break;
      }
      std::memcpy(elem(static_cast<uint32_t>(j)), elem(src), elem_bytes_);
      j = src;
    }
  }
  std::vector<std::unique_ptr<uint32_t[]>> upper(static_cast<size_t>(capacity_));
  std::vector<int64_t> ext_id(static_cast<size_t>(capacity_), -1), label(static_cast<size_t>(capacity_), -1);
  for (int64_t i = 0; i < used; ++i) {
    upper[i] = std::move(upper_[order[i]]);
    ext_id[i] = ext_id_[order[i]];
    label[i] = label_[order[i]];
  }
  upper_ = std::move(upper);
  ext_id_ = std::move(ext_id);
  label_ = std::move(label);
  for (auto& kv : id_map_) kv.second = new_of[kv.second];
  for (uint32_t& slot : free_slots_) slot = new_of[slot];
  const uint64_t entry = entry_.load(std::memory_order_relaxed);
  if (entry != kNoEntry)
    entry_.store((static_cast<uint64_t>(entry_level(entry)) << 32) | new_of[entry_slot(entry)], std::memory_order_release);
}

// ---- checks -------------------------------------------------------------------------------------

std::string HnswIndex::graph_error() const {
  const uint64_t entry = entry_.load(std::memory_order_acquire);
  const int top = entry == kNoEntry ? -1 : entry_level(entry);
  int64_t live = 0, deleted = 0;
  for (int64_t slot = 0; slot < slots_used_; ++slot) {
    const uint32_t s = static_cast<uint32_t>(slot);
    const uint8_t st = state_ref(s).load(std::memory_order_relaxed);
    if (st > kDeleted) return detail::concat("slot ", slot, " has an invalid state ", int(st));
    if (st == kFree) continue;
    live += st == kLive;
    deleted += st == kDeleted;
    const int lv = level_of(s);
    if (lv > top) return detail::concat("slot ", slot, " has level ", lv, " above the top level ", top);
    if (lv > 0 && !upper_[s]) return detail::concat("slot ", slot, " lacks its upper-level links");
    for (int l = 0; l <= lv; ++l) {
      uint32_t* list = links_at(s, l);
      const int n = count_ref(list).load(std::memory_order_relaxed);
      if (n > (l == 0 ? M0_ : p_.M)) return detail::concat("slot ", slot, " has ", n, " links on level ", l);
      for (int i = 0; i < n; ++i) {
        const uint32_t x = link_ref(list, i).load(std::memory_order_relaxed);
        if (x >= slots_used_ || state_ref(x).load(std::memory_order_relaxed) == kFree || level_of(x) < l)
          return detail::concat("slot ", slot, " links to invalid slot ", x, " on level ", l);
      }
    }
  }
  if (entry != kNoEntry) {
    const uint32_t e = entry_slot(entry);
    if (e >= slots_used_ || state_ref(e).load(std::memory_order_relaxed) == kFree || level_of(e) != top)
      return detail::concat("invalid entry point ", e);
  } else if (live + deleted > 0) {
    return "nodes present but no entry point";
  }
  if (live != size()) return detail::concat("live count ", size(), " does not match the slots (", live, ")");
  if (deleted != deleted_count())
    return detail::concat("deleted count ", deleted_count(), " does not match the slots (", deleted, ")");
  return {};
}

void HnswIndex::check_graph() const {
  std::shared_lock<std::shared_mutex> shared(global_);
  std::lock_guard<std::mutex> lock(ids_mutex_);
  const std::string err = graph_error();
  ECOM_CHECK(err.empty(), err);
}

}  // namespace ecomllm::index
