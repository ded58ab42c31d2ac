// HNSW index files: a self-describing little-endian format, written atomically, read or mapped.
//
//   offset 0    FileHeader (160 bytes): magic "ECOMHNSW", version, metric, dtype, dim, M,
//               ef_construction, seed, slot / live / deleted counts, entry point, next auto id,
//               level counter, element size, upper-link word count, payload size, payload CRC-32,
//               header CRC-32 (of the header with that field zero)
//   offset 192  level 0: slots x element (layout in hnsw.h)     -- the part mmap=True maps
//               (version 2: vectors start on a 64-byte line; version-1 files are refused)
//   then        ext ids: slots x int64; labels: slots x int64;
//               upper links: for each slot with level > 0, level x (2 + M) uint32
// Sections start at multiples of 64 bytes (zero padding, covered by the payload CRC).
//
// Loading checks, in order: size >= header, magic, version, header CRC, header fields (enums,
// ranges, element size against the layout those parameters give), file size against the section
// sizes, payload CRC, then the graph itself (states, levels, link bounds, ids unique and >= 0,
// counts), so a file that passes the CRC by construction still cannot make search misbehave.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "base/error.h"
#include "index/hnsw.h"

namespace ecomllm::index {

static_assert(std::endian::native == std::endian::little, "index files are little-endian");

namespace {

constexpr char kMagic[8] = {'E', 'C', 'O', 'M', 'H', 'N', 'S', 'W'};
constexpr uint32_t kVersion = 2;  // 2: level-0 vectors start on a 64-byte line

struct FileHeader {
  char magic[8];
  uint32_t version;
  uint32_t header_bytes;
  uint32_t metric;
  uint32_t storage;
  uint64_t dim;
  uint64_t M;
  uint64_t ef_construction;
  uint64_t seed;
  uint64_t slots;
  uint64_t live;
  uint64_t deleted;
  uint64_t entry;
  int64_t next_auto_id;
  uint64_t level_counter;
  uint64_t elem_bytes;
  uint64_t upper_words;
  uint64_t payload_bytes;
  uint32_t payload_crc;
  uint32_t header_crc;
  uint8_t reserved[24];  // zero; room for later fields
};
static_assert(sizeof(FileHeader) == 160, "the file header is 160 bytes");

// CRC-32 tables for slice-by-8 (reflected polynomial 0xEDB88320).
struct CrcTables {
  uint32_t t[8][256];
  CrcTables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
  }
};
const CrcTables& crc_tables() {
  static const CrcTables tables;
  return tables;
}

constexpr size_t align64(size_t x) { return (x + 63) / 64 * 64; }

struct Sections {
  size_t level0, ids, labels, upper, end;
};
Sections section_offsets(uint64_t slots, uint64_t elem_bytes, uint64_t upper_words) {
  Sections s;
  s.level0 = align64(sizeof(FileHeader));
  s.ids = align64(s.level0 + slots * elem_bytes);
  s.labels = align64(s.ids + slots * sizeof(int64_t));
  s.upper = align64(s.labels + slots * sizeof(int64_t));
  s.end = s.upper + upper_words * sizeof(uint32_t);
  return s;
}

uint32_t header_crc(FileHeader h) {
  h.header_crc = 0;
  return crc32(&h, sizeof(h));
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) throw RuntimeError(detail::concat("writing ", path, " failed: ", std::strerror(errno)));
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void read_all(int fd, void* data, size_t n, size_t offset, const std::string& path) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) throw ValueError(detail::concat("index file ", path, " is truncated"));
    p += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<size_t>(r);
  }
}

// Streams sections into a file while keeping the payload CRC and the 64-byte section alignment.
class PayloadWriter {
 public:
  PayloadWriter(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  void put(const void* data, size_t n) {
    write_all(fd_, data, n, path_);
    crc_ = crc32(data, n, crc_);
    pos_ += n;
  }
  void pad_to(size_t offset) {
    static const char zeros[64] = {};
    while (pos_ < offset) put(zeros, std::min<size_t>(64, offset - pos_));
  }
  uint32_t crc() const { return crc_; }
  size_t pos() const { return pos_; }

 private:
  int fd_;
  std::string path_;
  uint32_t crc_ = 0;
  size_t pos_ = sizeof(FileHeader);
};

}  // namespace

uint32_t crc32(const void* data, size_t n, uint32_t crc) {
  const auto& t = crc_tables().t;
  const uint8_t* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  while (n >= 8) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= crc;
    crc = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^ t[3][hi & 0xff] ^
          t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) crc = t[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return ~crc;
}

void unmap_file(void* base, size_t bytes) { ::munmap(base, bytes); }

