// BM25 inverted index: tokeniser, index maintenance, scoring, persistence. Rules in bm25.h.
//
// File format v1 (little-endian; all sizes in bytes):
//   0  magic "ECMBM25\0" (8)         8  u32 format version (1)    12 u32 tokenizer version
//   16 f64 k1                        24 f64 b                     32 u64 live documents D
//   40 u64 terms T                   48 u64 (doc, term) pairs P   56 i64 next auto id
//   64 u64 total tokens              72 u64 payload bytes L       80 payload (L bytes):
//        T x [u32 byte length, UTF-8 bytes]                         (terms with df > 0)
//        D x [i64 id, u32 length, u32 n, n x (u32 term, u32 tf)]    (terms strictly ascending)
//   80 + L: u32 CRC-32 (zlib's polynomial) of every byte before it.
// Loading checks the size, magic, versions and checksum, then every count and index again
// (a forged file can carry a valid checksum), so a bad file is a ValueError, never a crash.
#include "index/bm25.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <unordered_set>

#include "base/error.h"
#include "base/parallel.h"
#include "index/hnsw.h"

namespace ecomllm::index {

static_assert(std::endian::native == std::endian::little, "the BM25 file format is written little-endian");

namespace {

// ---- UTF-8 --------------------------------------------------------------------------------------

// Decodes the code point at s[i] and advances i. Malformed input -> ValueError with the offset.
char32_t decode_utf8(std::string_view s, size_t& i) {
  const auto byte = [&](size_t j) { return static_cast<unsigned char>(s[j]); };
  const size_t start = i;
  const unsigned char c0 = byte(i);
  if (c0 < 0x80) {
    ++i;
    return c0;
  }
  int extra;
  char32_t cp, min_cp;
  if ((c0 & 0xE0) == 0xC0) {
    extra = 1, cp = c0 & 0x1F, min_cp = 0x80;
  } else if ((c0 & 0xF0) == 0xE0) {
    extra = 2, cp = c0 & 0x0F, min_cp = 0x800;
  } else if ((c0 & 0xF8) == 0xF0) {
    extra = 3, cp = c0 & 0x07, min_cp = 0x10000;
  } else {
    throw ValueError(detail::concat("text is not valid UTF-8: byte ", int(c0), " at offset ", start,
                                    " cannot start a character"));
  }
  ECOM_CHECK_ARG(s.size() - i > static_cast<size_t>(extra), "text is not valid UTF-8: truncated character at offset ",
                 start);
  for (int k = 1; k <= extra; ++k) {
    const unsigned char ck = byte(i + k);
    ECOM_CHECK_ARG((ck & 0xC0) == 0x80, "text is not valid UTF-8: bad continuation byte at offset ", i + k);
    cp = (cp << 6) | (ck & 0x3F);
  }
  ECOM_CHECK_ARG(cp >= min_cp, "text is not valid UTF-8: overlong encoding at offset ", start);
  ECOM_CHECK_ARG(cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF),
                 "text is not valid UTF-8: invalid code point at offset ", start);
  i += extra + 1;
  return cp;
}

void append_utf8(char32_t c, std::string& out) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

// ---- character classes and case folding (the tables of bm25.h) ---------------------------------

enum class CharClass : uint8_t { kSeparator, kWord, kSingle };

bool in(char32_t c, char32_t lo, char32_t hi) { return c >= lo && c <= hi; }

CharClass classify(char32_t c) {
  using enum CharClass;
  if (c < 0x80) return (in(c, '0', '9') || in(c, 'A', 'Z') || in(c, 'a', 'z')) ? kWord : kSeparator;
  if (c < 0xC0) return (c == 0xAA || c == 0xB5 || c == 0xBA) ? kWord : kSeparator;
  if (c < 0x100) return (c == 0xD7 || c == 0xF7) ? kSeparator : kWord;
  if (in(c, 0x2B0, 0x2FF) || c == 0x37E || c == 0x387 || c == 0x482) return kSeparator;
  if (in(c, 0x2000, 0x2BFF) || in(c, 0x2E00, 0x2E7F) || in(c, 0x3000, 0x303F)) return kSeparator;
  if (in(c, 0x3040, 0x309F)) return kSingle;  // Hiragana
  if (in(c, 0x3400, 0x4DBF) || in(c, 0x4E00, 0x9FFF) || in(c, 0xF900, 0xFAFF) || in(c, 0x20000, 0x3FFFF))
    return kSingle;  // CJK ideographs
  if (in(c, 0xE000, 0xF8FF) || in(c, 0xFDD0, 0xFDEF) || in(c, 0xFE00, 0xFE6F) || c == 0xFEFF) return kSeparator;
  if (in(c, 0xFF00, 0xFFEF))  // fullwidth digits and letters, halfwidth Katakana and Hangul are words
    return (in(c, 0xFF10, 0xFF19) || in(c, 0xFF21, 0xFF3A) || in(c, 0xFF41, 0xFF5A) || in(c, 0xFF66, 0xFFDC))
               ? kWord
               : kSeparator;
  if ((c & 0xFFFE) == 0xFFFE || in(c, 0xFFF0, 0xFFFF)) return kSeparator;  // specials, non-characters
  if (in(c, 0x1F000, 0x1FAFF) || c >= 0xE0000) return kSeparator;         // emoji, tags, private use
  return kWord;
}

// +1 when c is the even (upper-case) member of a pair, else c.
char32_t lower_even(char32_t c) { return (c % 2 == 0) ? c + 1 : c; }
char32_t lower_odd(char32_t c) { return (c % 2 == 1) ? c + 1 : c; }

char32_t to_lower(char32_t c) {
  if (c < 0x80) return in(c, 'A', 'Z') ? c + 32 : c;
  if (c < 0x100) return (in(c, 0xC0, 0xDE) && c != 0xD7) ? c + 32 : c;
  if (c < 0x180) {  // Latin Extended-A
    if (c == 0x130) return 'i';
    if (c == 0x178) return 0xFF;
    if (in(c, 0x100, 0x137) || in(c, 0x14A, 0x177)) return lower_even(c);
    if (in(c, 0x139, 0x148) || in(c, 0x179, 0x17E)) return lower_odd(c);
    return c;
  }
  if (c < 0x250) {  // Latin Extended-B: the regular pairs and the digraphs
    if (c == 0x1C4 || c == 0x1C5) return 0x1C6;
    if (c == 0x1C7 || c == 0x1C8) return 0x1C9;
    if (c == 0x1CA || c == 0x1CB) return 0x1CC;
    if (c == 0x1F1 || c == 0x1F2) return 0x1F3;
    if (in(c, 0x1CD, 0x1DC)) return lower_odd(c);
    if (in(c, 0x1DE, 0x1EF) || in(c, 0x1F8, 0x21F) || in(c, 0x222, 0x233) || in(c, 0x246, 0x24F)) return lower_even(c);
    return c;
  }
  if (in(c, 0x370, 0x3FF)) {  // Greek
    if (c == 0x386) return 0x3AC;
    if (in(c, 0x388, 0x38A)) return c + 37;
    if (c == 0x38C) return 0x3CC;
    if (in(c, 0x38E, 0x38F)) return c + 63;
    if (in(c, 0x391, 0x3A1) || in(c, 0x3A3, 0x3AB)) return c + 32;
    if (c == 0x3C2) return 0x3C3;  // final sigma
    return c;
  }
  if (in(c, 0x400, 0x52F)) {  // Cyrillic and Cyrillic Supplement
    if (in(c, 0x400, 0x40F)) return c + 80;
    if (in(c, 0x410, 0x42F)) return c + 32;
    if (in(c, 0x460, 0x481) || in(c, 0x48A, 0x4BF) || in(c, 0x4D0, 0x52F)) return lower_even(c);
    if (c == 0x4C0) return 0x4CF;
    if (in(c, 0x4C1, 0x4CE)) return lower_odd(c);
    return c;
  }
  if (in(c, 0x531, 0x556)) return c + 48;  // Armenian
  if (in(c, 0x1E00, 0x1EFF)) {             // Latin Extended Additional
    if (c == 0x1E9E) return 0xDF;
    if (in(c, 0x1E00, 0x1E95) || in(c, 0x1EA0, 0x1EFF)) return lower_even(c);
    return c;
  }
  if (in(c, 0xFF21, 0xFF3A)) return c + 32;  // fullwidth A-Z
  return c;
}

// ---- checksum and byte I/O -----------------------------------------------------------------------

// The checksum is index::crc32 (hnsw.h), the one the vector index files use too.

constexpr char kMagic[8] = {'E', 'C', 'M', 'B', 'M', '2', '5', '\0'};
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kHeaderBytes = 80;

class Writer {
 public:
  template <typename T>
  void put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    buf.insert(buf.end(), p, p + sizeof(T));
  }
  void put_bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    buf.insert(buf.end(), b, b + n);
  }
  std::vector<uint8_t> buf;
};

