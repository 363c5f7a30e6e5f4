// libFuzzer target: the layout kernels of include/scree/ops/pack.h and segments.h (pack, pad,
// unpad, mask_offsets, unpad_mask, gather_offsets, gather, positions, segment_ids). Offsets are
// decoded freely and go through RaggedLayout::from_offsets first, as every caller's must
// (fuzz_layout checks that step); the other arguments (padded length, indices, row and element
// sizes) reach the kernels unchecked. Each kernel must throw scree::Error or match a naive loop
// written here. Rows of zero bytes (feature dim 0) allow lengths near INT64_MAX without memory.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fuzz_input.h"
#include "scree/error.h"
#include "scree/layout.h"
#include "scree/ops/pack.h"
#include "scree/ops/segments.h"

namespace {

using scree::ErrorKind;
using scree::fuzz::Input;
using bytes = std::vector<unsigned char>;

constexpr int64_t kMaxBytes = int64_t(1) << 16;  // larger buffers are not allocated

// a * b when it fits in [0, limit], else -1.
int64_t product_within(int64_t a, int64_t b, int64_t limit) {
  int64_t p;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &p) || p > limit) return -1;
  return p;
}

bytes pattern(Input& in, int64_t size) {
  bytes b(static_cast<size_t>(size));
  const uint8_t seed = in.byte();
  for (int64_t i = 0; i < size; ++i) b[i] = static_cast<unsigned char>(seed + 31 * i + (i >> 8));
  return b;
}

struct Case {
  std::vector<int64_t> off;
  int64_t n = 0, total = 0, max_length = 0;
  int64_t elem = 1, row = 0;  // element and row bytes
  bytes values;               // total * row bytes (empty when the rows are zero bytes)
  int64_t len(int64_t i) const { return off[i + 1] - off[i]; }
};

// Decodes offsets and validates them; false when RaggedLayout rejects them or the values would
// not fit kMaxBytes.
bool decode(Input& in, Case& c) {
  c.n = in.small(0, 10);
  c.off.assign(static_cast<size_t>(c.n + 1), 0);
  const bool huge = in.flag();  // lengths from integer(): near INT64_MAX, negative, ...
  uint64_t run = 0;
  for (int64_t i = 1; i <= c.n; ++i) {
    run += static_cast<uint64_t>(huge ? in.integer() : in.small(0, 6));
    c.off[i] = static_cast<int64_t>(run);
  }
  static constexpr int64_t kElem[] = {1, 2, 4, 8};
  c.elem = kElem[in.byte() % 4];
  c.row = in.small(0, 4) * c.elem;
  try {
    const auto l = scree::RaggedLayout::from_offsets(c.off.data(), c.n + 1, 1, c.off.back());
    c.total = l.total;
    c.max_length = l.max_length;
  } catch (const scree::Error&) {
    return false;
  }
  const int64_t value_bytes = product_within(c.total, c.row, kMaxBytes);
  if (value_bytes < 0) return false;
  c.values = pattern(in, value_bytes);
  return true;
}

void check_pack(Input& in, const Case& c) {
  // Each sequence in its own allocation: ASan sees a read past any of them.
  std::vector<bytes> src(static_cast<size_t>(c.n));
  std::vector<const void*> ptrs(static_cast<size_t>(c.n));
  for (int64_t i = 0; i < c.n; ++i) {
    if (c.row > 0) src[i].assign(c.values.begin() + c.off[i] * c.row, c.values.begin() + c.off[i + 1] * c.row);
    ptrs[i] = src[i].data();
  }
  bytes out(c.values.size(), in.byte());
  scree::ops::pack(ptrs.data(), c.off.data(), c.n, c.row, out.data());
  SCREE_FUZZ_CHECK(out == c.values, "pack differs from concatenation");
}

