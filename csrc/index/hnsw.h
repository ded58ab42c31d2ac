// HNSW approximate nearest-neighbour index (Malkov & Yashunin), written for this project.
//
// Vectors live in "slots". Level 0 of the graph is one contiguous block, one element per slot:
//   [u32 seq][u16 count][u8 level][u8 state][u32 links[M0]][aux (int8 only: f32 scale, f32 |x|^2)]
//   [zero padding to a 64-byte boundary][vector: dim x f32 | bf16 | int8][padding to 64 bytes]
// so expanding a node reads its links and its neighbours' vectors from one place each, and a
// vector occupies exactly ceil(bytes / 64) cache lines (prefetched whole). Upper
// levels (about 1 node in M) have their own block per node: per level [u32 seq][u32 count]
// [u32 links[M]]. M0 = 2 * M. External ids (int64) map to slots through a hash map; each slot also
// carries an int64 metadata label (-1 when unset) for label filters.
//
// Storage: F32; BF16 (round to nearest even); I8 = symmetric scalar quantisation PER VECTOR:
// code = round(x / s) with s = max|x| / 127 (works for incremental adds, no training pass). The
// query stays fp32 (asymmetric distance). Cosine rows are normalised before quantisation.
//
// Concurrency (search is safe while adds, deletes and label updates run):
//  - `global_` (shared_mutex): search, add (per inserted row), delete, labels and reads take it
//    shared; growing the storage, compact() and save() take it exclusive.
//  - every link list (each level of each node) is a seqlock: its `seq` word is odd while a writer
//    holds it. Writers take it with a CAS (it doubles as the per-node spin lock); readers copy the
//    list and retry if `seq` changed, so readers never write shared cache lines.
//  - `state` bytes (free / live / deleted) are atomics; a slot is published live after its vector
//    and id are written, before it is linked in.
//  - the entry point (slot, level) is one atomic word; an insert that raises the top level holds
//    `entry_mutex_` for its whole duration (as hnswlib does).
//  - `ids_mutex_` guards the id map, the free-slot list and the slot counter.
//
// Deletion marks the slot deleted (never returned; still traversed). compact() then either
//  - (fewer than 1/4 of the used slots deleted) repairs every link list that points at a deleted
//    node: candidates are the live neighbours plus the live nodes reached through deleted
//    neighbours; the selection heuristic picks from them and the nearest pruned candidates top the
//    list up to capacity. Deleted nodes are unlinked and their slots go on the free list, from
//    which later adds take slots first; or
//  - (heavier deletion) rebuilds the links over the live rows, which move to slots 0..live-1:
//    the result is a fresh build over the same rows.
//
// Filtered search: a SearchFilter (allowed ids and/or "label in set") becomes a bitset over slots
// in C++. When the allowed live count is at most exact_threshold * live (or below kExactMinCount)
// the search is exact brute force over the allowed set; otherwise the graph is walked with the
// filter gating which nodes enter the result set.
//
// A search never fails because fewer than k results exist: it reports how many it found.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/buffer.h"
#include "index/distance.h"

namespace ecomllm::index {

enum class Metric : uint32_t { L2 = 0, IP = 1, Cosine = 2 };
enum class Storage : uint32_t { F32 = 0, BF16 = 1, I8 = 2 };

Metric parse_metric(const std::string& name);    // "l2" | "ip" | "cosine", else ValueError
Storage parse_storage(const std::string& name);  // "f32" | "bf16" | "int8", else ValueError
const char* metric_name(Metric m);
const char* storage_name(Storage s);

struct HnswParams {
  int64_t dim = 0;
  Metric metric = Metric::L2;
  Storage storage = Storage::F32;
  int64_t M = 16;                 // links per node on levels >= 1 (2 * M on level 0), in [2, 512]
  int64_t ef_construction = 200;  // candidate list size while inserting
  uint64_t seed = 100;            // level generator seed
};

// Allowed set of one search call. Either part may be absent; both present means AND.
struct SearchFilter {
  const int64_t* ids = nullptr;     // allowed external ids (unknown ids are ignored)
  int64_t n_ids = -1;               // -1: no id filter
  const int64_t* labels = nullptr;  // allowed metadata labels
  int64_t n_labels = -1;            // -1: no label filter
  double exact_threshold = 0.05;    // selectivity at or below which search is exact
};

struct SearchStats {
  bool exact = false;       // brute force over the allowed set was used
  int64_t allowed = -1;     // allowed live count (-1 without a filter)
};

class HnswIndex {
 public:
  static constexpr int64_t kExactMinCount = 1024;  // allowed sets this small are always scanned
  static constexpr int64_t kReorderMinRows = 10000;  // add() batches this large trigger reorder()

