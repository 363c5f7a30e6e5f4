// The Python class (in scree/_errors.py) each scree::ErrorKind stands for, shared by the nanobind
// exception translator (python.cpp) and the XLA FFI handlers (xla_ffi.cpp), whose errors reach
// Python as JAX's runtime error carrying "scree.<Class>: message" (scree/_connect/jax.py raises
// the class again where the call is eager).
#pragma once

#include "scree/error.h"

namespace scree::bindings {

inline const char* error_class_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::InvalidOffsets: return "RaggedError";
    case ErrorKind::ShapeMismatch: return "ShapeError";
    case ErrorKind::DTypeMismatch: return "DTypeError";
    case ErrorKind::Unsupported: return "UnsupportedError";
    case ErrorKind::InvalidArgument: return "ArgumentError";
    case ErrorKind::DeviceFailure: return "DeviceError";
  }
  return "ScreeError";
}

}  // namespace scree::bindings
