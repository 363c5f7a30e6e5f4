// CPU layout kernels (see include/scree/ops/pack.h): contiguous copies (streaming stores for large
// outputs, copy.h) spread over cores by parallel_for: pack, unpad and gather split the output's
// rows evenly, pad each padded block into pieces, unpad_mask by sequence weighted by length; outputs
// >= 4 MiB ask for huge pages first.
#include "scree/ops/pack.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "copy.h"
#include "scree/error.h"
#include "scree/parallel.h"

namespace scree::ops {
namespace {

using byte = unsigned char;
using detail::advise_hugepages;
using detail::Copier;

// Padding rows, built once per call: memset when the pad value is all-zero bytes; otherwise copies
// of a pattern of whole rows of at least 4 KiB, so that narrow rows (one int8 a row) are not filled
// by one memcpy call each (a 2^31-row pad of one int8 sequence took 20 s so).
struct PadRow {
  std::vector<byte> rows;
  int64_t pattern_rows = 0;
  bool zero = true;
  PadRow(const void* pad_value, int64_t elem_bytes, int64_t row_bytes) {
    const byte* p = static_cast<const byte*>(pad_value);
    for (int64_t i = 0; i < elem_bytes; ++i) zero = zero && p[i] == 0;
    if (!zero && row_bytes > 0) {
      pattern_rows = std::max<int64_t>(1, 4096 / row_bytes);
      rows.resize(static_cast<size_t>(pattern_rows * row_bytes));
      for (size_t i = 0; i < rows.size(); i += static_cast<size_t>(elem_bytes)) std::memcpy(rows.data() + i, p, elem_bytes);
    }
  }
  void fill(byte* dst, int64_t n, int64_t row_bytes) const {
    if (n <= 0 || row_bytes <= 0) return;
    if (zero) {
      std::memset(dst, 0, static_cast<size_t>(n * row_bytes));
      return;
    }
    for (int64_t r = 0; r < n; r += pattern_rows)
      std::memcpy(dst + r * row_bytes, rows.data(), static_cast<size_t>(std::min(pattern_rows, n - r) * row_bytes));
  }
};

// pad and unpad index (n, max_len) blocks: every sequence must fit, or `lead` goes negative and
// the copies run outside the padded buffer. Checked here too (not only in the bindings) because
// C++ callers reach these kernels directly.
void require_fits(const int64_t* offsets, int64_t n, int64_t max_len) {
  require(max_len >= 0, ErrorKind::ShapeMismatch,
          [&] { return "the padded length must be >= 0, got " + std::to_string(max_len); });
  for (int64_t i = 0; i < n; ++i)
    require(offsets[i + 1] - offsets[i] <= max_len, ErrorKind::ShapeMismatch, [&] {
      return "sequence " + std::to_string(i) + " has length " + std::to_string(offsets[i + 1] - offsets[i]) +
             ", more than the padded length " + std::to_string(max_len);
    });
}

// unpad_mask's shape (its items copy runs of rows where the mask is set): `item(copy, i)` copies item i of n into
// `out`, whose first `out_bytes` the call writes (huge pages asked for first, streaming stores
// when large: one Copier a call); parallel_for spreads the items in chunks weighted by `weights`
// (prefix sums: item i weighs weights[i + 1] - weights[i]), each chunk fencing its stores.
template <class Item>
void copy_items(byte* out, int64_t out_bytes, int64_t n, const int64_t* weights, Item&& item) {
  advise_hugepages(out, out_bytes);
  const Copier copy(out_bytes, n);
  parallel_for(
      n, 2 * out_bytes,
      [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) item(copy, i);
        copy.fence();
      },
      weights);
}

// The shape pack, unpad and gather share: item i's rows [offsets[i], offsets[i + 1]) of `out` (of
// row_bytes each) come from source(i), contiguous. The output's rows are split into equal ranges,
// one a thread, each copying the slices of the items it overlaps: a batch of fewer sequences than
// cores, or one long sequence, still spreads over them (split by item, one long sequence went to
// one thread), and equal rows are equal work without weights.
template <class Source>
void copy_rows(byte* out, int64_t row_bytes, int64_t n, const int64_t* offsets, Source&& source) {
  const int64_t rows = offsets[n], out_bytes = rows * row_bytes;
  advise_hugepages(out, out_bytes);
  const Copier copy(out_bytes, n);
  parallel_for(rows, 2 * out_bytes, [&](int64_t r0, int64_t r1) {
    detail::for_each_slice(offsets, n, r0, r1, [&](int64_t i, int64_t a, int64_t b) {
      copy(out + a * row_bytes, source(i) + (a - offsets[i]) * row_bytes, (b - a) * row_bytes);
    });
    copy.fence();
  });
}

}  // namespace

