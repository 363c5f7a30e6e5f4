// Bulk copies of the layout kernels, and the slices of an even split of their rows (for_each_slice).
// Two effects measured in benchmarks/NOTES.md decide the copies:
// (1) glibc's memcpy switches to non-temporal (streaming) stores only for single copies of
//     >= ~192 MiB on these machines, so a 256 MiB pack done one sequence at a time ran at 50-66% of
//     one big memcpy; streaming stores for long pieces reached 89-103%.
// (2) 4 KiB pages cost ~68k page faults per 256 MiB of fresh output (torch.empty does not ask for
//     huge pages, NumPy does); madvise(MADV_HUGEPAGE) on the output made torch outputs 3-3.7x faster.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#define SCREE_STREAMING_STORES 1
#endif

namespace scree::ops::detail {

// Asks the kernel for transparent huge pages on an output of >= 4 MiB before it is first written.
inline void advise_hugepages(void* p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < (int64_t(4) << 20)) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + 4095) & ~uintptr_t(4095);
  const uintptr_t end = reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(bytes);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

// fn(i, a, b) for each item i of n whose rows [offsets[i], offsets[i + 1]) meet [r0, r1), with
// [a, b) the rows they share (empty items skipped): the slices of one thread's range when a
// kernel splits its output's rows evenly, so a range may start and end inside an item.
template <class Fn>
void for_each_slice(const int64_t* offsets, int64_t n, int64_t r0, int64_t r1, Fn&& fn) {
  // the item holding row r0: the last i with offsets[i] <= r0
  int64_t i = std::max<int64_t>(0, std::upper_bound(offsets, offsets + n + 1, r0) - offsets - 1);
  for (; i < n && offsets[i] < r1; ++i) {
    const int64_t a = std::max(r0, offsets[i]), b = std::min(r1, offsets[i + 1]);
    if (b > a) fn(i, a, b);
  }
}

// memcpy, or streaming stores when the output is large (>= 16 MiB) and the pieces long (>= 64 KiB
// on average): then the destination is not read back soon and caching it only evicts the source.
class Copier {
 public:
  Copier(int64_t out_bytes, int64_t pieces)
      : stream_(out_bytes >= (int64_t(16) << 20) && pieces > 0 && out_bytes / pieces >= (int64_t(64) << 10)) {}

  void operator()(void* dst, const void* src, int64_t n) const {
    // An empty buffer's pointer may be null, which memcpy must not get even for 0 bytes (UBSan).
    if (n <= 0) return;
#if defined(SCREE_STREAMING_STORES)
    if (stream_ && n >= 256) {
      auto* d = static_cast<unsigned char*>(dst);
      const auto* s = static_cast<const unsigned char*>(src);
      const int64_t head = static_cast<int64_t>((16 - (reinterpret_cast<uintptr_t>(d) & 15)) & 15);
      std::memcpy(d, s, static_cast<size_t>(head));
      d += head, s += head, n -= head;
      for (; n >= 64; d += 64, s += 64, n -= 64) {
        const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16));
        const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 32));
        const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 48));
        _mm_stream_si128(reinterpret_cast<__m128i*>(d), a);
        _mm_stream_si128(reinterpret_cast<__m128i*>(d + 16), b);
        _mm_stream_si128(reinterpret_cast<__m128i*>(d + 32), c);
        _mm_stream_si128(reinterpret_cast<__m128i*>(d + 48), e);
      }
      std::memcpy(d, s, static_cast<size_t>(n));
      return;
    }
#endif
    std::memcpy(dst, src, static_cast<size_t>(n));
  }

  // Streaming stores are weakly ordered: each worker fences before it hands its chunk back.
  void fence() const {
#if defined(SCREE_STREAMING_STORES)
    if (stream_) _mm_sfence();
#endif
  }

 private:
  bool stream_;
};

}  // namespace scree::ops::detail