  explicit HnswIndex(const HnswParams& params, int64_t initial_capacity = 0);
  ~HnswIndex();
  HnswIndex(const HnswIndex&) = delete;
  HnswIndex& operator=(const HnswIndex&) = delete;

  // X [N, dim] rows with ids [N]. All rows must be finite (and non-zero for cosine); ids must be
  // >= 0, new (not live in the index) and distinct: otherwise ValueError and nothing is inserted.
  // ids == nullptr: consecutive ids from next_auto_id(), written to `assigned` [N] when given.
  // num_threads <= 0: all OpenMP threads.
  void add(const float* x, const int64_t* ids, int64_t n, int num_threads = 0, int64_t* assigned = nullptr);
  // Ids for n rows added without ids: one past the largest id ever added (or 0).
  int64_t next_auto_id() const;

  // Q [nq, dim] -> out_ids [nq, k] (-1 padded), out_dist [nq, k] (+inf padded), out_count [nq],
  // best first. ef is raised to k when smaller. filter may be null.
  SearchStats search(const float* q, int64_t nq, int64_t k, int64_t ef, const SearchFilter* filter,
                     int num_threads, int64_t* out_ids, float* out_dist, int64_t* out_count) const;

  // Marks ids deleted; unknown (or already deleted) ids are a ValueError unless missing_ok.
  // Returns how many were deleted.
  int64_t remove(const int64_t* ids, int64_t n, bool missing_ok);
  // Repairs (or rebuilds) the links around deleted nodes and frees their slots (file comment).
  void compact(int num_threads = 0);
  // Renumbers slots in breadth-first order of the level-0 graph so that nodes walked together lie
  // together in memory (fewer cache misses once the graph outgrows the cache). Ids, labels and
  // the graph itself are unchanged; searches wait while it runs.
  void reorder();

  // Ids count as present once their add() has inserted them (as for search and remove), not while
  // the add() that reserved them is still running; absent ids are a ValueError.
  void set_labels(const int64_t* ids, const int64_t* labels, int64_t n);
  void get_labels(const int64_t* ids, int64_t n, int64_t* out) const;
  bool contains(int64_t id) const;
  // Decoded stored rows (normalised for cosine) of live ids into out [n, dim]; ValueError if absent.
  void get_vectors(const int64_t* ids, int64_t n, float* out) const;
  std::vector<int64_t> ids() const;  // live ids in slot order

  int64_t size() const { return live_.load(std::memory_order_relaxed); }
  int64_t deleted_count() const { return deleted_.load(std::memory_order_relaxed); }
  int64_t capacity() const { return capacity_; }
  int64_t slots_used() const;
  size_t memory_bytes() const;  // everything the index holds in RAM (or maps)
  bool read_only() const { return read_only_; }
  const HnswParams& params() const { return p_; }
  int64_t max_level() const;

  // Atomic write (temp file + fsync + rename). Format: see hnsw_io.cpp.
  void save(const std::string& path) const;
  // ValueError on a truncated, corrupted or foreign file. mmap: level 0 (the bulk: links +
  // vectors) is mapped copy-on-write instead of read; the index is then read-only.
  static std::unique_ptr<HnswIndex> load(const std::string& path, bool mmap);

  // Graph checks for tests: every link points at a used slot, counts within bounds.
  void check_graph() const;

 private:
  struct Scratch;
  struct DistCtx;
  struct Node;  // helpers over one slot's level-0 element

  // element layout
  std::byte* elem(uint32_t slot) const { return level0_ + static_cast<size_t>(slot) * elem_bytes_; }
  uint32_t* links_at(uint32_t slot, int level) const;  // points at [seq][count][links...]
  const std::byte* vec_at(uint32_t slot) const { return elem(slot) + vec_offset_; }
  std::atomic_ref<uint8_t> state_ref(uint32_t slot) const;
  int level_of(uint32_t slot) const;