// Rows of zero bytes (feature dimension 0) leave nothing to copy, and their counts are then not
// bounded by any allocation: offsets near INT64_MAX would overflow the byte arithmetic below
// (2 * offsets[n] * row_bytes, n * max_len * row_bytes), so the kernels return first.

void pack(const void* const* sources, const int64_t* offsets, int64_t n, int64_t row_bytes, void* dst) {
  if (row_bytes == 0) return;
  copy_rows(static_cast<byte*>(dst), row_bytes, n, offsets,
            [&](int64_t i) { return static_cast<const byte*>(sources[i]); });
}

void pad(const void* values, const int64_t* offsets, int64_t n, int64_t max_len, int64_t row_bytes,
         const void* pad_value, int64_t elem_bytes, bool left, void* padded, uint8_t* mask) {
  require_fits(offsets, n, max_len);
  require(elem_bytes > 0 && row_bytes % elem_bytes == 0, ErrorKind::InvalidArgument, [&] {
    return "row_bytes (" + std::to_string(row_bytes) + ") must be a multiple of the pad value's size (" +
           std::to_string(elem_bytes) + ")";
  });
  if (row_bytes == 0 && mask == nullptr) return;
  const byte* in = static_cast<const byte*>(values);
  byte* out = static_cast<byte*>(padded);
  const PadRow pad_row(pad_value, elem_bytes, row_bytes);
  advise_hugepages(out, n * max_len * row_bytes);
  advise_hugepages(mask, n * max_len);
  const Copier copy(n * max_len * row_bytes, n);
  // Each sequence's block of max_len rows is cut into pieces of about kPadPieceBytes (output and
  // mask), each filling, copying and marking its own rows, so that a batch of fewer sequences than
  // cores (8 on a 16-core host, or one padded to a huge length) still spreads over them; every
  // piece writes its share of rows, so equal counts are equal work.
  constexpr int64_t kPadPieceBytes = int64_t(4) << 20;
  const int64_t block_bytes = max_len * (row_bytes + (mask != nullptr ? 1 : 0));
  const int64_t rows_per_piece = max_len / std::max<int64_t>(1, std::min(max_len, block_bytes / kPadPieceBytes));
  const int64_t pieces = rows_per_piece > 0 ? (max_len + rows_per_piece - 1) / rows_per_piece : 1;
  parallel_for(n * pieces, (offsets[n] + n * max_len) * row_bytes, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item / pieces, r0 = item % pieces * rows_per_piece;
      const int64_t r1 = std::min(max_len, r0 + rows_per_piece);
      const int64_t len = offsets[i + 1] - offsets[i];
      const int64_t lead = left ? max_len - len : 0;  // padding rows before the data
      const int64_t d0 = std::max(r0, lead), d1 = std::min(r1, lead + len);  // this piece's data rows
      byte* block = out + i * max_len * row_bytes;
      pad_row.fill(block + r0 * row_bytes, std::min(r1, lead) - r0, row_bytes);
      if (d1 > d0) copy(block + d0 * row_bytes, in + (offsets[i] + d0 - lead) * row_bytes, (d1 - d0) * row_bytes);
      const int64_t t0 = std::max(r0, lead + len);
      pad_row.fill(block + t0 * row_bytes, r1 - t0, row_bytes);
      if (mask != nullptr) {
        uint8_t* m = mask + i * max_len;
        if (r1 > r0) std::memset(m + r0, 0, static_cast<size_t>(r1 - r0));
        if (d1 > d0) std::memset(m + d0, 1, static_cast<size_t>(d1 - d0));
      }
    }
    copy.fence();
  });
}

