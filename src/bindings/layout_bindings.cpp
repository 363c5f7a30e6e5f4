// Bindings of the layout kernels (include/scree/ops): validation of offsets, pack, pad, unpad,
// gather, positions, segment ids, per-sequence reductions and the softmax family. Outputs are allocated by the Python
// caller in its own framework; these functions check every array once, release the GIL and run.
// In CUDA builds also the device check of offsets on a GPU (offsets_summary_cuda, returning a
// scree._C.OffsetsSummary polled by scree._layout); CPU-only builds define neither.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "ndarray_checks.h"
#include "scree/dtypes.h"
#include "scree/layout.h"
#include "scree/paged.h"
#include "scree/ops/pack.h"
#include "scree/ops/reduce.h"
#include "scree/ops/segments.h"
#include "scree/ops/softmax.h"
#ifdef SCREE_WITH_CUDA
#include <nanobind/stl/unique_ptr.h>

#include <array>
#include <memory>

#include "scree/cuda_offsets_check.h"
#endif

namespace scree::bindings {
namespace {

std::tuple<int64_t, int64_t, int64_t> validate_offsets(const InArray& offsets, int64_t total) {
  require_cpu(offsets, "offsets");
  require_ndim(offsets, 1, "offsets");
  require_dtype_index(offsets, "offsets");
  const int64_t count = static_cast<int64_t>(offsets.shape(0));
  const int64_t stride = count > 0 ? offsets.stride(0) : 1;
  scree::RaggedLayout layout =
      is(offsets.dtype(), dl::dtype_code::Int, 32)
          ? scree::RaggedLayout::from_offsets(static_cast<const int32_t*>(offsets.data()), count, stride, total)
          : scree::RaggedLayout::from_offsets(static_cast<const int64_t*>(offsets.data()), count, stride, total);
  return {layout.num_sequences, layout.total, layout.max_length};
}

// The bookkeeping of a paged KV cache: (max_kv_len, max_pages), or RaggedError naming the sequence.
std::tuple<int64_t, int64_t> validate_paged(const InArray& page_table, const InArray& kv_lens, int64_t num_pages,
                                            int64_t page_size) {
  require_cpu(page_table, "page_table");
  require_ndim(page_table, 2, "page_table");
  require_dtype_index(page_table, "page_table");
  require_cpu(kv_lens, "kv_lens");
  require_ndim(kv_lens, 1, "kv_lens");
  require_dtype_index(kv_lens, "kv_lens");
  const int64_t n = static_cast<int64_t>(page_table.shape(0)), width = static_cast<int64_t>(page_table.shape(1));
  scree::require(static_cast<int64_t>(kv_lens.shape(0)) == n, ErrorKind::ShapeMismatch, [&] {
    return "kv_lens has " + std::to_string(kv_lens.shape(0)) + " entries but page_table has " + std::to_string(n) +
           " rows (one per sequence)";
  });
  const int64_t rs = page_table.stride(0), cs = page_table.stride(1), ls = n > 0 ? kv_lens.stride(0) : 1;
  const bool t32 = is(page_table.dtype(), dl::dtype_code::Int, 32), l32 = is(kv_lens.dtype(), dl::dtype_code::Int, 32);
  const void* t = page_table.data();
  const void* l = kv_lens.data();
  scree::PagedLayout out =
      t32 ? (l32 ? scree::PagedLayout::from_tables(static_cast<const int32_t*>(t), n, width, rs, cs,
                                            static_cast<const int32_t*>(l), ls, num_pages, page_size)
                 : scree::PagedLayout::from_tables(static_cast<const int32_t*>(t), n, width, rs, cs,
                                            static_cast<const int64_t*>(l), ls, num_pages, page_size))
          : (l32 ? scree::PagedLayout::from_tables(static_cast<const int64_t*>(t), n, width, rs, cs,
                                            static_cast<const int32_t*>(l), ls, num_pages, page_size)
                 : scree::PagedLayout::from_tables(static_cast<const int64_t*>(t), n, width, rs, cs,
                                            static_cast<const int64_t*>(l), ls, num_pages, page_size));
  return {out.max_kv_len, out.max_pages};
}

int64_t offsets_from_lengths(const InArray& lengths, OutArray out) {
  require_cpu(lengths, "lengths");
  require_ndim(lengths, 1, "lengths");
  require_dtype_index(lengths, "lengths");
  require_kernel_input(out, "out");
  require_int64(out, "out");
  const int64_t n = static_cast<int64_t>(lengths.shape(0));
  require_rows(out, n + 1, "out", "len(lengths) + 1");
  const int64_t stride = n > 0 ? lengths.stride(0) : 1;
  auto* o = static_cast<int64_t*>(out.data());
  scree::RaggedLayout layout =
      is(lengths.dtype(), dl::dtype_code::Int, 32)
          ? scree::offsets_from_lengths(static_cast<const int32_t*>(lengths.data()), n, stride, o)
          : scree::offsets_from_lengths(static_cast<const int64_t*>(lengths.data()), n, stride, o);
  return layout.max_length;
}

// The copy both packs end in: sources checked, out checked against offsets[n] rows.
void pack_rows(const std::vector<const void*>& ptrs, const int64_t* off, int64_t n, OutArray out) {
  const int64_t rb = row_bytes(out, 1);
  nb::gil_scoped_release release;
  scree::ops::pack(ptrs.data(), off, n, rb, out.data());
}

void pack(const std::vector<InArray>& sources, const InArray& offsets, OutArray out) {
  int64_t n;
  const int64_t* off = host_offsets(offsets, rows_of(out), n);
  scree::require(static_cast<int64_t>(sources.size()) == n, ErrorKind::ShapeMismatch, [&] {
    return "pack got " + std::to_string(sources.size()) + " sources for " + std::to_string(n) + " offsets intervals";
  });
  require_kernel_input(out, "out");
  require_rows(out, off[n], "out", "offsets[-1]");
  std::vector<const void*> ptrs(sources.size());
  for (size_t i = 0; i < sources.size(); ++i) {
    const InArray& s = sources[i];
    const std::string name = "sequence " + std::to_string(i);
    require_kernel_input(s, name.c_str());
    require_same_dtype(s, name.c_str(), out, "the first sequence");
    require_same_features(s, 1, name.c_str(), out, 1, "the first sequence");
    require_rows(s, off[i + 1] - off[i], name.c_str(), "its length");
    ptrs[i] = s.data();
  }
  pack_rows(ptrs, off, n, out);
}

// pack from the sources' addresses (int64, one per sequence): the rows of sequence i lie
// contiguously from addresses[i], in out's dtype and row size, as the caller (scree.pack, from
// the arrays it checked: one dtype, one feature shape, contiguous, host memory) guarantees. Why not
// the arrays themselves: handing 16k torch tensors to the binding cost ~1.3 us each (a NumPy view
// apiece), more than copying their rows (benchmarks/NOTES.md, issue 20 step 8).
void pack_addresses(const InArray& addresses, const InArray& offsets, OutArray out) {
  int64_t n;
  const int64_t* off = host_offsets(offsets, rows_of(out), n);
  require_kernel_input(addresses, "addresses");
  require_ndim(addresses, 1, "addresses");
  require_int64(addresses, "addresses");
  require_rows(addresses, n, "addresses", "one per offsets interval");
  require_kernel_input(out, "out");
  require_rows(out, off[n], "out", "offsets[-1]");
  const auto* at = static_cast<const int64_t*>(addresses.data());
  for (int64_t i = 0; i < n; ++i)
    scree::require(at[i] != 0 || off[i + 1] == off[i], ErrorKind::InvalidArgument,
                   [&] { return "sequence " + std::to_string(i) + " has rows but a null address"; });
  std::vector<const void*> ptrs(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ptrs[size_t(i)] = reinterpret_cast<const void*>(static_cast<uintptr_t>(at[i]));
  pack_rows(ptrs, off, n, out);
}

// Checks a packed `values` (total, *f) against a `padded` (n, max_len, *f) for pad and unpad;
// returns max_len. Every sequence must fit the padded length.
template <class V, class P>
int64_t check_padded_pair(const V& values, const P& padded, const int64_t* off, int64_t n) {
  require_kernel_input(values, "values");
  require_kernel_input(padded, "padded");
  require_rows(values, off[n], "values", "offsets[-1]");
  require_same_dtype(values, "values", padded, "padded");
  scree::require(padded.ndim() >= 2 && static_cast<int64_t>(padded.shape(0)) == n, ErrorKind::ShapeMismatch,
                 [&] { return "padded must have shape (n, max_len, *feature) with n = " + std::to_string(n); });
  require_same_features(values, 1, "values", padded, 2, "padded");
  const int64_t max_len = static_cast<int64_t>(padded.shape(1));
  for (int64_t i = 0; i < n; ++i)
    scree::require(off[i + 1] - off[i] <= max_len, ErrorKind::ShapeMismatch, [&] {
      return "sequence " + std::to_string(i) + " has length " + std::to_string(off[i + 1] - off[i]) + " (lengths[" +
             std::to_string(i) + "] = " + std::to_string(off[i + 1] - off[i]) + "), more than the padded length " +
             std::to_string(max_len);
    });
  return max_len;
}

void pad(const InArray& values, const InArray& offsets, OutArray padded, std::optional<OutArray> mask,
         const InArray& pad_value, bool left) {
  int64_t n;
  const int64_t* off = host_offsets(offsets, rows_of(values), n);
  const int64_t max_len = check_padded_pair(values, padded, off, n);
  uint8_t* m = nullptr;
  if (mask) {
    require_kernel_input(*mask, "mask");
    scree::require(mask->itemsize() == 1, ErrorKind::DTypeMismatch,
                   [&] { return "mask must be bool, got " + dtype_name(mask->dtype()); });
    scree::require(mask->ndim() == 2 && static_cast<int64_t>(mask->shape(0)) == n &&
                       static_cast<int64_t>(mask->shape(1)) == max_len,
                   ErrorKind::ShapeMismatch, [&] { return std::string("mask must be a (n, max_len) bool array"); });
    m = static_cast<uint8_t*>(mask->data());
  }
  require_cpu(pad_value, "pad_value");
  require_same_dtype(pad_value, "pad_value", values, "values");
  scree::require(pad_value.size() == 1, ErrorKind::ShapeMismatch, [] { return std::string("pad_value must hold one element"); });
  const int64_t rb = row_bytes(values, 1);
  const int64_t eb = static_cast<int64_t>(values.itemsize());
  nb::gil_scoped_release release;
  scree::ops::pad(values.data(), off, n, max_len, rb, pad_value.data(), eb, left, padded.data(), m);
}

void unpad(const InArray& padded, const InArray& offsets, OutArray values, bool left) {
  int64_t n;
  const int64_t* off = host_offsets(offsets, rows_of(values), n);
  const int64_t max_len = check_padded_pair(values, padded, off, n);
  const int64_t rb = row_bytes(values, 1);
  nb::gil_scoped_release release;
  scree::ops::unpad(padded.data(), off, n, max_len, rb, left, values.data());
}

void require_mask(const InArray& mask) {
  require_kernel_input(mask, "mask");
  require_ndim(mask, 2, "mask");
  scree::require(mask.itemsize() == 1 && (mask.dtype().code == uint8_t(dl::dtype_code::Bool) ||
                                          mask.dtype().code == uint8_t(dl::dtype_code::UInt) ||
                                          mask.dtype().code == uint8_t(dl::dtype_code::Int)),
                 ErrorKind::DTypeMismatch,
                 [&] { return "mask must be bool (or 8-bit 0/1), got " + dtype_name(mask.dtype()); });
}

void mask_offsets(const InArray& mask, OutArray out) {
  require_mask(mask);
  require_kernel_input(out, "out");
  require_int64(out, "out");
  const int64_t n = static_cast<int64_t>(mask.shape(0));
  require_rows(out, n + 1, "out", "mask.shape[0] + 1");
  scree::ops::mask_offsets(static_cast<const uint8_t*>(mask.data()), n, static_cast<int64_t>(mask.shape(1)),
                           static_cast<int64_t*>(out.data()));
}

void unpad_mask(const InArray& padded, const InArray& mask, const InArray& offsets, OutArray values) {
  int64_t n;
  const int64_t* off = host_offsets(offsets, rows_of(values), n);
  require_mask(mask);
  require_kernel_input(padded, "padded");
  require_kernel_input(values, "values");
  scree::require(padded.ndim() >= 2 && padded.shape(0) == mask.shape(0) && padded.shape(1) == mask.shape(1) &&
                     static_cast<int64_t>(mask.shape(0)) == n,
                 ErrorKind::ShapeMismatch, [&] {
                   return "padded " + shape_str(padded) + " and mask " + shape_str(mask) +
                          " must agree on (n, max_len)";
                 });
  require_rows(values, off[n], "values", "number of true mask entries");
  require_same_dtype(values, "values", padded, "padded");
  require_same_features(values, 1, "values", padded, 2, "padded");
  const int64_t rb = row_bytes(values, 1);
  nb::gil_scoped_release release;
  scree::ops::unpad_mask(padded.data(), static_cast<const uint8_t*>(mask.data()), off, n,
                         static_cast<int64_t>(mask.shape(1)), rb, values.data());
}

void gather_offsets(const InArray& offsets, const InArray& indices, OutArray out) {
  int64_t n;
  const int64_t* off = host_offsets(offsets, -1, n);
  require_kernel_input(indices, "indices");
  require_ndim(indices, 1, "indices");
  require_int64(indices, "indices");
  require_kernel_input(out, "out");
  require_int64(out, "out");
  const int64_t count = static_cast<int64_t>(indices.shape(0));
  require_rows(out, count + 1, "out", "len(indices) + 1");
  scree::ops::gather_offsets(off, n, static_cast<const int64_t*>(indices.data()), count,
                             static_cast<int64_t*>(out.data()));
}

void gather(const InArray& values, const InArray& offsets, const InArray& indices, const InArray& out_offsets,
            OutArray out) {
  int64_t n, count;
  const int64_t* off = host_offsets(offsets, rows_of(values), n);
  const int64_t* out_off = host_offsets(out_offsets, rows_of(out), count);
  require_kernel_input(values, "values");
  require_kernel_input(out, "out");
  require_kernel_input(indices, "indices");
  require_int64(indices, "indices");
  require_rows(values, off[n], "values", "offsets[-1]");
  require_rows(indices, count, "indices", "len(out_offsets) - 1");
  require_rows(out, out_off[count], "out", "out_offsets[-1]");
  require_same_dtype(values, "values", out, "out");
  require_same_features(values, 1, "values", out, 1, "out");
  const auto* idx = static_cast<const int64_t*>(indices.data());
  for (int64_t j = 0; j < count; ++j) {
    scree::require(idx[j] >= 0 && idx[j] < n && out_off[j + 1] - out_off[j] == off[idx[j] + 1] - off[idx[j]],
                   ErrorKind::InvalidArgument,
                   [&] { return "out_offsets do not match the lengths of the gathered sequences at " + std::to_string(j); });
  }
  const int64_t rb = row_bytes(values, 1);
  nb::gil_scoped_release release;
  scree::ops::gather(values.data(), off, idx, count, out_off, rb, out.data());
}

template <class Kernel32, class Kernel64>
void index_kernel(const InArray& offsets, OutArray out, const char* what, Kernel32 k32, Kernel64 k64) {
  int64_t n;
  const int64_t* off = host_offsets(offsets, rows_of(out), n);
  require_kernel_input(out, "out");
  require_ndim(out, 1, "out");
  require_rows(out, off[n], "out", "offsets[-1]");
  require_dtype_index(out, what);
  nb::gil_scoped_release release;
  if (is(out.dtype(), dl::dtype_code::Int, 32))
    k32(off, n, static_cast<int32_t*>(out.data()));
  else
    k64(off, n, static_cast<int64_t*>(out.data()));
}

void positions(const InArray& offsets, OutArray out) {
  index_kernel(offsets, out, "positions dtype", scree::ops::positions<int32_t>, scree::ops::positions<int64_t>);
}

void segment_ids(const InArray& offsets, OutArray out) {
  index_kernel(offsets, out, "segment_ids dtype", scree::ops::segment_ids<int32_t>, scree::ops::segment_ids<int64_t>);
}

// Checks shared by the per-sequence kernels: host int64 offsets (n returned), contiguous values
// with offsets[-1] rows, an output of `out_rows` rows with the values' features; the feature count.
int64_t segment_args(const InArray& values, const InArray& offsets, const OutArray& out, bool per_token,
                     const int64_t*& off, int64_t& n) {
  off = host_offsets(offsets, rows_of(values), n);
  require_kernel_input(values, "values");
  require_kernel_input(out, "out");
  require_rows(values, off[n], "values", "offsets[-1]");
  if (per_token) require_rows(out, off[n], "out", "offsets[-1]");
  else require_rows(out, n, "out", "number of sequences");
  require_same_features(values, 1, "values", out, 1, "out");
  return row_bytes(values, 1) / static_cast<int64_t>(values.itemsize());
}

bool is_float_type(dl::dtype t) {
  return is(t, dl::dtype_code::Float, 32) || is(t, dl::dtype_code::Float, 64) || is(t, dl::dtype_code::Float, 16) ||
         is(t, dl::dtype_code::Bfloat, 16);
}

// fn(typed pointer to const values, typed pointer to out) for the four float types (same type in and out).
template <class Fn>
void with_float_type(dl::dtype t, const void* v, void* o, Fn&& fn) {
  if (is(t, dl::dtype_code::Float, 32)) fn(static_cast<const float*>(v), static_cast<float*>(o));
  else if (is(t, dl::dtype_code::Float, 64)) fn(static_cast<const double*>(v), static_cast<double*>(o));
  else if (is(t, dl::dtype_code::Float, 16)) fn(static_cast<const scree::float16*>(v), static_cast<scree::float16*>(o));
  else fn(static_cast<const scree::bfloat16*>(v), static_cast<scree::bfloat16*>(o));
}

void require_float(dl::dtype t, const char* op) {
  scree::require(is_float_type(t), ErrorKind::DTypeMismatch, [&] {
    return std::string(op) + " needs a floating-point dtype (float16/32/64, bfloat16), got " + dtype_name(t);
  });
}

// The float-only per-sequence kernels (logsumexp, var / std, softmax / log_softmax): the checks,
// then fn(typed values, typed out, offsets, n, features) without the GIL; out has the values' dtype.
template <class Fn>
void run_float_segments(const InArray& values, const InArray& offsets, OutArray& out, bool per_token, const char* op,
                        Fn&& fn) {
  int64_t n;
  const int64_t* off;
  const int64_t features = segment_args(values, offsets, out, per_token, off, n);
  const dl::dtype t = values.dtype();
  require_float(t, op);
  scree::require(out.dtype() == t, ErrorKind::DTypeMismatch,
                 [&] { return "out must be " + dtype_name(t) + ", got " + dtype_name(out.dtype()); });
  const void* v = values.data();
  void* o = out.data();
  nb::gil_scoped_release release;
  with_float_type(t, v, o, [&](auto* tv, auto* to) { fn(tv, to, off, n, features); });
}

void segment_reduce(const InArray& values, const InArray& offsets, OutArray out, const std::string& op_name) {
  using scree::ops::Reduce;
  if (op_name == "logsumexp") {
    run_float_segments(values, offsets, out, false, "logsumexp", [](auto* tv, auto* to, auto* off, int64_t n, int64_t f) {
      scree::ops::segment_logsumexp(tv, off, n, f, to);
    });
    return;
  }
  int64_t n;
  const int64_t* off;
  const int64_t features = segment_args(values, offsets, out, false, off, n);
  const dl::dtype t = values.dtype();
  Reduce op;
  if (op_name == "sum") op = Reduce::Sum;
  else if (op_name == "mean") op = Reduce::Mean;
  else if (op_name == "max") op = Reduce::Max;
  else if (op_name == "min") op = Reduce::Min;
  else if (op_name == "prod") op = Reduce::Prod;
  else
    throw Error(ErrorKind::InvalidArgument,
                "reduction must be 'sum', 'mean', 'max', 'min', 'prod' or 'logsumexp', got '" + op_name + "'");
  const bool integral = t.code == uint8_t(dl::dtype_code::Int);
  scree::require(!(integral && op == Reduce::Mean), ErrorKind::DTypeMismatch,
                 [&] { return "mean needs a floating-point dtype, got " + dtype_name(t); });
  // Sums and products of integers are int64 (as NumPy and torch); everything else keeps the input dtype.
  const bool widen = integral && (op == Reduce::Sum || op == Reduce::Prod);
  scree::require(widen ? is(out.dtype(), dl::dtype_code::Int, 64) : out.dtype() == t, ErrorKind::DTypeMismatch, [&] {
    return "out must be " + (widen ? std::string("int64") : dtype_name(t)) + ", got " + dtype_name(out.dtype());
  });
  const bool supported = is_float_type(t) || is(t, dl::dtype_code::Int, 32) || is(t, dl::dtype_code::Int, 64);
  scree::require(supported, ErrorKind::DTypeMismatch, [&] {
    return op_name + " does not support dtype " + dtype_name(t) + " (float16/32/64, bfloat16, int32, int64 are supported)";
  });
  const void* v = values.data();
  void* o = out.data();
  nb::gil_scoped_release release;
  auto run = [&](auto* typed_values, auto* typed_out) {
    scree::ops::segment_reduce(typed_values, off, n, features, op, typed_out);
  };
  if (is_float_type(t)) with_float_type(t, v, o, run);
  else if (is(t, dl::dtype_code::Int, 32) && widen) run(static_cast<const int32_t*>(v), static_cast<int64_t*>(o));
  else if (is(t, dl::dtype_code::Int, 32)) run(static_cast<const int32_t*>(v), static_cast<int32_t*>(o));
  else run(static_cast<const int64_t*>(v), static_cast<int64_t*>(o));
}

void segment_var(const InArray& values, const InArray& offsets, OutArray out, int64_t ddof, bool sqrt) {
  scree::require(ddof >= 0, ErrorKind::InvalidArgument, [&] { return "ddof must be >= 0, got " + std::to_string(ddof); });
  run_float_segments(values, offsets, out, false, sqrt ? "std" : "var", [&](auto* tv, auto* to, auto* off, int64_t n, int64_t f) {
    scree::ops::segment_var(tv, off, n, f, ddof, sqrt, to);
  });
}

void segment_cumsum(const InArray& values, const InArray& offsets, OutArray out) {
  int64_t n;
  const int64_t* off;
  const int64_t features = segment_args(values, offsets, out, true, off, n);
  const dl::dtype t = values.dtype();
  const bool integral = is(t, dl::dtype_code::Int, 32) || is(t, dl::dtype_code::Int, 64);
  scree::require(integral || is_float_type(t), ErrorKind::DTypeMismatch, [&] {
    return "cumsum does not support dtype " + dtype_name(t) + " (float16/32/64, bfloat16, int32, int64 are supported)";
  });
  scree::require(integral ? is(out.dtype(), dl::dtype_code::Int, 64) : out.dtype() == t, ErrorKind::DTypeMismatch, [&] {
    return "out must be " + (integral ? std::string("int64") : dtype_name(t)) + ", got " + dtype_name(out.dtype());
  });
  const void* v = values.data();
  void* o = out.data();
  nb::gil_scoped_release release;
  auto run = [&](auto* tv, auto* to) { scree::ops::segment_cumsum(tv, off, n, features, to); };
  if (is(t, dl::dtype_code::Int, 32)) run(static_cast<const int32_t*>(v), static_cast<int64_t*>(o));
  else if (is(t, dl::dtype_code::Int, 64)) run(static_cast<const int64_t*>(v), static_cast<int64_t*>(o));
  else with_float_type(t, v, o, run);
}

void segment_softmax(const InArray& values, const InArray& offsets, OutArray out, bool log) {
  run_float_segments(values, offsets, out, true, log ? "log_softmax" : "softmax",
                     [&](auto* tv, auto* to, auto* off, int64_t n, int64_t f) {
                       scree::ops::segment_softmax(tv, off, n, f, log, to);
                     });
}

#ifdef SCREE_WITH_CUDA
using scree::cuda::OffsetsSummary;

// Starts the device check of 1-D, contiguous int32/int64 offsets on a CUDA GPU: one kernel and one
// event on `stream` (an int cudaStream_t, the framework's current stream of that device). Every
// check here is on metadata only: nothing reads the offsets on the host.
std::unique_ptr<OffsetsSummary> offsets_summary_cuda(const InArray& offsets, uintptr_t stream,
                                                     const std::optional<OutArray>& device_copy) {
  scree::require(offsets.device_type() == nb::device::cuda::value, ErrorKind::Unsupported, [&] {
    return "offsets must be on a CUDA device for offsets_summary_cuda, got " +
           device_str(offsets.device_type(), offsets.device_id()) + " (host offsets are checked with validate_offsets)";
  });
  require_ndim(offsets, 1, "offsets");
  require_dtype_index(offsets, "offsets");
  require_contiguous(offsets, "offsets");
  const int64_t count = static_cast<int64_t>(offsets.shape(0));
  scree::require(count >= 1, ErrorKind::InvalidOffsets,
                 [] { return std::string("offsets must be a 1-D array of n+1 >= 1 entries, got none"); });
  int64_t* copy = nullptr;
  if (device_copy) {
    const OutArray& c = *device_copy;
    scree::require(c.device_type() == offsets.device_type() && c.device_id() == offsets.device_id() && c.ndim() == 1 &&
                       c.shape(0) == 4 && is(c.dtype(), dl::dtype_code::Int, 64) && c.stride(0) == 1,
                   ErrorKind::InvalidArgument, [] {
                     return std::string("device_copy must be a contiguous int64 array of 4 on the offsets' device");
                   });
    copy = static_cast<int64_t*>(c.data());
  }
  return OffsetsSummary::start(offsets.data(), count, is(offsets.dtype(), dl::dtype_code::Int, 64),
                               static_cast<int>(offsets.device_id()), reinterpret_cast<void*>(stream), copy);
}

// The four numbers as a fresh NumPy int64 array. Waiting (only when not ready) releases the GIL, so
// other Python threads run while this one waits for the device.
nb::ndarray<nb::numpy, int64_t, nb::shape<4>> offsets_summary_value(OffsetsSummary& s) {
  std::array<int64_t, 4> v;
  if (s.ready()) {
    v = s.value();
  } else {
    nb::gil_scoped_release release;
    v = s.value();
  }
  auto* data = new int64_t[4]{v[0], v[1], v[2], v[3]};
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<int64_t*>(p); });
  return nb::ndarray<nb::numpy, int64_t, nb::shape<4>>(data, {4}, owner);
}
#endif

}  // namespace

