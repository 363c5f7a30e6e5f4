// nanobind module `scree._C`: unpacks nb::ndarray (DLPack / buffer protocol, so NumPy arrays and
// torch CPU tensors arrive zero-copy) into raw pointers, checks shapes and dtypes once, releases
// the GIL and calls the C++ kernels. Outputs are allocated by the Python caller in its framework,
// so this file never needs to know which framework an array came from.
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

#ifdef SCREE_WITH_CUDA
#include "scree/cuda_runtime.h"
#endif
#include "scree/dtypes.h"
#include "scree/error.h"
#include "scree/layout.h"
#include "scree/ops/pack.h"
#include "scree/ops/reduce.h"
#include "scree/ops/segments.h"

namespace nb = nanobind;
using scree::Error;
using scree::ErrorKind;

namespace {

using InArray = nb::ndarray<nb::ro>;
using OutArray = nb::ndarray<>;
namespace dl = nb::dlpack;

std::string dtype_name(dl::dtype t) {
  switch (static_cast<dl::dtype_code>(t.code)) {
    case dl::dtype_code::Int: return "int" + std::to_string(t.bits);
    case dl::dtype_code::UInt: return "uint" + std::to_string(t.bits);
    case dl::dtype_code::Float: return "float" + std::to_string(t.bits);
    case dl::dtype_code::Bfloat: return "bfloat" + std::to_string(t.bits);
    case dl::dtype_code::Bool: return "bool";
    case dl::dtype_code::Complex: return "complex" + std::to_string(t.bits);
    default: return "dtype(code=" + std::to_string(t.code) + ", bits=" + std::to_string(t.bits) + ")";
  }
}

bool is(dl::dtype t, dl::dtype_code code, int bits) { return t.code == uint8_t(code) && t.bits == bits && t.lanes == 1; }
bool is_index(dl::dtype t) { return is(t, dl::dtype_code::Int, 32) || is(t, dl::dtype_code::Int, 64); }

std::string shape_str(const nb::ndarray<nb::ro>& a) {
  std::string s = "(";
  for (size_t i = 0; i < a.ndim(); ++i) s += std::to_string(a.shape(i)) + (a.ndim() == 1 || i + 1 < a.ndim() ? "," : "");
  return s + ")";
}

template <class A>
void require_cpu(const A& a, const char* name) {
  scree::require(a.device_type() == nb::device::cpu::value, ErrorKind::Unsupported, [&] {
    return std::string(name) + " must be in host (CPU) memory for this kernel, got DLPack device type " +
           std::to_string(a.device_type());
  });
}

// Row-major contiguity; strides of size-1 dimensions do not matter, and an array with no elements
// is contiguous whatever its strides (NumPy 2 and torch give empty arrays arbitrary strides).
template <class A>
void require_contiguous(const A& a, const char* name) {
  if (a.size() == 0) return;
  int64_t expected = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expected)
      throw Error(ErrorKind::InvalidArgument, std::string(name) + " must be C-contiguous (row-major)");
    expected *= static_cast<int64_t>(a.shape(i));
  }
}

template <class A>
void require_dtype_index(const A& a, const char* name) {
  scree::require(is_index(a.dtype()), ErrorKind::DTypeMismatch,
                 [&] { return std::string(name) + " must be int32 or int64, got " + dtype_name(a.dtype()); });
}

template <class A>
void require_int64(const A& a, const char* name) {
  scree::require(is(a.dtype(), dl::dtype_code::Int, 64), ErrorKind::DTypeMismatch,
                 [&] { return std::string(name) + " must be int64, got " + dtype_name(a.dtype()); });
}

template <class A>
void require_ndim(const A& a, size_t ndim, const char* name) {
  scree::require(a.ndim() == ndim, ErrorKind::ShapeMismatch, [&] {
    return std::string(name) + " must be " + std::to_string(ndim) + "-D, got " + std::to_string(a.ndim()) + "-D";
  });
}

template <class A, class B>
void require_same_dtype(const A& a, const char* an, const B& b, const char* bn) {
  scree::require(a.dtype() == b.dtype(), ErrorKind::DTypeMismatch, [&] {
    return std::string(an) + " and " + bn + " must have the same dtype, got " + dtype_name(a.dtype()) + " and " +
           dtype_name(b.dtype());
  });
}

// A host int64 offsets array of length n+1, contiguous (what the Python Array keeps).
const int64_t* host_offsets(const InArray& offsets, int64_t& n) {
  require_cpu(offsets, "offsets");
  require_ndim(offsets, 1, "offsets");
  require_int64(offsets, "offsets");
  require_contiguous(offsets, "offsets");
  scree::require(offsets.shape(0) >= 1, ErrorKind::InvalidOffsets, [] { return std::string("offsets must not be empty"); });
  n = static_cast<int64_t>(offsets.shape(0)) - 1;
  return static_cast<const int64_t*>(offsets.data());
}