void unpad(const void* padded, const int64_t* offsets, int64_t n, int64_t max_len, int64_t row_bytes, bool left,
           void* values) {
  require_fits(offsets, n, max_len);
  if (row_bytes == 0) return;
  const byte* in = static_cast<const byte*>(padded);
  byte* out = static_cast<byte*>(values);
  copy_rows(out, row_bytes, n, offsets, [&](int64_t i) {
    const int64_t lead = left ? max_len - (offsets[i + 1] - offsets[i]) : 0;
    return in + (i * max_len + lead) * row_bytes;
  });
}

void mask_offsets(const uint8_t* mask, int64_t n, int64_t max_len, int64_t* offsets) {
  offsets[0] = 0;
  for (int64_t i = 0; i < n; ++i) {
    int64_t count = 0;
    const uint8_t* m = mask + i * max_len;
    for (int64_t j = 0; j < max_len; ++j) count += m[j] != 0;
    offsets[i + 1] = offsets[i] + count;
  }
}

void unpad_mask(const void* padded, const uint8_t* mask, const int64_t* offsets, int64_t n, int64_t max_len,
                int64_t row_bytes, void* values) {
  if (row_bytes == 0) return;
  const byte* in = static_cast<const byte*>(padded);
  byte* out = static_cast<byte*>(values);
  copy_items(out, offsets[n] * row_bytes, n, offsets, [&](const Copier& copy, int64_t i) {
    const uint8_t* m = mask + i * max_len;
    byte* dst = out + offsets[i] * row_bytes;
    // Copy runs of consecutive tokens at once: a left- or right-padded row is one run.
    int64_t j = 0;
    while (j < max_len) {
      while (j < max_len && m[j] == 0) ++j;
      int64_t start = j;
      while (j < max_len && m[j] != 0) ++j;
      if (j > start) {
        copy(dst, in + (i * max_len + start) * row_bytes, (j - start) * row_bytes);
        dst += (j - start) * row_bytes;
      }
    }
  });
}

void gather_offsets(const int64_t* offsets, int64_t n, const int64_t* indices, int64_t count, int64_t* out_offsets) {
  out_offsets[0] = 0;
  for (int64_t j = 0; j < count; ++j) {
    const int64_t k = indices[j];
    require(k >= 0 && k < n, ErrorKind::InvalidArgument, [&] {
      return "sequence index " + std::to_string(k) + " (at position " + std::to_string(j) +
             ") is out of range for " + std::to_string(n) + " sequences";
    });
    // Repeating a long sequence can pass INT64_MAX (lengths are not bounded by memory when rows
    // have no bytes); the wrapped sum would be undefined behaviour and small, wrong offsets.
    const int64_t len = offsets[k + 1] - offsets[k];
    require(len <= INT64_MAX - out_offsets[j], ErrorKind::InvalidArgument, [&] {
      return "the gathered sequences hold more than 2^63 - 1 rows (at position " + std::to_string(j) + ")";
    });
    out_offsets[j + 1] = out_offsets[j] + len;
  }
}

void gather(const void* values, const int64_t* offsets, const int64_t* indices, int64_t count,
            const int64_t* out_offsets, int64_t row_bytes, void* out) {
  if (row_bytes == 0) return;
  const byte* in = static_cast<const byte*>(values);
  copy_rows(static_cast<byte*>(out), row_bytes, count, out_offsets,
            [&](int64_t j) { return in + offsets[indices[j]] * row_bytes; });
}

}  // namespace scree::ops