// Bounds-checked reads from the file image; running past the end is a ValueError.
class Reader {
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  template <typename T>
  T get(const char* what) {
    ECOM_CHECK_ARG(n_ - pos_ >= sizeof(T), "BM25 index file is corrupt: truncated while reading ", what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string_view bytes(size_t n, const char* what) {
    ECOM_CHECK_ARG(n_ - pos_ >= n, "BM25 index file is corrupt: truncated while reading ", what);
    std::string_view s(reinterpret_cast<const char*>(p_ + pos_), n);
    pos_ += n;
    return s;
  }
  size_t left() const { return n_ - pos_; }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
};

std::string errno_text() { return std::strerror(errno); }

void write_all(int fd, const uint8_t* p, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) throw RuntimeError("cannot write " + path + ": " + errno_text());
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void check_params(double k1, double b) {
  ECOM_CHECK_ARG(std::isfinite(k1) && k1 >= 0, "k1 must be a finite number >= 0, got ", k1);
  ECOM_CHECK_ARG(std::isfinite(b) && b >= 0 && b <= 1, "b must be in [0, 1], got ", b);
}

void check_id(int64_t id) {
  ECOM_CHECK_ARG(id >= 0 && id < std::numeric_limits<int64_t>::max(), "document ids must be in [0, 2^63 - 1), got ",
                 id);
}

}  // namespace

// ---- tokeniser ----------------------------------------------------------------------------------

std::vector<std::string> bm25_tokenize(std::string_view text) {
  std::vector<std::string> tokens;
  std::string word;
  size_t i = 0;
  while (i < text.size()) {
    const char32_t c = decode_utf8(text, i);
    const CharClass cls = classify(c);
    if (cls == CharClass::kWord) {
      append_utf8(to_lower(c), word);
      continue;
    }
    if (!word.empty()) tokens.push_back(std::move(word)), word.clear();
    if (cls == CharClass::kSingle) {
      std::string single;
      append_utf8(c, single);
      tokens.push_back(std::move(single));
    }
  }
  if (!word.empty()) tokens.push_back(std::move(word));
  return tokens;
}

// ---- index --------------------------------------------------------------------------------------

BM25Index::BM25Index(double k1, double b) : k1_(k1), b_(b) { check_params(k1, b); }

BM25Index::BM25Index(BM25Index&& o) noexcept = default;

BM25Index::DocTerms BM25Index::count_terms(const std::vector<std::string>& tokens) {
  ECOM_CHECK_ARG(tokens.size() < std::numeric_limits<uint32_t>::max(), "a document has too many tokens (",
                 tokens.size(), ")");
  std::vector<uint32_t> tids;
  tids.reserve(tokens.size());
  for (const std::string& t : tokens) {
    auto [it, fresh] = term_ids_.try_emplace(t, static_cast<uint32_t>(terms_.size()));
    if (fresh) {
      ECOM_CHECK_ARG(terms_.size() < std::numeric_limits<uint32_t>::max() - 1, "too many distinct terms");
      terms_.push_back(t);
      df_.push_back(0);
      postings_.emplace_back();
    }
    tids.push_back(it->second);
  }
  std::sort(tids.begin(), tids.end());
  DocTerms doc;
  doc.length = static_cast<uint32_t>(tids.size());
  for (size_t j = 0; j < tids.size();) {
    size_t e = j;
    while (e < tids.size() && tids[e] == tids[j]) ++e;
    doc.terms.push_back({tids[j], static_cast<uint32_t>(e - j)});
    j = e;
  }
  return doc;
}

void BM25Index::insert_unlocked(int64_t id, DocTerms doc) {
  ECOM_CHECK_ARG(slot_id_.size() < std::numeric_limits<uint32_t>::max() - 1, "too many documents");
  const auto slot = static_cast<uint32_t>(slot_id_.size());
  for (const TermFreq& tf : doc.terms) {
    ++df_[tf.term];
    postings_[tf.term].push_back({slot, tf.tf});
  }
  slot_id_.push_back(id);
  slot_len_.push_back(doc.length);
  slot_alive_.push_back(1);
  slot_terms_.push_back(std::move(doc.terms));
  id_slot_[id] = slot;
  ++live_;
  total_len_ += doc.length;
  next_id_ = std::max(next_id_, id + 1);
}

namespace {
// Tokens of every text, in parallel (the expensive part of an add, done before locking; it also
// validates the UTF-8 before anything changes).
std::vector<std::vector<std::string>> tokenize_all(const std::vector<std::string>& texts) {
  std::vector<std::vector<std::string>> tokens(texts.size());
  parallel_for(0, static_cast<int64_t>(texts.size()), 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) tokens[i] = bm25_tokenize(texts[i]);
  });
  return tokens;
}
}  // namespace

