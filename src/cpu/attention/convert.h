// Row conversions between storage types (float, double, float16, bfloat16) and the compute type
// of the CPU attention (float, or double for double inputs). With F16C (the AVX2 build) half
// floats convert 8 at a time; bfloat16 is a 16-bit shift, which the compiler vectorises.
#pragma once

#include "isa.h"

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "scree/dtypes.h"

SCREE_CPU_NAMESPACE_BEGIN

template <class T>
using compute_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <class T, class C>
inline void to_compute(const T* src, C* dst, int64_t n, C scale) {
  if constexpr (std::is_same_v<T, bfloat16>) {
    for (int64_t i = 0; i < n; ++i) {
      uint32_t bits = uint32_t(src[i].bits) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      dst[i] = f * scale;
    }
  } else if constexpr (std::is_same_v<T, float16>) {
    int64_t i = 0;
#if defined(__F16C__)
    const __m256 s = _mm256_set1_ps(scale);
    for (; i + 8 <= n; i += 8) {
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
      _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_cvtph_ps(h), s));
    }
#endif
    for (; i < n; ++i) dst[i] = to_float(src[i]) * scale;
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = C(src[i]) * scale;
  }
}

template <class T, class C>
inline void from_compute(const C* src, T* dst, int64_t n) {
  if constexpr (std::is_same_v<T, bfloat16>) {
    for (int64_t i = 0; i < n; ++i) dst[i] = to_bfloat16(src[i]);
  } else if constexpr (std::is_same_v<T, float16>) {
    int64_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8) {
      __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
    }
#endif
    for (; i < n; ++i) dst[i] = to_float16(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = T(src[i]);
  }
}

SCREE_CPU_NAMESPACE_END
