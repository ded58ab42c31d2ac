// JSON from files we do not trust (config.json, adapter configs, quant states, safetensors
// headers): nesting bounded before parsing, messages printable and short. nlohmann recurses per
// level when it parses, dumps and destroys a value, so a value nested ~10^5 deep overflowed the
// stack (a segfault) in an error message's dump().
#pragma once

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "base/error.h"

namespace ecomllm::io {

constexpr int kMaxJsonDepth = 64;  // Hugging Face configs nest 3-4 deep

// Deepest [ / { nesting of a JSON text, strings skipped; stops counting past `limit`.
inline int json_depth(std::string_view text, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) return deepest;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

// `text` parsed; ValueError "<where>: ..." when it nests deeper than max_depth or is not JSON.
inline nlohmann::json parse_untrusted_json(std::string_view text, const std::string& where,
                                           int max_depth = kMaxJsonDepth) {
  ECOM_CHECK_ARG(json_depth(text, max_depth) <= max_depth, where, ": JSON nests deeper than ", max_depth, " levels");
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    throw ValueError(where + ": not valid JSON (" + printable(e.what()) + ")");
  }
}

// A JSON file (a regular file of at most 100 MiB) parsed as above.
inline nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::error_code ec;
  ECOM_CHECK_ARG(std::filesystem::is_regular_file(path, ec), path.string(), ": no such file");
  ECOM_CHECK_ARG(std::filesystem::file_size(path, ec) <= (100u << 20), path.string(), ": too large for a JSON file");
  std::ifstream in(path, std::ios::binary);
  ECOM_CHECK_ARG(in.good(), "cannot open ", path.string());
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse_untrusted_json(text, path.string());
}

// A JSON value for an error message: compact, printable, cut to max_len characters.
inline std::string short_dump(const nlohmann::json& v, size_t max_len = 120) {
  return printable(v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), max_len);
}

}  // namespace ecomllm::io