void BM25Index::add(const std::vector<std::string>& texts, const std::vector<int64_t>& ids) {
  ECOM_CHECK_ARG(texts.size() == ids.size(), "got ", texts.size(), " texts but ", ids.size(), " ids");
  const auto tokens = tokenize_all(texts);
  std::unique_lock lock(*mu_);
  std::unordered_set<int64_t> batch;
  for (int64_t id : ids) {
    check_id(id);
    ECOM_CHECK_ARG(!id_slot_.count(id), "document id ", id, " is already in the index (delete it first to replace it)");
    ECOM_CHECK_ARG(batch.insert(id).second, "document id ", id, " appears twice in one add");
  }
  for (size_t i = 0; i < texts.size(); ++i) insert_unlocked(ids[i], count_terms(tokens[i]));
}

std::vector<int64_t> BM25Index::add_auto(const std::vector<std::string>& texts) {
  const auto tokens = tokenize_all(texts);
  std::unique_lock lock(*mu_);  // ids are taken under the same lock that inserts them
  const auto n = static_cast<int64_t>(texts.size());
  ECOM_CHECK_ARG(next_id_ < std::numeric_limits<int64_t>::max() - n, "automatic ids would overflow int64");
  std::vector<int64_t> ids(texts.size());
  for (int64_t i = 0; i < n; ++i) ids[i] = next_id_ + i;  // all > every id ever added: none is live
  for (int64_t i = 0; i < n; ++i) insert_unlocked(ids[i], count_terms(tokens[i]));
  return ids;
}

