// Row conversions between storage types (float, double, float16, bfloat16) and the compute type
// of the CPU attention (float, or double for double inputs), and values and vectors read as it.
// With F16C (the AVX2 build) half floats convert 8 at a time; bfloat16 is a 16-bit shift, which
// the compiler vectorises.
#pragma once

#include "isa.h"

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "scree/dtypes.h"
#include "simd.h"

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

// A float vector's worth of bfloat16 bits (load_as).
typedef uint16_t BFloat16Bits __attribute__((vector_size(kVectorBytes / 2)));

// One value as the compute type.
template <class C, class T>
inline C as_compute(T x) {
  C c;
  to_compute(&x, &c, 1, C(1));
  return c;
}

// A vector of W values of T at p as the compute type, converted in registers (bfloat16: zero-extend
// and shift; float16 through to_compute's F16C path).
template <class C, class T>
inline vec_t<C> load_as(const T* p) {
  constexpr int W = Simd<C>::width;
  if constexpr (std::is_same_v<T, C>) {
    return load<C>(p);
  } else if constexpr (std::is_same_v<T, bfloat16> && std::is_same_v<C, float>) {
    // One zero-extending load and a shift: GCC's code for the generic form below widened the two
    // halves separately and joined them (5 more uops a vector: the bf16 decode's products).
#if defined(__AVX512F__)
    if constexpr (W == 16) {
      const __m512 v = _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
      return reinterpret_cast<const vec_t<C>&>(v);
    }
#endif
#if defined(__AVX2__)
    if constexpr (W == 8) {
      const __m256 v = _mm256_castsi256_ps(
          _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
      return reinterpret_cast<const vec_t<C>&>(v);
    }
#endif
    using ivec = typename Simd<float>::ivec;
    static_assert(sizeof(BFloat16Bits) * 2 == sizeof(ivec), "one 16-bit lane a float lane");
    BFloat16Bits h;
    std::memcpy(&h, p, sizeof(h));
    const ivec bits = __builtin_convertvector(h, ivec) << 16;
    vec_t<C> v;
    std::memcpy(&v, &bits, sizeof(v));
    return v;
  } else {
    alignas(64) C tmp[W];
    to_compute(p, tmp, W, C(1));
    return load<C>(tmp);
  }
}

// Pair layout: for bfloat16 storage, 2 W values read as W 32-bit words, each word's low half
// (shifted up) and high half (masked) are the even and odd values as floats: two integer ops, no
// shuffles (load_as's zero-extend is one, on the same port as the horizontal sums). A row of
// floats in pair layout holds each run of 2 W values as its W even values, then its W odd ones;
// pair_span says how many of a row's n leading values go so (whole runs; bfloat16 only), the
// rest stay in order.
template <class T, class C>
inline constexpr bool kPairLayout = std::is_same_v<T, bfloat16> && std::is_same_v<C, float>;
template <class T, class C>
inline int64_t pair_span(int64_t n) {
  constexpr int W = Simd<C>::width;
  return kPairLayout<T, C> ? n / (2 * W) * (2 * W) : 0;
}
// The even and odd values of 2 W bfloat16 values at p.
template <class C>
inline void load_pair(const bfloat16* p, vec_t<C>& even, vec_t<C>& odd) {
  using ivec = typename Simd<C>::ivec;
  ivec w;
  std::memcpy(&w, p, sizeof(w));
  const ivec lo = w << 16, hi = w & ivec{} + int32_t(0xffff0000u);
  std::memcpy(&even, &lo, sizeof(even));
  std::memcpy(&odd, &hi, sizeof(odd));
}
// x[0, n2) from natural order into pair layout (n2 = pair_span), or back.
template <class C>
inline void to_pair_layout(C* x, int64_t n2) {
  constexpr int W = Simd<C>::width;
  C tmp[2 * W];
  for (int64_t c = 0; c < n2; c += 2 * W) {
    for (int i = 0; i < W; ++i) tmp[i] = x[c + 2 * i], tmp[W + i] = x[c + 2 * i + 1];
    std::memcpy(x + c, tmp, sizeof(tmp));
  }
}
template <class C>
inline void from_pair_layout(C* x, int64_t n2) {
  constexpr int W = Simd<C>::width;
  C tmp[2 * W];
  for (int64_t c = 0; c < n2; c += 2 * W) {
    for (int i = 0; i < W; ++i) tmp[2 * i] = x[c + i], tmp[2 * i + 1] = x[c + W + i];
    std::memcpy(x + c, tmp, sizeof(tmp));
  }
}

// sum q[i] k[i] over n values, k as stored (converted in registers), q's first n2 values in pair
// layout (n2 = pair_span<T, C>(n); 0 for T = C), in vectors with two independent sums: the plain
// loop is one chain of n dependent FMAs, which the compiler may not reorder (no -ffast-math): 4
// cycles each, 15% of a 4 x 16-token backward (delta = rowsum(dO * O), perf, an Ice Lake Xeon).
template <class C, class T>
inline C dot_as(const C* q, const T* k, int64_t n, int64_t n2 = 0) {
  constexpr int W = Simd<C>::width;
  vec_t<C> s0{}, s1{};
  int64_t i = 0;
  if constexpr (kPairLayout<T, C>) {
    for (; i < n2; i += 2 * W) {
      vec_t<C> e, o;
      load_pair<C>(k + i, e, o);
      s0 += load<C>(q + i) * e;
      s1 += load<C>(q + i + W) * o;
    }
  }
  for (; i + 2 * W <= n; i += 2 * W) {
    s0 += load<C>(q + i) * load_as<C>(k + i);
    s1 += load<C>(q + i + W) * load_as<C>(k + i + W);
  }
  for (; i + W <= n; i += W) s0 += load<C>(q + i) * load_as<C>(k + i);
  C out = hsum<C>(s0 + s1);
  for (; i < n; ++i) out += q[i] * as_compute<C>(k[i]);
  return out;
}

SCREE_CPU_NAMESPACE_END
