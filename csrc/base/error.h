// Error types shared by the whole C++ core.
//
// ValueError   -> the caller passed something wrong (shape, dtype, range, corrupt file).
// RuntimeError -> something failed that the caller could not have prevented (allocation, I/O).
// pybind11 translates std::invalid_argument to Python ValueError and std::runtime_error to
// RuntimeError, so the bindings need no translators of their own.
#pragma once

#include <cstdio>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace ecomllm {

class ValueError : public std::invalid_argument {
 public:
  explicit ValueError(const std::string& what) : std::invalid_argument(what) {}
};

class RuntimeError : public std::runtime_error {
 public:
  explicit RuntimeError(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
// Concatenates any streamable arguments into one message.
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

// Length of the well-formed UTF-8 sequence at s[i] (1-4), or 0 where there is none: the rules of
// Unicode's table 3-7, which Python's decoder applies (no overlongs, surrogates or > U+10FFFF).
inline size_t utf8_sequence_length(std::string_view s, size_t i) {
  const auto at = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = at(0);
  if (c < 0x80) return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xbf;  // range of the second byte
  if (c >= 0xc2 && c <= 0xdf) len = 2;
  else if (c >= 0xe0 && c <= 0xef) len = 3, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
  else if (c >= 0xf0 && c <= 0xf4) len = 4, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
  else return 0;
  if (i + len > s.size() || at(1) < lo || at(1) > hi) return 0;
  for (size_t k = 2; k < len; ++k)
    if ((at(k) & 0xc0) != 0x80) return 0;
  return len;
}

inline bool is_valid_utf8(std::string_view s) {
  for (size_t i = 0, len; i < s.size(); i += len)
    if ((len = utf8_sequence_length(s, i)) == 0) return false;
  return true;
}

// `s` with every byte that is not part of well-formed UTF-8, and control characters, written as
// \xNN (messages quote file bytes, and Python decodes exception messages as UTF-8). Long texts are cut.
inline std::string printable(std::string_view s, size_t max_len = 200) {
  std::string out;
  for (size_t i = 0; i < s.size() && out.size() < max_len;) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t len = utf8_sequence_length(s, i);
    if (len > 1 || (len == 1 && c >= 0x20 && c != 0x7f)) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
      ++i;
    }
  }
  if (out.size() >= max_len) out += "...";
  return out;
}

}  // namespace ecomllm

// Check a caller-supplied precondition; always on (never compiled out in release builds).
#define ECOM_CHECK_ARG(cond, ...)                                              \
  do {                                                                         \
    if (!(cond)) throw ::ecomllm::ValueError(::ecomllm::detail::concat(__VA_ARGS__)); \
  } while (0)

// Check an internal invariant; always on. A failure is a bug in ecomllm, not in the caller.
#define ECOM_CHECK(cond, ...)                                                          \
  do {                                                                                 \
    if (!(cond))                                                                       \
      throw ::ecomllm::RuntimeError(::ecomllm::detail::concat(                          \
          "internal check failed (", #cond, ") at ", __FILE__, ":", __LINE__, ": ", ##__VA_ARGS__)); \
  } while (0)
