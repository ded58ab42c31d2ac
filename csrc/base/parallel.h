// OpenMP helpers. An exception must never escape an OpenMP region (the runtime would call
// std::terminate), so parallel_for captures the first exception thrown by any worker, lets the
// other iterations finish quickly, and rethrows it on the calling thread after the region.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ecomllm {

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Calls fn(chunk_begin, chunk_end) over [begin, end) split into contiguous chunks of at least
// `grain` iterations, at most one chunk per thread (static schedule: chunk i goes to thread i, so
// per-thread scratch indexed by thread_index() is safe). Rethrows the first worker exception.
template <typename Fn>
void parallel_for(int64_t begin, int64_t end, int64_t grain, Fn&& fn) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t max_chunks = (n + grain - 1) / grain;
  const int nthreads = static_cast<int>(std::min<int64_t>(max_threads(), max_chunks));
  if (nthreads <= 1) {
    fn(begin, end);
    return;
  }
  std::exception_ptr error;
  std::once_flag error_once;
  std::atomic<bool> failed{false};
#pragma omp parallel num_threads(nthreads)
  {
    const int t = thread_index();
    const int nt = omp_get_num_threads();
    const int64_t chunk = (n + nt - 1) / nt;
    const int64_t b = begin + t * chunk;
    const int64_t e = std::min(end, b + chunk);
    if (b < e && !failed.load(std::memory_order_relaxed)) {
      try {
        fn(b, e);
      } catch (...) {
        std::call_once(error_once, [&] { error = std::current_exception(); });
        failed.store(true, std::memory_order_relaxed);
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace ecomllm
