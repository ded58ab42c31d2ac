// Tokenizer: a sentencepiece model (the `tokenizer.model` of Llama / Mistral checkpoints) for
// encoding text to token ids and back, and training a new model from text files.
//
// Ids are those of the sentencepiece library on the same model file. Loading validates the file
// (ValueError "<path>: ..." for a missing file or one that is not a sentencepiece model); decode
// rejects ids outside [0, vocab_size). Encode/decode are const and safe to call from many threads
// at once (SentencePieceProcessor::Encode/Decode are const); the batch calls run in parallel.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace ecomllm::io {

// Training options. The defaults give a Llama-style model: BPE, byte fallback (no <unk> for any
// UTF-8 text), digits split one per piece, identity normalization, a dummy "▁" prefix, whitespace
// kept as written, <unk>=0 <s>=1 </s>=2 and no <pad>.
struct TokenizerTrainOptions {
  int vocab_size = 32000;
  std::string model_type = "bpe";  // "bpe" | "unigram"
  bool byte_fallback = true;
  double character_coverage = 0.9995;  // in (0, 1]
  bool split_digits = true;
  std::vector<std::string> user_defined_symbols;  // always one piece each; no commas, not empty
  int max_sentence_length = 4192;                 // bytes; longer lines are skipped
  int64_t input_sentence_size = 0;                // 0: use every line; else sample this many
  bool shuffle_input_sentence = true;             // sample randomly (seeded) when sampling
  int num_threads = 0;                            // 0: ecomllm::max_threads()
  // sentencepiece's global generator (SetRandomGeneratorSeed; not 0xFFFFFFFF). The Debian library
  // (0.1.97) seeds its line sampler itself, so there training is deterministic whatever the seed.
  uint32_t seed = 42;
  std::string normalization_rule_name = "identity";  // identity | nfkc | nmt_nfkc | nfkc_cf | nmt_nfkc_cf
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = false;
  bool allow_whitespace_only_pieces = true;
  int unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;  // -1 disables bos / eos / pad (unk is required)
  bool verbose = false;  // sentencepiece's training log on stderr
};

class Tokenizer {  // move-only
 public:
  // A model file (ValueError "<path>: ..." if missing, unreadable or not a sentencepiece model).
  static Tokenizer from_file(const std::string& path);
  // The bytes of a model file (a serialized sentencepiece ModelProto).
  static Tokenizer from_serialized(std::string_view bytes);
  // Trains a model on the lines of `corpus_files` and writes it to `output_path` atomically (the
  // path never holds a partial model; on failure an existing file there is left untouched).
  // ValueError for missing corpus files, bad options, or a corpus too small for the vocabulary
  // (sentencepiece's own message included).
  static Tokenizer train(const std::vector<std::string>& corpus_files, const std::string& output_path,
                         const TokenizerTrainOptions& options = {});

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  ~Tokenizer();

  std::string serialized_model() const;  // the model file's bytes
  void save(const std::string& path) const;  // atomic (temp file + fsync + rename)

  // text -> ids [T]; add_bos / add_eos wrap them in <s> ... </s> (ValueError if the model has none).
  std::vector<int32_t> encode(std::string_view text, bool add_bos = false, bool add_eos = false) const;
  // B texts -> B id lists, encoded in parallel.
  std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string>& texts, bool add_bos = false,
                                                 bool add_eos = false) const;
  std::vector<std::string> encode_as_pieces(std::string_view text) const;
  // ids [T] -> text; ValueError for an id outside [0, vocab_size). Control ids decode to "".
  std::string decode(const std::vector<int32_t>& ids) const;
  std::vector<std::string> decode_batch(const std::vector<std::vector<int32_t>>& ids) const;

  int32_t vocab_size() const;  // V
  int32_t unk_id() const;
  int32_t bos_id() const;  // -1 when the model has none
  int32_t eos_id() const;  // -1 when the model has none
  int32_t pad_id() const;  // -1 when the model has none (Llama)
  std::string id_to_piece(int32_t id) const;        // ValueError outside [0, V)
  int32_t piece_to_id(std::string_view piece) const;  // unk_id() for a piece not in the vocabulary
  bool is_byte(int32_t id) const;                   // <0x..> byte-fallback pieces; ValueError outside [0, V)
  bool is_control(int32_t id) const;                // <s>, </s>, <pad>
  bool is_unknown(int32_t id) const;                // <unk>

  // ValueError naming `what` and the position of the first id outside [0, V).
  void check_ids(const int32_t* ids, size_t n, const char* what) const;

 private:
  explicit Tokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> sp);
  static Tokenizer load(std::string_view bytes, const std::string& where);

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace ecomllm::io