// Rows of a (rows, *feature) array starting at dimension `lead`; returns bytes per row.
template <class A>
int64_t row_bytes(const A& a, size_t lead) {
  int64_t b = static_cast<int64_t>(a.itemsize());
  for (size_t i = lead; i < a.ndim(); ++i) b *= static_cast<int64_t>(a.shape(i));
  return b;
}

// Checks that b's dims [b_lead, ndim) equal a's dims [a_lead, ndim) (the feature shape).
template <class A, class B>
void require_same_features(const A& a, size_t a_lead, const char* an, const B& b, size_t b_lead, const char* bn) {
  bool ok = a.ndim() - a_lead == b.ndim() - b_lead;
  for (size_t i = 0; ok && a_lead + i < a.ndim(); ++i) ok = a.shape(a_lead + i) == b.shape(b_lead + i);
  scree::require(ok, ErrorKind::ShapeMismatch, [&] {
    return std::string(an) + " and " + bn + " must have the same feature shape";
  });
}

template <class A>
void require_rows(const A& a, int64_t rows, const char* name, const char* what) {
  scree::require(a.ndim() >= 1 && static_cast<int64_t>(a.shape(0)) == rows, ErrorKind::ShapeMismatch, [&] {
    return std::string(name) + ".shape[0] must be " + std::to_string(rows) + " (" + what + "), got " +
           (a.ndim() == 0 ? std::string("a 0-D array") : std::to_string(a.shape(0)));
  });
}

template <class A>
void require_kernel_input(const A& a, const char* name) {
  require_cpu(a, name);
  require_contiguous(a, name);
}

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

void pack(const std::vector<InArray>& sources, const InArray& offsets, OutArray out) {
  int64_t n;
  const int64_t* off = host_offsets(offsets, n);
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
  const int64_t rb = row_bytes(out, 1);
  nb::gil_scoped_release release;
  scree::ops::pack(ptrs.data(), off, n, rb, out.data());
}

void pad(const InArray& values, const InArray& offsets, OutArray padded, std::optional<OutArray> mask,
         const InArray& pad_value, bool left) {
  int64_t n;
  const int64_t* off = host_offsets(offsets, n);
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
      return "sequence " + std::to_string(i) + " has length " + std::to_string(off[i + 1] - off[i]) +
             " > padded length " + std::to_string(max_len);
    });
  uint8_t* m = nullptr;
  if (mask) {
    require_kernel_input(*mask, "mask");
    scree::require(mask->itemsize() == 1 && mask->ndim() == 2 && static_cast<int64_t>(mask->shape(0)) == n &&
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
  const int64_t* off = host_offsets(offsets, n);
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
      return "lengths[" + std::to_string(i) + "] = " + std::to_string(off[i + 1] - off[i]) +
             " exceeds the padded length " + std::to_string(max_len);
    });
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
  const int64_t* off = host_offsets(offsets, n);
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
  const int64_t* off = host_offsets(offsets, n);
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
  const int64_t* off = host_offsets(offsets, n);
  const int64_t* out_off = host_offsets(out_offsets, count);
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
  const int64_t* off = host_offsets(offsets, n);
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