int64_t BM25Index::remove(const std::vector<int64_t>& ids, bool missing_ok) {
  std::unique_lock lock(*mu_);
  if (!missing_ok)
    for (int64_t id : ids) ECOM_CHECK_ARG(id_slot_.count(id), "document id ", id, " is not in the index");
  int64_t removed = 0;
  for (int64_t id : ids) {
    auto it = id_slot_.find(id);
    if (it == id_slot_.end()) continue;  // missing_ok, or a repeat in `ids`
    const uint32_t slot = it->second;
    id_slot_.erase(it);
    for (const TermFreq& tf : slot_terms_[slot]) --df_[tf.term];
    std::vector<TermFreq>().swap(slot_terms_[slot]);
    slot_alive_[slot] = 0;
    --live_;
    total_len_ -= slot_len_[slot];
    ++dead_;
    ++removed;
  }
  if (dead_ > live_) compact_postings_unlocked();
  return removed;
}

// Drops dead slots and terms no live document holds: renumbers both, rebuilds the postings.
void BM25Index::compact_postings_unlocked() {
  std::vector<uint32_t> term_map(terms_.size(), UINT32_MAX);
  std::vector<std::string> terms;
  std::vector<uint32_t> df;
  for (size_t t = 0; t < terms_.size(); ++t) {
    if (df_[t] == 0) continue;
    term_map[t] = static_cast<uint32_t>(terms.size());
    terms.push_back(std::move(terms_[t]));
    df.push_back(df_[t]);
  }
  std::vector<std::vector<Posting>> postings(terms.size());
  for (size_t t = 0; t < terms.size(); ++t) postings[t].reserve(df[t]);
  std::vector<int64_t> slot_id;
  std::vector<uint32_t> slot_len;
  std::vector<std::vector<TermFreq>> slot_terms;
  id_slot_.clear();
  for (size_t s = 0; s < slot_id_.size(); ++s) {
    if (!slot_alive_[s]) continue;
    const auto ns = static_cast<uint32_t>(slot_id.size());
    for (TermFreq& tf : slot_terms_[s]) {
      tf.term = term_map[tf.term];
      postings[tf.term].push_back({ns, tf.tf});
    }
    id_slot_[slot_id_[s]] = ns;
    slot_id.push_back(slot_id_[s]);
    slot_len.push_back(slot_len_[s]);
    slot_terms.push_back(std::move(slot_terms_[s]));
  }
  term_ids_.clear();
  for (size_t t = 0; t < terms.size(); ++t) term_ids_.emplace(terms[t], static_cast<uint32_t>(t));
  terms_ = std::move(terms);
  df_ = std::move(df);
  postings_ = std::move(postings);
  slot_id_ = std::move(slot_id);
  slot_len_ = std::move(slot_len);
  slot_terms_ = std::move(slot_terms);
  slot_alive_.assign(slot_id_.size(), 1);
  dead_ = 0;
}