void check_pad_unpad(Input& in, const Case& c) {
  int64_t max_len;
  switch (in.byte() % 4) {
    case 0: max_len = c.max_length - in.small(0, 2); break;  // too short unless no sequence is that long
    case 1: max_len = in.integer(); break;
    default: max_len = c.max_length + std::min<int64_t>(in.small(0, 3), INT64_MAX - c.max_length); break;
  }
  const bool left = in.flag();
  const bool with_mask = in.flag();
  // pad_value of `elem` bytes; row_bytes not a multiple of it is a caller's error to catch.
  const int64_t elem = in.small(0, 7) == 0 ? in.small(0, 9) : c.elem;
  const bytes pad_value = pattern(in, std::max<int64_t>(elem, 1));
  const int64_t cells = product_within(c.n, max_len, kMaxBytes);  // (n, max_len)
  const int64_t padded_bytes = cells < 0 ? -1 : product_within(cells, c.row, kMaxBytes);
  if ((with_mask || c.row > 0) && padded_bytes < 0 && max_len >= c.max_length) return;  // too big to hold

  const bool valid = max_len >= c.max_length && max_len >= 0 && elem > 0 && c.row % elem == 0;
  const int64_t cap = std::max<int64_t>(padded_bytes, 0);
  bytes padded(static_cast<size_t>(cap), 0xEE);
  std::vector<uint8_t> mask(static_cast<size_t>(with_mask ? std::max<int64_t>(cells, 0) : 0), 0xEE);
  try {
    scree::ops::pad(c.values.data(), c.off.data(), c.n, max_len, c.row, pad_value.data(), elem, left, padded.data(),
                    with_mask ? mask.data() : nullptr);
    SCREE_FUZZ_CHECK(valid, "pad accepted max_len %lld (longest %lld), elem %lld, row %lld", (long long)max_len,
                     (long long)c.max_length, (long long)elem, (long long)c.row);
  } catch (const scree::Error& e) {
    SCREE_FUZZ_CHECK(!valid, "pad rejected valid arguments: %s", e.what());
    return;
  }
  if (c.row > 0 || with_mask) {
    for (int64_t i = 0; i < c.n; ++i) {
      const int64_t lead = left ? max_len - c.len(i) : 0;
      for (int64_t j = 0; j < max_len; ++j) {
        const bool token = j >= lead && j < lead + c.len(i);
        if (with_mask) SCREE_FUZZ_CHECK(mask[i * max_len + j] == token, "mask[%lld, %lld]", (long long)i, (long long)j);
        for (int64_t b = 0; b < c.row; ++b) {
          const unsigned char want = token ? c.values[(c.off[i] + j - lead) * c.row + b] : pad_value[b % elem];
          SCREE_FUZZ_CHECK(padded[(i * max_len + j) * c.row + b] == want, "padded[%lld, %lld] byte %lld",
                           (long long)i, (long long)j, (long long)b);
        }
      }
    }
  }
  bytes back(c.values.size(), 0xDD);
  scree::ops::unpad(padded.data(), c.off.data(), c.n, max_len, c.row, left, back.data());
  SCREE_FUZZ_CHECK(back == c.values, "unpad(pad(x)) != x");
}

void check_mask(Input& in, const Case& c) {
  const int64_t n = in.small(0, 8), max_len = in.small(0, 8);
  std::vector<uint8_t> mask(static_cast<size_t>(n * max_len));
  for (auto& m : mask) m = in.byte() % 3 == 0 ? 0 : in.byte();  // any nonzero byte is a token
  std::vector<int64_t> off(static_cast<size_t>(n + 2), -9);
  scree::ops::mask_offsets(mask.data(), n, max_len, off.data());
  int64_t run = 0;
  SCREE_FUZZ_CHECK(off[0] == 0 && off[n + 1] == -9, "mask_offsets bounds");
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < max_len; ++j) run += mask[i * max_len + j] != 0;
    SCREE_FUZZ_CHECK(off[i + 1] == run, "mask_offsets[%lld]", (long long)(i + 1));
  }
  const bytes padded = pattern(in, n * max_len * c.row);
  bytes out(static_cast<size_t>(run * c.row), 0xDD), want;
  scree::ops::unpad_mask(padded.data(), mask.data(), off.data(), n, max_len, c.row, out.data());
  for (int64_t k = 0; k < n * max_len; ++k)
    if (mask[k] != 0) want.insert(want.end(), padded.begin() + k * c.row, padded.begin() + (k + 1) * c.row);
  SCREE_FUZZ_CHECK(out == want, "unpad_mask differs from padded[mask]");
}

