// BM25 inverted index over product text (titles, specs, descriptions, reviews).
//
// Tokenisation (bm25_tokenize; kTokenizerVersion is stored in index files):
//   1. The text is decoded as UTF-8; malformed UTF-8 (bad continuation, overlong form, surrogate,
//      code point > U+10FFFF, truncated sequence) is a ValueError.
//   2. Each code point is a separator, a word character, or a single-character token:
//      - separators: ASCII other than [0-9A-Za-z]; C1 controls and Latin-1 symbols U+0080-U+00BF
//        (except the letters ª µ º), × and ÷; spacing modifier letters U+02B0-U+02FF; Greek and
//        Cyrillic punctuation (U+037E, U+0387, U+0482); Unicode spaces, general punctuation,
//        currency, letterlike (™ ℃), arrows, maths, box drawing and other symbols U+2000-U+2BFF;
//        supplemental punctuation U+2E00-U+2E7F; CJK symbols and punctuation U+3000-U+303F;
//        variation selectors and BOM; fullwidth ASCII punctuation; emoji and pictographs
//        U+1F000-U+1FAFF; private use and non-characters.
//      - single-character tokens: CJK ideographs (U+3400-U+4DBF, U+4E00-U+9FFF, U+F900-U+FAFF,
//        U+20000-U+3FFFF) and Hiragana: each one is its own token (as Lucene's StandardTokenizer
//        does), since Chinese/Japanese have no spaces between words.
//      - word characters: everything else, i.e. ASCII letters and digits, Latin letters, Greek,
//        Cyrillic, combining marks (so a decomposed "é" stays in its word), Katakana, Hangul,
//        Arabic, Hebrew, Indic scripts, ... Maximal runs of word characters are tokens.
//   3. Word characters are lower-cased: ASCII, Latin-1, Latin Extended-A, the regular pairs of
//      Latin Extended-B, Latin Extended Additional (Vietnamese), Greek (tonos forms included;
//      final sigma ς folds to σ), Cyrillic and Cyrillic Supplement, Armenian, fullwidth A-Z.
//      No other normalisation: no accent folding, no stemming, no stop words. Digits are kept,
//      so "3.5mm" gives "3", "5mm" and "don't" gives "don", "t".
//
// Scoring (Lucene's BM25 idf, Robertson's tf saturation with the (k1 + 1) numerator):
//   score(q, d) = sum over query tokens t (repeats counted) present in the index of
//                 idf(t) * tf(t,d) * (k1 + 1) / (tf(t,d) + k1 * (1 - b + b * |d| / avgdl))
//   idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
//   N = live documents, df(t) = live documents containing t, |d| = tokens in d,
//   avgdl = mean |d| over live documents. All statistics follow adds and deletes exactly.
//   Only documents sharing at least one token with the query are results, so a search may
//   return fewer than k. Order: score descending, then id ascending (deterministic ties).
//
// Ids are int64 >= 0 (-1 pads result rows). Adding an id that is live is a ValueError (delete it
// first to replace a document); batches are validated before anything changes.
// Thread safety: searches run concurrently with each other; add/delete/save take an exclusive
// lock, so a search sees the index before or after a whole batch.
#pragma once

#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ecomllm::index {

inline constexpr uint32_t kTokenizerVersion = 1;

// Tokens of `text` by the rules above (UTF-8 out). Throws ValueError on malformed UTF-8.
std::vector<std::string> bm25_tokenize(std::string_view text);

// One search's results: at most k (id, score) pairs, best first.
struct BM25Hits {
  std::vector<int64_t> ids;
  std::vector<float> scores;
};

class BM25Index {
 public:
  explicit BM25Index(double k1 = 1.2, double b = 0.75);

  // Adds one document per text. ids: one per text, in [0, INT64_MAX), not live, no repeats.
  // Texts are tokenised in parallel before the index is locked.
  void add(const std::vector<std::string>& texts, const std::vector<int64_t>& ids);
  // The same with ids next_id(), next_id() + 1, ...; returns them.
  std::vector<int64_t> add_auto(const std::vector<std::string>& texts);