// ---- search -------------------------------------------------------------------------------------

std::vector<uint8_t> BM25Index::allowed_mask(const int64_t* allowed, int64_t n_allowed) const {
  if (allowed == nullptr && n_allowed < 0) return {};
  std::vector<uint8_t> mask(slot_id_.size(), 0);
  for (int64_t i = 0; i < n_allowed; ++i) {
    auto it = id_slot_.find(allowed[i]);
    if (it != id_slot_.end()) mask[it->second] = 1;
  }
  return mask;
}

int64_t BM25Index::search_unlocked(std::string_view query, int64_t k, const uint8_t* mask, std::vector<double>& acc,
                                   std::vector<uint32_t>& touched, int64_t* out_ids, float* out_scores) const {
  const std::vector<std::string> tokens = bm25_tokenize(query);
  if (live_ == 0) return 0;
  const double n = static_cast<double>(live_);
  const double avgdl = static_cast<double>(total_len_) / n;
  // acc[slot] > 0 marks a touched slot (every term weight is > 0); touched entries are zeroed
  // again below, so the scratch is cleared once per call, not once per query.
  if (acc.size() != slot_id_.size()) acc.assign(slot_id_.size(), 0.0);
  touched.clear();
  for (const std::string& tok : tokens) {
    auto it = term_ids_.find(tok);
    if (it == term_ids_.end() || df_[it->second] == 0) continue;
    const double df = df_[it->second];
    const double idf = std::log(1.0 + (n - df + 0.5) / (df + 0.5));
    for (const Posting& p : postings_[it->second]) {
      if (!slot_alive_[p.slot] || (mask && !mask[p.slot])) continue;
      const double tf = p.tf;
      // avgdl > 0 here: the slot is live and holds this term, so some live document has tokens.
      const double norm = k1_ * (1.0 - b_ + b_ * slot_len_[p.slot] / avgdl);
      double& a = acc[p.slot];
      if (a == 0.0) touched.push_back(p.slot);
      a += idf * tf * (k1_ + 1.0) / (tf + norm);
    }
  }
  // Best first: score descending, then id ascending.
  const auto better = [&](uint32_t x, uint32_t y) {
    return acc[x] != acc[y] ? acc[x] > acc[y] : slot_id_[x] < slot_id_[y];
  };
  const int64_t found = std::min<int64_t>(k, static_cast<int64_t>(touched.size()));
  std::partial_sort(touched.begin(), touched.begin() + found, touched.end(), better);
  for (int64_t j = 0; j < found; ++j) {
    out_ids[j] = slot_id_[touched[j]];
    out_scores[j] = static_cast<float>(acc[touched[j]]);
  }
  for (uint32_t slot : touched) acc[slot] = 0.0;
  return found;
}