void HnswIndex::save(const std::string& path) const {
  // Exclusive: no insert or delete may change the graph while it is written.
  std::unique_lock<std::shared_mutex> exclusive(global_);
  std::lock_guard<std::mutex> lock(ids_mutex_);
  const uint64_t slots = static_cast<uint64_t>(slots_used_);
  uint64_t upper_words = 0;
  for (uint64_t s = 0; s < slots; ++s)
    if (upper_[s]) upper_words += level_of(static_cast<uint32_t>(s)) * upper_level_words_;
  const Sections sec = section_offsets(slots, elem_bytes_, upper_words);

  const std::filesystem::path target(path);
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) throw RuntimeError(detail::concat("cannot create ", tmp, ": ", std::strerror(errno)));
  try {
    FileHeader h{};
    write_all(fd.get(), &h, sizeof(h), tmp);  // placeholder, rewritten once the CRC is known
    PayloadWriter w(fd.get(), tmp);
    w.pad_to(sec.level0);
    w.put(level0_, slots * elem_bytes_);
    w.pad_to(sec.ids);
    w.put(ext_id_.data(), slots * sizeof(int64_t));
    w.pad_to(sec.labels);
    w.put(label_.data(), slots * sizeof(int64_t));
    w.pad_to(sec.upper);
    for (uint64_t s = 0; s < slots; ++s)
      if (upper_[s]) w.put(upper_[s].get(), level_of(static_cast<uint32_t>(s)) * upper_level_words_ * sizeof(uint32_t));
    ECOM_CHECK(w.pos() == sec.end);

    std::memcpy(h.magic, kMagic, sizeof(kMagic));
    h.version = kVersion;
    h.header_bytes = sizeof(FileHeader);
    h.metric = static_cast<uint32_t>(p_.metric);
    h.storage = static_cast<uint32_t>(p_.storage);
    h.dim = static_cast<uint64_t>(p_.dim);
    h.M = static_cast<uint64_t>(p_.M);
    h.ef_construction = static_cast<uint64_t>(p_.ef_construction);
    h.seed = p_.seed;
    h.slots = slots;
    h.live = static_cast<uint64_t>(size());
    h.deleted = static_cast<uint64_t>(deleted_count());
    h.entry = entry_.load(std::memory_order_acquire);
    h.next_auto_id = next_auto_id_;
    h.level_counter = level_counter_.load(std::memory_order_relaxed);
    h.elem_bytes = elem_bytes_;
    h.upper_words = upper_words;
    h.payload_bytes = sec.end - sizeof(FileHeader);
    h.payload_crc = w.crc();
    h.header_crc = header_crc(h);
    if (::pwrite(fd.get(), &h, sizeof(h), 0) != static_cast<ssize_t>(sizeof(h)))
      throw RuntimeError(detail::concat("writing ", tmp, " failed: ", std::strerror(errno)));
    if (::fsync(fd.get()) != 0) throw RuntimeError(detail::concat("fsync of ", tmp, " failed: ", std::strerror(errno)));
    if (::close(fd.release()) != 0) throw RuntimeError(detail::concat("closing ", tmp, " failed: ", std::strerror(errno)));
    if (::rename(tmp.c_str(), path.c_str()) != 0)
      throw RuntimeError(detail::concat("renaming ", tmp, " to ", path, " failed: ", std::strerror(errno)));
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename itself durable.
  const std::string dir = target.has_parent_path() ? target.parent_path().string() : std::string(".");
  Fd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dfd.get() >= 0) ::fsync(dfd.get());
}

