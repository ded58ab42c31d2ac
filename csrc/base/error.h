// Error types shared by the whole C++ core.
//
// ValueError   -> the caller passed something wrong (shape, dtype, range, corrupt file).
// RuntimeError -> something failed that the caller could not have prevented (allocation, I/O).
// pybind11 translates std::invalid_argument to Python ValueError and std::runtime_error to
// RuntimeError, so the bindings need no translators of their own.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

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
