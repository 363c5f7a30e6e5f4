// Checks at the Python boundary: turn an nb::ndarray (NumPy, torch, anything with DLPack) into a
// raw pointer only after its device, dtype, rank and contiguity are right, raising scree::Error
// (mapped to typed Python exceptions) that names the argument otherwise. Shared by every binding.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <string>

#include "scree/error.h"
#include "scree/layout.h"

namespace scree::bindings {

namespace nb = nanobind;
using scree::Error;
using scree::ErrorKind;

using InArray = nb::ndarray<nb::ro>;
using OutArray = nb::ndarray<>;
namespace dl = nb::dlpack;

inline std::string dtype_name(dl::dtype t) {
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

inline bool is(dl::dtype t, dl::dtype_code code, int bits) { return t.code == uint8_t(code) && t.bits == bits && t.lanes == 1; }
inline bool is_index(dl::dtype t) { return is(t, dl::dtype_code::Int, 32) || is(t, dl::dtype_code::Int, 64); }

inline std::string shape_str(const nb::ndarray<nb::ro>& a) {
  std::string s = "(";
  for (size_t i = 0; i < a.ndim(); ++i) s += std::to_string(a.shape(i)) + (a.ndim() == 1 || i + 1 < a.ndim() ? "," : "");
  return s + ")";
}

// "cpu", "cuda:1", or the DLPack device type number for anything else (e.g. "DLPack device 8").
inline std::string device_str(int type, int id) {
  if (type == nb::device::cpu::value) return "cpu";
  if (type == nb::device::cuda::value) return "cuda:" + std::to_string(id);
  return "DLPack device " + std::to_string(type) + ":" + std::to_string(id);
}

// The device one kernel call runs on (its first array's); every other array must be there too.
struct CallDevice {
  int type = nb::device::cpu::value;
  int id = 0;
  bool cuda() const { return type == nb::device::cuda::value; }
  std::string str() const { return device_str(type, id); }
};

// `name` must live on `dev` (same DLPack device type and, for GPUs, the same ordinal): a kernel
// handed a pointer of another device would fault, so this is checked before any pointer is used.
template <class A>
void require_on(const A& a, const char* name, const CallDevice& dev, const char* ref_name) {
  const bool same = a.device_type() == dev.type && (dev.type == nb::device::cpu::value || a.device_id() == dev.id);
  scree::require(same, ErrorKind::InvalidArgument, [&] {
    return std::string(name) + " is on " + device_str(a.device_type(), a.device_id()) + " but " + ref_name +
           " is on " + dev.str() + ": all arrays of one call must be on the same device";
  });
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

// A host int64 offsets array of length n+1, contiguous (what the Python Array keeps), checked
// against `total` rows (total < 0: only monotonicity and offsets[0] == 0) before any kernel trusts it: an Array built with validate=False must give
// an error, not a crash. O(n), small next to the O(total) work of every kernel that reads it.
inline const int64_t* host_offsets(const InArray& offsets, int64_t total, int64_t& n) {
  require_cpu(offsets, "offsets");
  require_ndim(offsets, 1, "offsets");
  require_int64(offsets, "offsets");
  require_contiguous(offsets, "offsets");
  scree::require(offsets.shape(0) >= 1, ErrorKind::InvalidOffsets, [] { return std::string("offsets must not be empty"); });
  n = static_cast<int64_t>(offsets.shape(0)) - 1;
  const auto* off = static_cast<const int64_t*>(offsets.data());
  scree::RaggedLayout::from_offsets(off, n + 1, 1, total < 0 ? off[n] : total);
  return off;
}

// Rows (first dimension) of an array, or -2 for a 0-D one so that no offsets can match it.
template <class A>
int64_t rows_of(const A& a) {
  return a.ndim() == 0 ? -2 : static_cast<int64_t>(a.shape(0));
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

}  // namespace scree::bindings