BM25Hits BM25Index::search(std::string_view query, int64_t k, const int64_t* allowed, int64_t n_allowed) const {
  ECOM_CHECK_ARG(k >= 1, "k must be >= 1, got ", k);
  std::shared_lock lock(*mu_);
  const std::vector<uint8_t> mask = allowed_mask(allowed, n_allowed);
  std::vector<double> acc;
  std::vector<uint32_t> touched;
  BM25Hits hits;
  const int64_t cap = std::min<int64_t>(k, live_);
  hits.ids.resize(cap);
  hits.scores.resize(cap);
  const int64_t found = search_unlocked(query, k, mask.empty() ? nullptr : mask.data(), acc, touched,
                                        hits.ids.data(), hits.scores.data());
  hits.ids.resize(found);
  hits.scores.resize(found);
  return hits;
}

void BM25Index::search_batch(const std::vector<std::string>& queries, int64_t k, const int64_t* allowed,
                             int64_t n_allowed, int64_t* out_ids, float* out_scores) const {
  ECOM_CHECK_ARG(k >= 1, "k must be >= 1, got ", k);
  std::shared_lock lock(*mu_);
  const std::vector<uint8_t> mask = allowed_mask(allowed, n_allowed);
  parallel_for(0, static_cast<int64_t>(queries.size()), 1, [&](int64_t qb, int64_t qe) {
    std::vector<double> acc;  // per-chunk scratch
    std::vector<uint32_t> touched;
    for (int64_t q = qb; q < qe; ++q) {
      int64_t* ids = out_ids + q * k;
      float* scores = out_scores + q * k;
      const int64_t found =
          search_unlocked(queries[q], k, mask.empty() ? nullptr : mask.data(), acc, touched, ids, scores);
      std::fill(ids + found, ids + k, int64_t{-1});
      std::fill(scores + found, scores + k, -std::numeric_limits<float>::infinity());
    }
  });
}

// ---- statistics ---------------------------------------------------------------------------------

int64_t BM25Index::size() const {
  std::shared_lock lock(*mu_);
  return live_;
}

int64_t BM25Index::num_terms() const {
  std::shared_lock lock(*mu_);
  return std::count_if(df_.begin(), df_.end(), [](uint32_t d) { return d > 0; });
}

double BM25Index::avgdl() const {
  std::shared_lock lock(*mu_);
  return live_ ? static_cast<double>(total_len_) / static_cast<double>(live_) : 0.0;
}

double BM25Index::idf(std::string_view term) const {
  std::shared_lock lock(*mu_);
  auto it = term_ids_.find(std::string(term));
  if (it == term_ids_.end() || df_[it->second] == 0) return 0.0;
  const double df = df_[it->second];
  return std::log(1.0 + (static_cast<double>(live_) - df + 0.5) / (df + 0.5));
}

bool BM25Index::contains(int64_t id) const {
  std::shared_lock lock(*mu_);
  return id_slot_.count(id) > 0;
}

std::vector<int64_t> BM25Index::ids() const {
  std::shared_lock lock(*mu_);
  std::vector<int64_t> out;
  out.reserve(id_slot_.size());
  for (const auto& [id, slot] : id_slot_) out.push_back(id);
  std::sort(out.begin(), out.end());
  return out;
}

int64_t BM25Index::next_id() const {
  std::shared_lock lock(*mu_);
  return next_id_;
}

// ---- persistence --------------------------------------------------------------------------------

