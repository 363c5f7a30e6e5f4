// The C++ tests' and fuzzers' conversions between double and scree's element types (float,
// double, scree::float16, scree::bfloat16) and the DType each stands for, written once.
#pragma once

#include <type_traits>

#include "scree/dtypes.h"

namespace scree::test {

template <class T>
T from_double(double x) {
  if constexpr (std::is_same_v<T, scree::float16>)
    return scree::to_float16(float(x));
  else if constexpr (std::is_same_v<T, scree::bfloat16>)
    return scree::to_bfloat16(float(x));
  else
    return T(x);
}

template <class T>
double to_double(T x) {
  if constexpr (std::is_same_v<T, scree::float16> || std::is_same_v<T, scree::bfloat16>)
    return double(scree::to_float(x));
  else
    return double(x);
}

template <class T>
constexpr scree::DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return scree::DType::Float32;
  if constexpr (std::is_same_v<T, double>) return scree::DType::Float64;
  if constexpr (std::is_same_v<T, scree::float16>) return scree::DType::Float16;
  return scree::DType::BFloat16;
}

}  // namespace scree::test