void register_layout(nb::module_& m) {
  m.def("validate_offsets", &validate_offsets, nb::arg("offsets"), nb::arg("total"),
        "Check the ragged invariants of 1-D int32/int64 host `offsets` against `total` rows.\n"
        "Returns (num_sequences, total, max_length); raises scree.RaggedError naming the first bad index.");
  m.def("validate_paged", &validate_paged, nb::arg("page_table"), nb::arg("kv_lens"), nb::arg("num_pages"),
        nb::arg("page_size"),
        "Check a paged KV cache's host page_table (n, width) and kv_lens (n,) (int32/int64) against\n"
        "num_pages pages of page_size tokens. Returns (max_kv_len, max_pages); raises\n"
        "scree.RaggedError naming the first sequence whose length is negative or past its row,\n"
        "or whose page id is outside the cache.");
  m.def("offsets_from_lengths", &offsets_from_lengths, nb::arg("lengths"), nb::arg("out"),
        "Write offsets (int64, n+1) from host lengths into `out`; returns max_length.");
  m.def("pack", &pack, nb::arg("sources"), nb::arg("offsets"), nb::arg("out"),
        "Copy each source array into out[offsets[i]:offsets[i+1]].");
  m.def("pack_addresses", &pack_addresses, nb::arg("addresses"), nb::arg("offsets"), nb::arg("out"),
        "pack from raw addresses (int64, one per sequence): the rows of sequence i lie contiguously\n"
        "from addresses[i] in out's dtype and row size, which the caller guarantees (scree.pack does,\n"
        "from the arrays it checked). Offsets, sizes and null addresses are checked here.");
  m.def("pad", &pad, nb::arg("values"), nb::arg("offsets"), nb::arg("padded"), nb::arg("mask").none(),
        nb::arg("pad_value"), nb::arg("left"),
        "Scatter values (total, *f) into padded (n, max_len, *f), filling gaps with pad_value; fill mask.");
  m.def("unpad", &unpad, nb::arg("padded"), nb::arg("offsets"), nb::arg("values"), nb::arg("left"),
        "Inverse of pad given the offsets of the result.");
  m.def("mask_offsets", &mask_offsets, nb::arg("mask"), nb::arg("out"),
        "Offsets (int64, n+1) from a (n, max_len) mask.");
  m.def("unpad_mask", &unpad_mask, nb::arg("padded"), nb::arg("mask"), nb::arg("offsets"), nb::arg("values"),
        "values = padded[mask], row order, with offsets from mask_offsets.");
  m.def("gather_offsets", &gather_offsets, nb::arg("offsets"), nb::arg("indices"), nb::arg("out"),
        "Offsets of the sequences `indices` (int64) of a layout.");
  m.def("gather", &gather, nb::arg("values"), nb::arg("offsets"), nb::arg("indices"), nb::arg("out_offsets"),
        nb::arg("out"), "Copy the sequences `indices` into out.");
  m.def("positions", &positions, nb::arg("offsets"), nb::arg("out"), "Index of each token within its sequence.");
  m.def("segment_ids", &segment_ids, nb::arg("offsets"), nb::arg("out"), "Sequence index of each token.");
  m.def("segment_reduce", &segment_reduce, nb::arg("values"), nb::arg("offsets"), nb::arg("out"), nb::arg("op"),
        "Per-sequence 'sum', 'mean', 'max', 'min', 'prod' or 'logsumexp' over tokens into out (n, *f).");
  m.def("segment_var", &segment_var, nb::arg("values"), nb::arg("offsets"), nb::arg("out"), nb::arg("ddof"),
        nb::arg("sqrt"), "Per-sequence variance (standard deviation when sqrt) over tokens into out (n, *f).");
  m.def("segment_cumsum", &segment_cumsum, nb::arg("values"), nb::arg("offsets"), nb::arg("out"),
        "Per-sequence running sum over tokens into out (total, *f); integers into int64.");
  m.def("segment_softmax", &segment_softmax, nb::arg("values"), nb::arg("offsets"), nb::arg("out"), nb::arg("log"),
        "Per-sequence softmax (log_softmax when log) over tokens into out (total, *f).");
#ifdef SCREE_WITH_CUDA
  nb::class_<OffsetsSummary>(
      m, "OffsetsSummary", nb::dynamic_attr(),
      "The device check of offsets in flight (offsets_summary_cuda): [offsets[0], offsets[-1], smallest step,\n"
      "largest step] written by one kernel into pinned host memory, an event behind it.")
      .def("ready", &OffsetsSummary::ready, "Whether the four numbers have reached the host (never blocks).")
      .def("value", &offsets_summary_value,
           "The four numbers as a new int64 NumPy array; waits for the device only when not ready().");
  m.def("offsets_summary_cuda", &offsets_summary_cuda, nb::arg("offsets"), nb::arg("stream"),
        nb::arg("device_copy").none() = nb::none(),
        "Start the device check of 1-D contiguous int32/int64 `offsets` on a CUDA GPU on `stream` (an int\n"
        "cudaStream_t): one kernel and one event, no synchronisation. Returns an OffsetsSummary to poll.\n"
        "`device_copy` (optional, int64 (4,) on the same device) receives the four numbers too.");
#endif
}

}  // namespace scree::bindings