std::vector<uint8_t> BM25Index::serialize() const {
  std::shared_lock lock(*mu_);
  // Live terms in a dense numbering.
  std::vector<uint32_t> term_map(terms_.size(), UINT32_MAX);
  uint64_t n_terms = 0, n_pairs = 0;
  Writer payload;
  for (size_t t = 0; t < terms_.size(); ++t) {
    if (df_[t] == 0) continue;
    term_map[t] = static_cast<uint32_t>(n_terms++);
    payload.put<uint32_t>(static_cast<uint32_t>(terms_[t].size()));
    payload.put_bytes(terms_[t].data(), terms_[t].size());
  }
  std::vector<TermFreq> doc;
  for (size_t s = 0; s < slot_id_.size(); ++s) {
    if (!slot_alive_[s]) continue;
    doc = slot_terms_[s];
    for (TermFreq& tf : doc) tf.term = term_map[tf.term];
    std::sort(doc.begin(), doc.end(), [](const TermFreq& x, const TermFreq& y) { return x.term < y.term; });
    payload.put<int64_t>(slot_id_[s]);
    payload.put<uint32_t>(slot_len_[s]);
    payload.put<uint32_t>(static_cast<uint32_t>(doc.size()));
    for (const TermFreq& tf : doc) {
      payload.put<uint32_t>(tf.term);
      payload.put<uint32_t>(tf.tf);
    }
    n_pairs += doc.size();
  }
  Writer out;
  out.buf.reserve(kHeaderBytes + payload.buf.size() + 4);
  out.put_bytes(kMagic, sizeof(kMagic));
  out.put<uint32_t>(kFormatVersion);
  out.put<uint32_t>(kTokenizerVersion);
  out.put<double>(k1_);
  out.put<double>(b_);
  out.put<uint64_t>(static_cast<uint64_t>(live_));
  out.put<uint64_t>(n_terms);
  out.put<uint64_t>(n_pairs);
  out.put<int64_t>(next_id_);
  out.put<uint64_t>(static_cast<uint64_t>(total_len_));
  out.put<uint64_t>(payload.buf.size());
  ECOM_CHECK(out.buf.size() == kHeaderBytes);
  out.put_bytes(payload.buf.data(), payload.buf.size());
  out.put<uint32_t>(crc32(out.buf.data(), out.buf.size()));
  return std::move(out.buf);
}

BM25Index BM25Index::deserialize(const uint8_t* data, size_t size) {
  ECOM_CHECK_ARG(size >= kHeaderBytes + 4, "BM25 index file is truncated: ", size, " bytes, need at least ",
                 kHeaderBytes + 4);
  ECOM_CHECK_ARG(std::memcmp(data, kMagic, sizeof(kMagic)) == 0, "not a BM25 index file (bad magic)");
  Reader header(data + sizeof(kMagic), kHeaderBytes - sizeof(kMagic));
  const auto version = header.get<uint32_t>("version");
  ECOM_CHECK_ARG(version == kFormatVersion, "BM25 index file has format version ", version,
                 "; this build reads version ", kFormatVersion);
  const auto tok_version = header.get<uint32_t>("tokenizer version");
  ECOM_CHECK_ARG(tok_version == kTokenizerVersion, "BM25 index file was built with tokenizer version ", tok_version,
                 "; this build tokenises with version ", kTokenizerVersion, " (rebuild the index)");
  const auto k1 = header.get<double>("k1");
  const auto b = header.get<double>("b");
  const auto n_docs = header.get<uint64_t>("document count");
  const auto n_terms = header.get<uint64_t>("term count");
  const auto n_pairs = header.get<uint64_t>("pair count");
  const auto next_id = header.get<int64_t>("next id");
  const auto total_len = header.get<uint64_t>("token count");
  const auto payload_bytes = header.get<uint64_t>("payload size");
  ECOM_CHECK_ARG(payload_bytes == size - kHeaderBytes - 4, "BM25 index file is truncated or has trailing bytes: header says ",
                 payload_bytes, " payload bytes, file holds ", size - kHeaderBytes - 4);
  uint32_t stored_crc;
  std::memcpy(&stored_crc, data + size - 4, 4);
  ECOM_CHECK_ARG(stored_crc == crc32(data, size - 4), "BM25 index file is corrupt: checksum mismatch");

  // The checksum matched; still trust no count (a crafted file can carry a valid checksum).
  try {
    check_params(k1, b);
  } catch (const ValueError& e) {
    throw ValueError(std::string("BM25 index file is corrupt: ") + e.what());
  }
  ECOM_CHECK_ARG(n_terms <= payload_bytes / 4 && n_docs <= payload_bytes / 16 && n_pairs <= payload_bytes / 8,
                 "BM25 index file is corrupt: counts exceed the payload size");
  ECOM_CHECK_ARG(next_id >= 0, "BM25 index file is corrupt: negative next id");
  BM25Index ix(k1, b);
  Reader r(data + kHeaderBytes, payload_bytes);
  ix.terms_.reserve(n_terms);
  for (uint64_t t = 0; t < n_terms; ++t) {
    const auto len = r.get<uint32_t>("a term length");
    const std::string term(r.bytes(len, "a term"));
    std::vector<std::string> toks;
    try {
      toks = bm25_tokenize(term);
    } catch (const ValueError&) {
      toks.clear();
    }
    ECOM_CHECK_ARG(toks.size() == 1 && toks[0] == term, "BM25 index file is corrupt: term ", t,
                   " is not a normalised token");
    ECOM_CHECK_ARG(ix.term_ids_.emplace(term, static_cast<uint32_t>(t)).second,
                   "BM25 index file is corrupt: term ", t, " appears twice");
    ix.terms_.push_back(term);
  }
  ix.df_.assign(n_terms, 0);
  ix.postings_.resize(n_terms);
  uint64_t pairs = 0, tokens = 0;
  for (uint64_t d = 0; d < n_docs; ++d) {
    const auto id = r.get<int64_t>("a document id");
    ECOM_CHECK_ARG(id >= 0 && id < next_id, "BM25 index file is corrupt: document id ", id, " out of range");
    ECOM_CHECK_ARG(!ix.id_slot_.count(id), "BM25 index file is corrupt: document id ", id, " appears twice");
    DocTerms doc;
    doc.length = r.get<uint32_t>("a document length");
    const auto n = r.get<uint32_t>("a document term count");
    ECOM_CHECK_ARG(n <= r.left() / 8, "BM25 index file is corrupt: document ", d, " term count exceeds the payload");
    uint64_t sum_tf = 0;
    doc.terms.reserve(n);
    for (uint32_t j = 0; j < n; ++j) {
      TermFreq tf{r.get<uint32_t>("a term index"), r.get<uint32_t>("a term frequency")};
      ECOM_CHECK_ARG(tf.term < n_terms && tf.tf >= 1 && (j == 0 || tf.term > doc.terms.back().term),
                     "BM25 index file is corrupt: bad term entry in document ", d);
      sum_tf += tf.tf;
      doc.terms.push_back(tf);
    }
    ECOM_CHECK_ARG(sum_tf == doc.length, "BM25 index file is corrupt: document ", d, " length ", doc.length,
                   " does not match its term frequencies (", sum_tf, ")");
    pairs += n;
    tokens += doc.length;
    ix.insert_unlocked(id, std::move(doc));
  }
  ECOM_CHECK_ARG(r.left() == 0, "BM25 index file is corrupt: ", r.left(), " unread payload bytes");
  ECOM_CHECK_ARG(pairs == n_pairs && tokens == total_len, "BM25 index file is corrupt: totals do not match");
  for (uint64_t t = 0; t < n_terms; ++t)
    ECOM_CHECK_ARG(ix.df_[t] > 0, "BM25 index file is corrupt: term ", t, " is in no document");
  ix.next_id_ = next_id;
  return ix;
}