void segment_reduce(const InArray& values, const InArray& offsets, OutArray out, const std::string& op_name) {
  using scree::ops::Reduce;
  int64_t n;
  const int64_t* off = host_offsets(offsets, n);
  require_kernel_input(values, "values");
  require_kernel_input(out, "out");
  require_rows(values, off[n], "values", "offsets[-1]");
  require_rows(out, n, "out", "number of sequences");
  require_same_features(values, 1, "values", out, 1, "out");
  Reduce op;
  if (op_name == "sum") op = Reduce::Sum;
  else if (op_name == "mean") op = Reduce::Mean;
  else if (op_name == "max") op = Reduce::Max;
  else throw Error(ErrorKind::InvalidArgument, "reduction must be 'sum', 'mean' or 'max', got '" + op_name + "'");
  const int64_t features = row_bytes(values, 1) / static_cast<int64_t>(values.itemsize());
  const dl::dtype t = values.dtype();
  const bool integral = t.code == uint8_t(dl::dtype_code::Int);
  scree::require(!(integral && op == Reduce::Mean), ErrorKind::DTypeMismatch,
                 [&] { return "mean needs a floating-point dtype, got " + dtype_name(t); });
  // Sum of integers is int64 (as NumPy and torch); everything else keeps the input dtype.
  const bool widen = integral && op == Reduce::Sum;
  scree::require(widen ? is(out.dtype(), dl::dtype_code::Int, 64) : out.dtype() == t, ErrorKind::DTypeMismatch, [&] {
    return "out must be " + (widen ? std::string("int64") : dtype_name(t)) + ", got " + dtype_name(out.dtype());
  });
  const bool supported = is(t, dl::dtype_code::Float, 32) || is(t, dl::dtype_code::Float, 64) ||
                         is(t, dl::dtype_code::Float, 16) || is(t, dl::dtype_code::Bfloat, 16) ||
                         is(t, dl::dtype_code::Int, 32) || is(t, dl::dtype_code::Int, 64);
  scree::require(supported, ErrorKind::DTypeMismatch, [&] {
    return op_name + " does not support dtype " + dtype_name(t) + " (float16/32/64, bfloat16, int32, int64 are supported)";
  });
  const void* v = values.data();
  void* o = out.data();
  nb::gil_scoped_release release;
  auto run = [&](auto* typed_values, auto* typed_out) {
    scree::ops::segment_reduce(typed_values, off, n, features, op, typed_out);
  };
  if (is(t, dl::dtype_code::Float, 32)) run(static_cast<const float*>(v), static_cast<float*>(o));
  else if (is(t, dl::dtype_code::Float, 64)) run(static_cast<const double*>(v), static_cast<double*>(o));
  else if (is(t, dl::dtype_code::Float, 16)) run(static_cast<const scree::float16*>(v), static_cast<scree::float16*>(o));
  else if (is(t, dl::dtype_code::Bfloat, 16)) run(static_cast<const scree::bfloat16*>(v), static_cast<scree::bfloat16*>(o));
  else if (is(t, dl::dtype_code::Int, 32) && widen) run(static_cast<const int32_t*>(v), static_cast<int64_t*>(o));
  else if (is(t, dl::dtype_code::Int, 32)) run(static_cast<const int32_t*>(v), static_cast<int32_t*>(o));
  else run(static_cast<const int64_t*>(v), static_cast<int64_t*>(o));
}

// Maps scree::Error kinds onto the Python classes defined in scree/_errors.py.
void translate(const std::exception_ptr& p, void*) {
  try {
    std::rethrow_exception(p);
  } catch (const Error& e) {
    const char* cls_name = "ScreeError";
    switch (e.kind()) {
      case ErrorKind::InvalidOffsets: cls_name = "RaggedError"; break;
      case ErrorKind::ShapeMismatch: cls_name = "ShapeError"; break;
      case ErrorKind::DTypeMismatch: cls_name = "DTypeError"; break;
      case ErrorKind::Unsupported: cls_name = "UnsupportedError"; break;
      case ErrorKind::InvalidArgument: cls_name = "ArgumentError"; break;
    }
    try {
      nb::object cls = nb::module_::import_("scree._errors").attr(cls_name);
      PyErr_SetString(cls.ptr(), e.what());
    } catch (const nb::python_error&) {
      PyErr_SetString(PyExc_ValueError, e.what());  // scree._errors unavailable: still no crash
    }
  }
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "scree's compiled core: ragged-layout validation and CPU layout kernels.";
  nb::register_exception_translator(translate);

#ifdef SCREE_WITH_CUDA
  constexpr bool with_cuda = true;
  auto device_count = [] { return scree::cuda::device_count(); };
#else
  constexpr bool with_cuda = false;
  auto device_count = [] { return 0; };
#endif
  m.def("cuda_compiled", [] { return with_cuda; }, "Whether this build of scree compiled its CUDA sources.");
  m.def("cuda_device_count", device_count, "Visible CUDA devices (0 without a driver or in a CPU-only build).");

  m.def("validate_offsets", &validate_offsets, nb::arg("offsets"), nb::arg("total"),
        "Check the ragged invariants of 1-D int32/int64 host `offsets` against `total` rows.\n"
        "Returns (num_sequences, total, max_length); raises scree.RaggedError naming the first bad index.");
  m.def("offsets_from_lengths", &offsets_from_lengths, nb::arg("lengths"), nb::arg("out"),
        "Write offsets (int64, n+1) from host lengths into `out`; returns max_length.");
  m.def("pack", &pack, nb::arg("sources"), nb::arg("offsets"), nb::arg("out"),
        "Copy each source array into out[offsets[i]:offsets[i+1]].");
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
        "Per-sequence 'sum', 'mean' or 'max' over tokens into out (n, *f).");
}