std::unique_ptr<HnswIndex> HnswIndex::load(const std::string& path, bool mmap) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT) throw ValueError(detail::concat("index file ", path, " does not exist"));
    throw RuntimeError(detail::concat("cannot open ", path, ": ", std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw RuntimeError(detail::concat("cannot stat ", path, ": ", std::strerror(errno)));
  const size_t file_bytes = static_cast<size_t>(st.st_size);
  auto bad = [&](const std::string& why) { return ValueError(detail::concat("index file ", path, ": ", why)); };

  FileHeader h{};
  if (file_bytes < sizeof(h)) throw bad(detail::concat("truncated (", file_bytes, " bytes, the header alone is ", sizeof(FileHeader), ")"));
  read_all(fd.get(), &h, sizeof(h), 0, path);
  if (std::memcmp(h.magic, kMagic, sizeof(kMagic)) != 0) throw bad("not an ecomllm HNSW index (bad magic number)");
  if (h.version != kVersion) throw bad(detail::concat("unsupported format version ", h.version, " (this build reads ", kVersion, ")"));
  if (h.header_crc != header_crc(h)) throw bad("header checksum mismatch (the file is corrupted)");
  if (h.header_bytes != sizeof(FileHeader) || h.metric > 2 || h.storage > 2 || h.dim < 1 || h.dim > (1u << 20) ||
      h.M < 2 || h.M > 512 || h.ef_construction < 1 || h.ef_construction > 100000 || h.slots >= (uint64_t{1} << 32) - 1 ||
      h.live > h.slots || h.deleted > h.slots - h.live || h.upper_words > h.slots * 32 * (2 + h.M))
    throw bad("header fields out of range (the file is corrupted)");

  HnswParams p;
  p.dim = static_cast<int64_t>(h.dim);
  p.metric = static_cast<Metric>(h.metric);
  p.storage = static_cast<Storage>(h.storage);
  p.M = static_cast<int64_t>(h.M);
  p.ef_construction = static_cast<int64_t>(h.ef_construction);
  p.seed = h.seed;
  auto ix = std::make_unique<HnswIndex>(p, 0);
  if (ix->elem_bytes_ != h.elem_bytes) throw bad("element size does not match the parameters (the file is corrupted)");
  const Sections sec = section_offsets(h.slots, h.elem_bytes, h.upper_words);
  if (file_bytes < sec.end) throw bad(detail::concat("truncated (", file_bytes, " bytes, expected ", sec.end, ")"));
  if (file_bytes > sec.end || h.payload_bytes != sec.end - sizeof(FileHeader))
    throw bad(detail::concat("size mismatch (", file_bytes, " bytes, expected ", sec.end, ")"));

  const size_t slots = static_cast<size_t>(h.slots);
  const size_t level0_bytes = slots * h.elem_bytes;
  // Payload: level 0 mapped or read; the small sections are always read.
  std::vector<char> rest(sec.end - sec.ids);
  if (mmap && slots > 0) {
    void* base = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (base == MAP_FAILED) throw RuntimeError(detail::concat("mmap of ", path, " failed: ", std::strerror(errno)));
    ix->map_base_ = base;
    ix->map_bytes_ = file_bytes;
    ix->level0_ = static_cast<std::byte*>(base) + sec.level0;
    ix->capacity_ = static_cast<int64_t>(slots);
    ix->upper_.resize(slots);
    ix->ext_id_.resize(slots);
    ix->label_.resize(slots);
    ix->read_only_ = true;
  } else if (slots > 0) {
    ix->grow(static_cast<int64_t>(slots));
    read_all(fd.get(), ix->level0_, level0_bytes, sec.level0, path);
  }
  if (!rest.empty()) read_all(fd.get(), rest.data(), rest.size(), sec.ids, path);
  static const char zeros[64] = {};  // the padding before level 0 and after it
  uint32_t crc = crc32(zeros, sec.level0 - sizeof(FileHeader));
  crc = crc32(ix->level0_, level0_bytes, crc);
  crc = crc32(zeros, sec.ids - (sec.level0 + level0_bytes), crc);
  crc = crc32(rest.data(), rest.size(), crc);
  if (crc != h.payload_crc) throw bad("payload checksum mismatch (the file is corrupted)");
  if (mmap) ix->read_only_ = true;

  std::memcpy(ix->ext_id_.data(), rest.data(), slots * sizeof(int64_t));
  std::memcpy(ix->label_.data(), rest.data() + (sec.labels - sec.ids), slots * sizeof(int64_t));
  const uint32_t* upper = reinterpret_cast<const uint32_t*>(rest.data() + (sec.upper - sec.ids));
  size_t used_words = 0;
  for (size_t s = 0; s < slots; ++s) {
    const uint8_t state = *reinterpret_cast<const uint8_t*>(ix->elem(static_cast<uint32_t>(s)) + 7);
    const int level = ix->level_of(static_cast<uint32_t>(s));
    if (state == 0) {
      ix->free_slots_.push_back(static_cast<uint32_t>(s));
      continue;
    }
    if (level > 31) throw bad(detail::concat("slot ", s, " has level ", level, " (the file is corrupted)"));
    if (level > 0) {
      const size_t words = level * ix->upper_level_words_;
      if (used_words + words > h.upper_words) throw bad("upper links section is too short (the file is corrupted)");
      ix->upper_[s].reset(new uint32_t[words]);
      std::memcpy(ix->upper_[s].get(), upper + used_words, words * sizeof(uint32_t));
      used_words += words;
    }
    if (state == 1) {
      const int64_t id = ix->ext_id_[s];
      if (id < 0 || !ix->id_map_.emplace(id, static_cast<uint32_t>(s)).second)
        throw bad(detail::concat("invalid or duplicate id ", id, " (the file is corrupted)"));
      ix->next_auto_id_ = std::max(ix->next_auto_id_, id + 1);
    }
  }
  if (used_words != h.upper_words) throw bad("upper links section size mismatch (the file is corrupted)");
  std::sort(ix->free_slots_.begin(), ix->free_slots_.end(), std::greater<>());
  // Every link list must be unlocked (even seq), or readers would wait forever.
  for (size_t s = 0; s < slots; ++s) {
    const uint32_t slot = static_cast<uint32_t>(s);
    if (*reinterpret_cast<const uint8_t*>(ix->elem(slot) + 7) == 0) continue;
    for (int l = 0; l <= ix->level_of(slot); ++l)
      if (ix->links_at(slot, l)[0] & 1u) throw bad(detail::concat("slot ", s, " is locked (the file is corrupted)"));
  }
  ix->slots_used_ = static_cast<int64_t>(slots);
  ix->next_auto_id_ = std::max(ix->next_auto_id_, h.next_auto_id);
  ix->live_.store(static_cast<int64_t>(h.live));
  ix->deleted_.store(static_cast<int64_t>(h.deleted));
  ix->level_counter_.store(h.level_counter);
  ix->entry_.store(h.entry);
  const std::string err = ix->graph_error();
  if (!err.empty()) throw bad(err + " (the file is corrupted)");
  return ix;
}

}  // namespace ecomllm::index
