// Unit tests for csrc/index/bm25: tokeniser rules, malformed UTF-8, a hand-computed score,
// delete statistics and the file round trip. The Python tests compare against a reference BM25.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "base/error.h"
#include "index/bm25.h"

namespace ecomllm::index {
namespace {

using Tokens = std::vector<std::string>;

TEST(BM25Tokenize, AsciiDigitsAndPunctuation) {
  EXPECT_EQ(bm25_tokenize("Hello, WORLD! 3.5mm USB-C"), (Tokens{"hello", "world", "3", "5mm", "usb", "c"}));
  EXPECT_EQ(bm25_tokenize(""), Tokens{});
  EXPECT_EQ(bm25_tokenize(" \t\n.,;!?"), Tokens{});
  EXPECT_EQ(bm25_tokenize("a_b"), (Tokens{"a", "b"}));
}

TEST(BM25Tokenize, LowerCasesLatinGreekCyrillic) {
  EXPECT_EQ(bm25_tokenize("CAFÉ ŁÓDŹ İ"), (Tokens{"café", "łódź", "i"}));
  EXPECT_EQ(bm25_tokenize("ΣΊΣΥΦΟΣ"), (Tokens{"σίσυφοσ"}));  // final sigma folded too
  EXPECT_EQ(bm25_tokenize("ПРИВЕТ Ёж"), (Tokens{"привет", "ёж"}));
  EXPECT_EQ(bm25_tokenize("ỆẞȘ"), (Tokens{"ệßș"}));
}

TEST(BM25Tokenize, SymbolsSeparateAndIdeographsStandAlone) {
  EXPECT_EQ(bm25_tokenize("Sony™ 50℃ 😀ok ×2"), (Tokens{"sony", "50", "ok", "2"}));
  EXPECT_EQ(bm25_tokenize("iPhone手机 カナ"), (Tokens{"iphone", "手", "机", "カナ"}));
  EXPECT_EQ(bm25_tokenize("e\xCC\x81t\xC3\xA9"), (Tokens{"e\xCC\x81t\xC3\xA9"}));  // combining acute stays
}

TEST(BM25Tokenize, MalformedUtf8IsValueError) {
  for (const std::string bad : {std::string("\xC3"), std::string("a\x80"), std::string("\xC0\xAF"),
                                std::string("\xED\xA0\x80"), std::string("\xF4\x90\x80\x80"),
                                std::string("\xE2\x82"), std::string("\xFF")})
    EXPECT_THROW(bm25_tokenize(bad), ValueError) << bad.size();
}

TEST(BM25Index, HandComputedScoreAndDeletes) {
  BM25Index ix;  // k1 = 1.2, b = 0.75
  ix.add({"red shoe", "blue shoe shoe", "green hat"}, {10, 20, 30});
  // "shoe": N = 3, df = 2, avgdl = 7/3; doc 20 has tf = 2, |d| = 3.
  const double idf = std::log(1.0 + (3 - 2 + 0.5) / (2 + 0.5));
  const double want = idf * 2 * 2.2 / (2 + 1.2 * (0.25 + 0.75 * 3 / (7.0 / 3)));
  BM25Hits hits = ix.search("shoe", 10);
  ASSERT_EQ(hits.ids.size(), 2u);
  EXPECT_EQ(hits.ids[0], 20);
  EXPECT_NEAR(hits.scores[0], want, 1e-6 * want);
  EXPECT_EQ(ix.remove({20}), 1);
  EXPECT_EQ(ix.size(), 2);
  EXPECT_DOUBLE_EQ(ix.avgdl(), 2.0);
  EXPECT_DOUBLE_EQ(ix.idf("shoe"), std::log(1.0 + (2 - 1 + 0.5) / 1.5));
  EXPECT_THROW(ix.remove({20}), ValueError);
  EXPECT_THROW(ix.add({"x"}, {10}), ValueError);
  EXPECT_THROW(ix.search("x", 0), ValueError);
}

TEST(BM25Index, SerializeRoundTripAndCorruption) {
  BM25Index ix(0.9, 0.4);
  ix.add({"alpha beta", "beta gamma gamma", "δέλτα"}, {1, 2, 3});
  std::vector<uint8_t> bytes = ix.serialize();
  BM25Index back = BM25Index::deserialize(bytes.data(), bytes.size());
  EXPECT_EQ(back.serialize(), bytes);
  EXPECT_EQ(back.search("gamma beta", 5).ids, ix.search("gamma beta", 5).ids);
  for (size_t n = 0; n < bytes.size(); ++n) EXPECT_THROW(BM25Index::deserialize(bytes.data(), n), ValueError) << n;
  bytes[bytes.size() / 2] ^= 0x10;
  EXPECT_THROW(BM25Index::deserialize(bytes.data(), bytes.size()), ValueError);
}

}  // namespace
}  // namespace ecomllm::index
