// Unit tests for csrc/io/tokenizer: train a tiny Llama-style model on a temp corpus, round trips
// (ids -> text, file -> bytes -> file), batch = single, and bad input refused with ValueError.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "io/tokenizer.h"

namespace ecomllm::io {
namespace {

namespace fs = std::filesystem;

// A fresh directory under the system temp dir holding a small corpus; removed at the end.
class TokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "ecomllm_tok_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    corpus_ = path("corpus.txt");
    std::ofstream out(corpus_);
    const char* brands[] = {"Samsung", "Philips", "Bosch", "Prestige", "Nike", "Café Noir", "Zwilling"};
    const char* things[] = {"Mixer Grinder", "Running Shoes", "LED Bulb", "Steam Iron", "Kettle 1.5 L", "Pressure Cooker"};
    for (int i = 0; i < 600; ++i)
      out << brands[i % 7] << " " << things[(i * 5) % 6] << " " << (i * 37) % 1000 << " W, pack of " << i % 4 + 1
          << "  (colour: " << (i % 2 ? "black" : "blanc cassé") << ")\n";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  Tokenizer train(const std::string& out, int vocab_size = 400) const {
    TokenizerTrainOptions o;
    o.vocab_size = vocab_size;
    o.num_threads = 1;
    return Tokenizer::train({corpus_}, out, o);
  }

  std::string dir_, corpus_;
};

TEST_F(TokenizerTest, TrainsLlamaStyleModelAndRoundTrips) {
  const std::string model = path("tok.model");
  const Tokenizer tok = train(model);
  EXPECT_EQ(tok.vocab_size(), 400);
  EXPECT_EQ(tok.unk_id(), 0);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.pad_id(), -1);
  EXPECT_EQ(tok.id_to_piece(1), "<s>");
  EXPECT_TRUE(tok.is_unknown(0));
  EXPECT_TRUE(tok.is_control(1));
  EXPECT_TRUE(tok.is_byte(3));  // byte fallback pieces <0x00>.. come right after the specials
  EXPECT_EQ(tok.id_to_piece(3), "<0x00>");

  // Text never seen in training (emoji, CJK) goes through byte fallback and comes back intact.
  const std::string text = "Bosch Kettle 2.0 L  \xF0\x9F\x98\x80 \xE6\x97\xA5\xE6\x9C\xAC 12345";
  const std::vector<int32_t> ids = tok.encode(text);
  ASSERT_FALSE(ids.empty());
  for (int32_t id : ids) EXPECT_NE(id, tok.unk_id());
  EXPECT_EQ(tok.decode(ids), text);
  const std::vector<int32_t> wrapped = tok.encode(text, true, true);
  ASSERT_EQ(wrapped.size(), ids.size() + 2);
  EXPECT_EQ(wrapped.front(), 1);
  EXPECT_EQ(wrapped.back(), 2);
  EXPECT_EQ(tok.decode(wrapped), text);  // control ids decode to nothing

  // Digits are split one per piece.
  for (const std::string& piece : tok.encode_as_pieces("12345"))
    EXPECT_LE(piece.size(), 4u) << piece;  // "▁" (3 bytes) + one digit at most

  // The file on disk, the serialized bytes and a saved copy are the same model.
  const Tokenizer from_file = Tokenizer::from_file(model);
  const Tokenizer from_bytes = Tokenizer::from_serialized(tok.serialized_model());
  EXPECT_EQ(from_file.encode(text), ids);
  EXPECT_EQ(from_bytes.encode(text), ids);
  from_bytes.save(path("copy.model"));
  EXPECT_EQ(Tokenizer::from_file(path("copy.model")).serialized_model(), tok.serialized_model());
  EXPECT_EQ(tok.piece_to_id("no-such-piece-xyz"), tok.unk_id());
}

TEST_F(TokenizerTest, BatchEqualsSingle) {
  const Tokenizer tok = train(path("tok.model"));
  std::vector<std::string> texts;
  for (int i = 0; i < 101; ++i) texts.push_back("Philips LED Bulb " + std::to_string(i * 13) + (i % 3 ? " W" : " \xC3\xA9t\xC3\xA9"));
  texts.push_back("");
  const auto batch = tok.encode_batch(texts, true, false);
  ASSERT_EQ(batch.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(batch[i], tok.encode(texts[i], true, false)) << i;
  const auto decoded = tok.decode_batch(batch);
  for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(decoded[i], texts[i]) << i;
}

TEST_F(TokenizerTest, BadInputIsValueError) {
  const Tokenizer tok = train(path("tok.model"));
  EXPECT_THROW(tok.decode({5, tok.vocab_size()}), ValueError);
  EXPECT_THROW(tok.decode({-1}), ValueError);
  EXPECT_THROW(tok.id_to_piece(tok.vocab_size()), ValueError);
  EXPECT_THROW(tok.decode_batch({{3}, {1, 100000}}), ValueError);

  try {
    Tokenizer::from_file(path("missing.model"));
    FAIL() << "no exception";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("missing.model"), std::string::npos) << e.what();
  }
  { std::ofstream(path("garbage.model")) << "this is not a protobuf \xff\xfe\x01"; }
  EXPECT_THROW(Tokenizer::from_file(path("garbage.model")), ValueError);
  EXPECT_THROW(Tokenizer::from_serialized(""), ValueError);
  EXPECT_THROW(Tokenizer::from_file(dir_), ValueError);  // a directory

  TokenizerTrainOptions o;
  o.vocab_size = 400;
  EXPECT_THROW(Tokenizer::train({path("no_such_corpus.txt")}, path("x.model"), o), ValueError);
  o.model_type = "wordpiece";
  EXPECT_THROW(Tokenizer::train({corpus_}, path("x.model"), o), ValueError);
  EXPECT_FALSE(fs::exists(path("x.model")));
}

TEST_F(TokenizerTest, FailedTrainingLeavesOutputUntouched) {
  const std::string model = path("tok.model");
  const std::string before = train(model).serialized_model();
  // Far more pieces than this corpus can give: sentencepiece refuses, and its reason is surfaced.
  TokenizerTrainOptions o;
  o.vocab_size = 50000;
  o.model_type = "unigram";
  try {
    Tokenizer::train({corpus_}, model, o);
    FAIL() << "no exception";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("ocabulary size"), std::string::npos) << e.what();
  }
  EXPECT_EQ(Tokenizer::from_file(model).serialized_model(), before);
  // No temp files left beside it.
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir_)) files += entry.is_regular_file();
  EXPECT_EQ(files, 2);  // corpus.txt + tok.model
}

}  // namespace
}  // namespace ecomllm::io
