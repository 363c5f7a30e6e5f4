// scree::Error: the one exception type the C++ core throws. `kind` tells a binding which
// Python class to raise (ValueError or TypeError subclasses), so callers never see a crash.
#pragma once

#include <stdexcept>
#include <string>

namespace scree {

enum class ErrorKind {
  InvalidOffsets,   // offsets break the ragged-layout invariants      -> scree.RaggedError (ValueError)
  ShapeMismatch,    // shapes of arguments disagree                   -> scree.ShapeError (ValueError)
  DTypeMismatch,    // wrong or mismatched element types              -> scree.DTypeError (TypeError)
  Unsupported,      // a valid request this build cannot serve        -> scree.UnsupportedError (ValueError)
  InvalidArgument,  // any other bad argument                          -> scree.ArgumentError (ValueError)
  DeviceFailure,    // the device runtime reported an error (a launch) -> scree.DeviceError (RuntimeError)
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

// Throws Error(kind, message) when `ok` is false; message is built only on failure.
template <class MakeMessage>
inline void require(bool ok, ErrorKind kind, MakeMessage&& make_message) {
  if (!ok) throw Error(kind, make_message());
}

}  // namespace scree
