// Owning, 64-byte-aligned, move-only byte buffer. 64 bytes = one cache line = one AVX-512 vector,
// so aligned loads never split a line.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "base/error.h"

namespace ecomllm {

class AlignedBuffer {
 public:
  static constexpr size_t kAlignment = 64;

  AlignedBuffer() = default;
  // Allocates `nbytes` bytes (rounded up to the alignment); zero-filled when `zero` is true.
  explicit AlignedBuffer(size_t nbytes, bool zero = false) : size_(nbytes) {
    if (nbytes == 0) return;
    size_t rounded = (nbytes + kAlignment - 1) / kAlignment * kAlignment;
    data_ = static_cast<std::byte*>(std::aligned_alloc(kAlignment, rounded));
    if (!data_) throw RuntimeError(detail::concat("out of memory allocating ", nbytes, " bytes"));
    if (zero) std::memset(data_, 0, rounded);
  }

  // A large buffer on transparent huge pages: from 4 MiB on it is 2 MiB-aligned and advised
  // MADV_HUGEPAGE (a no-op where THP is off) before its pages are first touched (the zero fill).
  // For buffers read at random (graph indexes: far fewer TLB misses) or streamed at full memory
  // bandwidth (NF4 weights in token-by-token decoding: a 1 GB stream of 4096 x 4096 matrices went
  // from ~16.5-18 to ~19.3 GB/s on 2 Sapphire Rapids cores).
  static AlignedBuffer with_huge_pages(size_t nbytes, bool zero) {
    constexpr size_t kHuge = size_t{2} << 20;
    if (nbytes < 2 * kHuge) return AlignedBuffer(nbytes, zero);
    AlignedBuffer b;
    const size_t rounded = (nbytes + kHuge - 1) / kHuge * kHuge;
    b.data_ = static_cast<std::byte*>(std::aligned_alloc(kHuge, rounded));
    if (!b.data_) throw RuntimeError(detail::concat("out of memory allocating ", nbytes, " bytes"));
    b.size_ = nbytes;
#ifdef MADV_HUGEPAGE
    madvise(b.data_, rounded, MADV_HUGEPAGE);
#endif
    if (zero) std::memset(b.data_, 0, rounded);
    return b;
  }
  ~AlignedBuffer() { std::free(data_); }

  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) {
      std::free(data_);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }

  size_t size() const { return size_; }
  std::byte* data() { return data_; }
  const std::byte* data() const { return data_; }
  template <typename T> T* as() { return reinterpret_cast<T*>(data_); }
  template <typename T> const T* as() const { return reinterpret_cast<const T*>(data_); }

 private:
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace ecomllm
