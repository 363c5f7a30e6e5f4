// Decoding of libFuzzer bytes into the arguments of the C++ entry points (tests/cpp/fuzz_*.cpp):
// small sizes most of the time, and integers biased towards the values that break index math
// (negative, INT32/INT64 edges, 2^62) so that the mutator reaches them in seconds, not hours.
// Reads past the end give zeros, so every input decodes to something.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>

namespace scree::fuzz {

class Input {
 public:
  Input(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}

  bool empty() const { return p_ == end_; }

  uint8_t byte() { return p_ == end_ ? 0 : *p_++; }

  uint64_t raw(int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= uint64_t(byte()) << (8 * i);
    return v;
  }

  bool flag() { return byte() & 1; }

  // Uniform-ish in [lo, hi] (hi - lo < 2^16).
  int64_t small(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(raw(2) % uint64_t(hi - lo + 1)); }

  // An int64 that is usually small, often an edge of int32/int64, sometimes any 8 bytes.
  int64_t integer() {
    static constexpr int64_t kEdges[] = {
        0, 1, -1, 2, std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::max() - 1,
        std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::min() + 1,
        std::numeric_limits<int32_t>::max(), int64_t(std::numeric_limits<int32_t>::max()) + 1,
        std::numeric_limits<int32_t>::min(), int64_t(1) << 32, int64_t(1) << 62, -(int64_t(1) << 62),
        (int64_t(1) << 62) + 1, std::numeric_limits<int64_t>::max() / 2 + 1, std::numeric_limits<int64_t>::max() / 3};
    const uint8_t s = byte();
    switch (s % 8) {
      case 0: return static_cast<int64_t>(raw(8));
      case 1: return kEdges[byte() % (sizeof(kEdges) / sizeof(kEdges[0]))];
      case 2: return -small(0, 8);
      default: return small(0, 8);
    }
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

// A check that failed: print and abort, so libFuzzer saves the input as a crash.
#define SCREE_FUZZ_CHECK(cond, ...)                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "%s:%d: check failed: %s\n  ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                   \
      std::fprintf(stderr, "\n");                                          \
      std::abort();                                                        \
    }                                                                      \
  } while (0)

}  // namespace scree::fuzz