void BM25Index::save(const std::string& path) const {
  const std::vector<uint8_t> bytes = serialize();
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) throw RuntimeError("cannot create " + tmp + ": " + errno_text());
  try {
    write_all(fd, bytes.data(), bytes.size(), tmp);
    if (::fsync(fd) != 0) throw RuntimeError("cannot fsync " + tmp + ": " + errno_text());
    if (::close(fd) != 0) throw RuntimeError("cannot close " + tmp + ": " + errno_text());
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = errno_text();
    ::unlink(tmp.c_str());
    throw RuntimeError("cannot rename " + tmp + " to " + path + ": " + err);
  }
  // Make the rename itself durable.
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

BM25Index BM25Index::load(const std::string& path) {
  std::error_code ec;
  const std::filesystem::file_status st = std::filesystem::status(path, ec);
  ECOM_CHECK_ARG(std::filesystem::is_regular_file(st), path, ": no such file (expected a saved BM25 index)");
  // Read to the end rather than by the size stat reports: /proc-style files report 0 and cannot seek.
  std::ifstream f(path, std::ios::binary);
  if (!f) throw RuntimeError("cannot open " + path + ": " + errno_text());
  std::vector<uint8_t> bytes;
  char buf[1 << 16];
  while (f.read(buf, sizeof buf) || f.gcount() > 0) bytes.insert(bytes.end(), buf, buf + f.gcount());
  if (f.bad()) throw RuntimeError("cannot read " + path);
  try {
    return deserialize(bytes.data(), bytes.size());
  } catch (const ValueError& e) {
    throw ValueError(path + ": " + e.what());
  }
}

}  // namespace ecomllm::index
