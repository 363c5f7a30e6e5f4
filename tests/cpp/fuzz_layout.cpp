// libFuzzer target: RaggedLayout::from_offsets and offsets_from_lengths (include/scree/layout.h)
// on decoded offsets/lengths (int32 or int64, strides -3..3, values near INT64_MAX, negative,
// decreasing). The outcome must be scree::Error of the right kind exactly when a naive check in
// this file says the input is invalid, and otherwise the same layout (and offsets) as naive loops.
#include <cstdint>
#include <vector>

#include "fuzz_input.h"
#include "scree/error.h"
#include "scree/layout.h"

namespace {

using scree::ErrorKind;
using scree::RaggedLayout;
using scree::fuzz::Input;

// A strided view of `count` elements: negative strides read backwards from the first element,
// as a NumPy view offsets[::-2] does; every element a view does not cover holds junk.
template <class Index>
struct Strided {
  std::vector<Index> buf;
  Index* first;
  Strided(int64_t count, int64_t stride) {
    const int64_t a = stride < 0 ? -stride : stride;
    buf.assign(static_cast<size_t>(count > 1 ? (count - 1) * a + 1 : 1), Index(-7));
    first = buf.data() + (stride < 0 && count > 1 ? (count - 1) * a : 0);
  }
};

template <class Index>
void check_from_offsets(Input& in) {
  const int64_t count = in.small(-2, 48);
  const int64_t stride = in.small(-3, 3);
  const bool deltas = in.flag();  // values as increments: valid layouts are then common
  const bool zero_first = in.flag();
  std::vector<Index> off(static_cast<size_t>(count > 0 ? count : 0));
  uint64_t run = 0;  // wrapping sum, so huge increments wrap like a C++ caller's would
  for (auto& o : off) {
    const int64_t v = in.integer();
    run = deltas ? run + static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
    o = static_cast<Index>(static_cast<int64_t>(run));
  }
  if (zero_first && !off.empty()) off[0] = 0;
  const int64_t total = in.flag() && !off.empty() ? static_cast<int64_t>(off.back()) : in.integer();
  if (stride == 0)  // every element reads offsets[0]
    for (auto& o : off) o = off.empty() ? Index(0) : off[0];

  Strided<Index> view(count, stride);
  for (int64_t i = 0; i < count; ++i) view.first[i * stride] = off[static_cast<size_t>(i)];

  // The invariants, written out once more.
  bool valid = count >= 1 && total >= 0 && off[0] == 0;
  int64_t max_length = 0;
  for (int64_t i = 1; valid && i < count; ++i) {
    valid = off[i] >= off[i - 1];
    if (valid) max_length = std::max<int64_t>(max_length, int64_t(off[i]) - int64_t(off[i - 1]));
  }
  valid = valid && int64_t(off.back()) == total;

  try {
    const RaggedLayout l = RaggedLayout::from_offsets(view.first, count, stride, total);
    SCREE_FUZZ_CHECK(valid, "invalid offsets accepted (count %lld, stride %lld, total %lld)", (long long)count,
                     (long long)stride, (long long)total);
    SCREE_FUZZ_CHECK(l.num_sequences == count - 1 && l.total == total && l.max_length == max_length,
                     "layout (%lld, %lld, %lld) != (%lld, %lld, %lld)", (long long)l.num_sequences,
                     (long long)l.total, (long long)l.max_length, (long long)(count - 1), (long long)total,
                     (long long)max_length);
  } catch (const scree::Error& e) {
    SCREE_FUZZ_CHECK(!valid, "valid offsets rejected: %s", e.what());
    SCREE_FUZZ_CHECK(e.kind() == ErrorKind::InvalidOffsets, "kind %d: %s", int(e.kind()), e.what());
  }
}

template <class Index>
void check_from_lengths(Input& in) {
  const int64_t n = in.small(-2, 48);
  const int64_t stride = in.small(-3, 3);
  std::vector<Index> len(static_cast<size_t>(n > 0 ? n : 0));
  for (auto& x : len) x = static_cast<Index>(in.integer());
  if (stride == 0)
    for (auto& x : len) x = len[0];
  Strided<Index> view(n, stride);
  for (int64_t i = 0; i < n; ++i) view.first[i * stride] = len[static_cast<size_t>(i)];

  // Expected: InvalidArgument for n < 0, InvalidOffsets for a negative length or a sum past
  // INT64_MAX (checked in 128 bits), else the prefix sum.
  ErrorKind kind = ErrorKind::InvalidArgument;
  bool valid = n >= 0;
  std::vector<int64_t> want(static_cast<size_t>(valid ? n + 1 : 1), 0);
  __int128 sum = 0;
  int64_t max_length = 0;
  for (int64_t i = 0; valid && i < n; ++i) {
    sum += len[i];
    valid = len[i] >= 0 && sum <= INT64_MAX;
    kind = ErrorKind::InvalidOffsets;
    want[i + 1] = static_cast<int64_t>(sum);
    max_length = std::max<int64_t>(max_length, len[i]);
  }

  std::vector<int64_t> out(want.size() + 1, -5);  // one sentinel past the end
  try {
    const RaggedLayout l = scree::offsets_from_lengths(view.first, n, stride, out.data());
    SCREE_FUZZ_CHECK(valid, "invalid lengths accepted (n %lld)", (long long)n);
    for (size_t i = 0; i < want.size(); ++i)
      SCREE_FUZZ_CHECK(out[i] == want[i], "offsets[%zu] = %lld, want %lld", i, (long long)out[i], (long long)want[i]);
    SCREE_FUZZ_CHECK(out.back() == -5, "wrote past offsets[n]");
    SCREE_FUZZ_CHECK(l.num_sequences == n && l.total == want.back() && l.max_length == max_length, "layout differs");
  } catch (const scree::Error& e) {
    SCREE_FUZZ_CHECK(!valid, "valid lengths rejected: %s", e.what());
    SCREE_FUZZ_CHECK(e.kind() == kind, "kind %d, want %d: %s", int(e.kind()), int(kind), e.what());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in(data, size);
  switch (in.byte() % 4) {
    case 0: check_from_offsets<int32_t>(in); break;
    case 1: check_from_offsets<int64_t>(in); break;
    case 2: check_from_lengths<int32_t>(in); break;
    default: check_from_lengths<int64_t>(in); break;
  }
  return 0;
}