  // Deletes the documents with these ids. An id that is not live is a ValueError (nothing is
  // deleted) unless missing_ok, when it is skipped. Returns how many were deleted.
  int64_t remove(const std::vector<int64_t>& ids, bool missing_ok = false);

  // Top-k for one query; allowed (optional, n_allowed ids) restricts results to those ids (ids
  // not in the index are ignored).
  BM25Hits search(std::string_view query, int64_t k, const int64_t* allowed = nullptr,
                  int64_t n_allowed = -1) const;
  // Q queries in parallel: out_ids/out_scores are [Q, k], rows padded with -1 / -inf.
  void search_batch(const std::vector<std::string>& queries, int64_t k, const int64_t* allowed, int64_t n_allowed,
                    int64_t* out_ids, float* out_scores) const;

  // Atomic write (temp file + fsync + rename) of the self-describing file format (see bm25.cpp).
  void save(const std::string& path) const;
  // Throws ValueError on any malformed, truncated or corrupted file; RuntimeError on I/O errors.
  static BM25Index load(const std::string& path);
  // The same from bytes in memory (the whole file).
  static BM25Index deserialize(const uint8_t* data, size_t size);
  std::vector<uint8_t> serialize() const;

  int64_t size() const;            // live documents
  int64_t num_terms() const;       // terms with df > 0
  double avgdl() const;
  double idf(std::string_view term) const;  // of one (already normalised) token; 0 when absent
  bool contains(int64_t id) const;
  std::vector<int64_t> ids() const;  // live ids, ascending
  int64_t next_id() const;           // 1 + the largest id ever added (0 when none)
  double k1() const { return k1_; }
  double b() const { return b_; }

  BM25Index(BM25Index&& other) noexcept;
  BM25Index& operator=(BM25Index&&) = delete;
  BM25Index(const BM25Index&) = delete;

 private:
  struct Posting {
    uint32_t slot;
    uint32_t tf;
  };
  struct TermFreq {
    uint32_t term;
    uint32_t tf;
  };
  // A document's terms as (term id, tf) pairs, plus its length in tokens.
  struct DocTerms {
    std::vector<TermFreq> terms;
    uint32_t length = 0;
  };

  DocTerms count_terms(const std::vector<std::string>& tokens);  // interns new terms
  void insert_unlocked(int64_t id, DocTerms doc);
  void compact_postings_unlocked();
  std::vector<uint8_t> allowed_mask(const int64_t* allowed, int64_t n_allowed) const;
  // Scores one query into scratch and writes the top k; returns the count found.
  int64_t search_unlocked(std::string_view query, int64_t k, const uint8_t* mask, std::vector<double>& acc,
                          std::vector<uint32_t>& touched, int64_t* out_ids, float* out_scores) const;

  double k1_, b_;
  // Terms: string -> term id; per term the live document frequency and postings (which may hold
  // dead slots until the next compaction).
  std::unordered_map<std::string, uint32_t> term_ids_;
  std::vector<std::string> terms_;
  std::vector<uint32_t> df_;
  std::vector<std::vector<Posting>> postings_;
  // Documents by slot: id, length, alive, forward index (for deletes and saving).
  std::vector<int64_t> slot_id_;
  std::vector<uint32_t> slot_len_;
  std::vector<uint8_t> slot_alive_;
  std::vector<std::vector<TermFreq>> slot_terms_;
  std::unordered_map<int64_t, uint32_t> id_slot_;  // live ids only
  int64_t live_ = 0;
  int64_t total_len_ = 0;  // tokens over live documents
  int64_t dead_ = 0;       // dead slots still in the postings
  int64_t next_id_ = 0;
  mutable std::unique_ptr<std::shared_mutex> mu_ = std::make_unique<std::shared_mutex>();
};

}  // namespace ecomllm::index