void check_gather(Input& in, const Case& c) {
  const int64_t count = in.small(0, 12);
  std::vector<int64_t> idx(static_cast<size_t>(count));
  for (auto& k : idx) k = in.flag() ? in.small(-1, c.n) : in.integer();
  // Expected offsets in 128 bits: an index out of range, or a total past INT64_MAX, is an error.
  bool valid = true;
  std::vector<int64_t> want(static_cast<size_t>(count + 1), 0);
  __int128 run = 0;
  for (int64_t j = 0; valid && j < count; ++j) {
    valid = idx[j] >= 0 && idx[j] < c.n;
    if (!valid) break;
    run += c.len(idx[j]);
    valid = run <= INT64_MAX;
    want[j + 1] = static_cast<int64_t>(run);
  }
  std::vector<int64_t> out_off(static_cast<size_t>(count + 2), -9);
  try {
    scree::ops::gather_offsets(c.off.data(), c.n, idx.data(), count, out_off.data());
    SCREE_FUZZ_CHECK(valid, "gather_offsets accepted a bad index or an overflowing total");
  } catch (const scree::Error& e) {
    SCREE_FUZZ_CHECK(!valid, "gather_offsets rejected valid indices: %s", e.what());
    return;
  }
  SCREE_FUZZ_CHECK(out_off[count + 1] == -9, "gather_offsets wrote past out_offsets[count]");
  out_off.pop_back();
  SCREE_FUZZ_CHECK(out_off == want, "gather_offsets differs");
  const int64_t out_bytes = product_within(want.back(), c.row, kMaxBytes);
  if (out_bytes < 0) return;
  bytes out(static_cast<size_t>(out_bytes), 0xDD), expect;
  scree::ops::gather(c.values.data(), c.off.data(), idx.data(), count, out_off.data(), c.row, out.data());
  for (int64_t k : idx)
    if (c.row > 0) expect.insert(expect.end(), c.values.begin() + c.off[k] * c.row, c.values.begin() + c.off[k + 1] * c.row);
  SCREE_FUZZ_CHECK(out == expect, "gather differs");
}

template <class Out>
void check_indices(const Case& c) {
  if (product_within(c.total, sizeof(Out), kMaxBytes) < 0) return;
  std::vector<Out> pos(static_cast<size_t>(c.total) + 1, Out(-9)), seg(static_cast<size_t>(c.total) + 1, Out(-9));
  scree::ops::positions(c.off.data(), c.n, pos.data());
  scree::ops::segment_ids(c.off.data(), c.n, seg.data());
  for (int64_t i = 0; i < c.n; ++i)
    for (int64_t t = c.off[i]; t < c.off[i + 1]; ++t)
      SCREE_FUZZ_CHECK(pos[t] == Out(t - c.off[i]) && seg[t] == Out(i), "positions/segment_ids at token %lld",
                       (long long)t);
  SCREE_FUZZ_CHECK(pos[c.total] == Out(-9) && seg[c.total] == Out(-9), "wrote past offsets[-1]");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in(data, size);
  Case c;
  const uint8_t op = in.byte();
  if (!decode(in, c)) return 0;
  try {
    switch (op % 6) {
      case 0: check_pack(in, c); break;
      case 1: check_pad_unpad(in, c); break;
      case 2: check_mask(in, c); break;
      case 3: check_gather(in, c); break;
      case 4: check_indices<int32_t>(c); break;
      default: check_indices<int64_t>(c); break;
    }
  } catch (const scree::Error& e) {
    SCREE_FUZZ_CHECK(false, "unexpected scree::Error: %s", e.what());
  }
  return 0;
}
