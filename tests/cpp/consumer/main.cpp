// Links against an installed scree::core and uses the public headers: validate offsets, pad.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "scree/error.h"
#include "scree/layout.h"
#include "scree/ops/pack.h"

int main() {
  std::vector<int64_t> offsets{0, 2, 5};
  auto layout = scree::RaggedLayout::from_offsets(offsets.data(), 3, 1, 5);
  std::vector<float> values{1, 2, 3, 4, 5}, padded(2 * 3);
  const float zero = 0.f;
  scree::ops::pad(values.data(), offsets.data(), 2, layout.max_length, 4, &zero, 4, false, padded.data(), nullptr);
  const bool ok = padded == std::vector<float>{1, 2, 0, 3, 4, 5};
  try {
    std::vector<int64_t> bad{0, 3, 2};
    scree::RaggedLayout::from_offsets(bad.data(), 3, 1, 2);
    return 1;
  } catch (const scree::Error&) {
  }
  std::printf("consumer: %s\n", ok ? "ok" : "wrong padding");
  return ok ? 0 : 1;
}