  // graph operations (caller holds global_ shared or exclusive)
  void insert_slot(uint32_t slot, const float* row, int64_t id, Scratch& s);
  int read_links(uint32_t slot, int level, uint32_t* out) const;      // seqlock copy
  void lock_links(uint32_t* list) const;
  void unlock_links(uint32_t* list) const;
  uint32_t greedy_descend(const DistCtx& d, uint32_t ep, float& ep_dist, int from_level, int to_level) const;
  void search_layer(const DistCtx& d, uint32_t ep, float ep_dist, int64_t ef, int level,
                    const std::vector<uint64_t>* allowed, bool skip_dead, Scratch& s) const;
  void select_neighbors(std::vector<std::pair<float, uint32_t>>& cand, int64_t m, Scratch& s) const;
  void connect(uint32_t slot, int level, uint32_t nb, int64_t cap, Scratch& s);
  void set_own_links(uint32_t slot, int level, const std::vector<std::pair<float, uint32_t>>& chosen, int64_t cap,
                     Scratch& s);
  void encode_row(const float* row, std::byte* dst) const;  // vector (+ aux) of a slot
  void decode_row(uint32_t slot, float* out) const;
  void prepare_query(const float* q, float* out) const;  // copy (normalise for cosine), check finite
  void rebuild_live();  // compact() after heavy deletion
  std::vector<uint32_t> locality_order() const;  // reorder(): new position -> old slot
  // reorder() body; wait=false skips (instead of waiting) while an add() holds reserved slots.
  void reorder_slots(bool wait);
  // Slot of a live id, -1 when absent or its add() has not published it yet; caller holds global_
  // (shared: the slot state lives in the storage, which grow() reallocates) and ids_mutex_.
  int64_t live_slot(int64_t id) const;
  std::vector<uint32_t> live_slots(const int64_t* ids, int64_t n) const;  // ValueError for any absent id
  // Holding global_ exclusively, takes ids_mutex_ once no add() is between reserving its slots
  // and inserting them (releasing global_ meanwhile); wait=false returns at once.
  std::unique_lock<std::mutex> lock_without_adds(std::unique_lock<std::shared_mutex>& exclusive, bool wait) const;
  void check_writable() const;  // ValueError when opened with mmap=True
  void grow(int64_t min_capacity);                        // caller holds global_ exclusive
  void compute_layout();
  std::string graph_error() const;  // "" when the graph is consistent; caller holds the locks
  std::unique_ptr<Scratch> acquire_scratch() const;
  void release_scratch(std::unique_ptr<Scratch> s) const;
  void search_one(const DistCtx& d, int64_t k, int64_t ef, const std::vector<uint64_t>* allowed,
                  const std::vector<uint32_t>* exact_set, Scratch& s, int64_t* ids, float* dist,
                  int64_t* count) const;

  HnswParams p_;
  int64_t M0_ = 0;
  double level_mult_ = 0;
  size_t vec_bytes_ = 0, vec_offset_ = 0, aux_offset_ = 0, elem_bytes_ = 0, upper_level_words_ = 0;

  // storage (all sized capacity_)
  int64_t capacity_ = 0;
  AlignedBuffer level0_owned_;
  std::byte* level0_ = nullptr;  // level0_owned_ or the mapping
  void* map_base_ = nullptr;
  size_t map_bytes_ = 0;
  bool read_only_ = false;
  std::vector<std::unique_ptr<uint32_t[]>> upper_;  // per slot, null when level 0
  std::vector<int64_t> ext_id_;
  std::vector<int64_t> label_;

  // bookkeeping
  mutable std::shared_mutex global_;
  mutable std::mutex ids_mutex_;
  std::unordered_map<int64_t, uint32_t> id_map_;  // live ids only
  std::vector<uint32_t> free_slots_;
  int64_t slots_used_ = 0;  // high-water mark of slots ever handed out
  int64_t adds_in_flight_ = 0;  // add() calls between reserving slots and finishing (ids_mutex_)
  int64_t next_auto_id_ = 0;
  std::atomic<int64_t> live_{0}, deleted_{0};
  std::atomic<uint64_t> entry_{kNoEntry};  // (level << 32) | slot
  std::mutex entry_mutex_;
  std::atomic<uint64_t> level_counter_{0};
  mutable std::mutex scratch_mutex_;
  mutable std::vector<std::unique_ptr<Scratch>> scratch_pool_;

  static constexpr uint64_t kNoEntry = ~uint64_t{0};
  friend struct HnswFile;
};

void unmap_file(void* base, size_t bytes);  // hnsw_io.cpp

// CRC-32 (IEEE 802.3, as zlib.crc32), continuing from `crc` (0 to start).
uint32_t crc32(const void* data, size_t n, uint32_t crc = 0);

}  // namespace ecomllm::index
