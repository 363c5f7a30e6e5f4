// Portable SIMD for the CPU attention kernels: GCC/Clang vector extensions, 64 bytes wide with
// AVX-512 (16 floats / 8 doubles), 32 with AVX and 16 without, so the same source compiles to
// AVX-512 in the TU built with -mavx512f, to AVX2+FMA with -mavx2 -mfma and to SSE2 in the generic TU. exp/tanh are polynomial, vectorised,
// accurate to ~2 ulp in float (the softmax error is dominated by fp32 accumulation, not by exp).
#pragma once

#include "isa.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <type_traits>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

SCREE_CPU_NAMESPACE_BEGIN

#if defined(__AVX512F__)
// 16 x 16 transpose of 32-bit elements: out row r (ld_out elements apart) = column r of the 16 rows
// at x (ld_bytes apart, any alignment). Stage 1 interleaves 32-bit elements of row pairs, 2 64-bit
// elements of row quads, 3-4 gather 128-bit lanes: 64 shuffles, 16 loads and 16 stores against 256
// scalar loads and 256 stores a line apart.
inline void transpose16x16(const void* x, int64_t ld_bytes, uint32_t* out, int64_t ld_out) {
  __m512i a[16], b[16];
  for (int j = 0; j < 16; ++j) a[j] = _mm512_loadu_si512(static_cast<const char*>(x) + j * ld_bytes);
  for (int j = 0; j < 16; j += 2) {
    b[j] = _mm512_unpacklo_epi32(a[j], a[j + 1]);
    b[j + 1] = _mm512_unpackhi_epi32(a[j], a[j + 1]);
  }
  for (int j = 0; j < 16; j += 4) {
    a[j] = _mm512_unpacklo_epi64(b[j], b[j + 2]);
    a[j + 1] = _mm512_unpackhi_epi64(b[j], b[j + 2]);
    a[j + 2] = _mm512_unpacklo_epi64(b[j + 1], b[j + 3]);
    a[j + 3] = _mm512_unpackhi_epi64(b[j + 1], b[j + 3]);
  }
  // a[4q + e] holds, in 128-bit lane L, rows 4q .. 4q + 3 of column 4L + e: column 4L + e comes
  // from a[4q + e]'s lane L for q = 0..3.
  for (int e = 0; e < 4; ++e) {
    const __m512i a0 = _mm512_shuffle_i32x4(a[e], a[4 + e], 0x88);       // q0 L0, q0 L2, q1 L0, q1 L2
    const __m512i a1 = _mm512_shuffle_i32x4(a[e], a[4 + e], 0xdd);       // q0 L1, q0 L3, q1 L1, q1 L3
    const __m512i b0 = _mm512_shuffle_i32x4(a[8 + e], a[12 + e], 0x88);  // q2 L0, q2 L2, q3 L0, q3 L2
    const __m512i b1 = _mm512_shuffle_i32x4(a[8 + e], a[12 + e], 0xdd);
    b[e] = _mm512_shuffle_i32x4(a0, b0, 0x88);       // L0: q0 q1 q2 q3 -> column e
    b[8 + e] = _mm512_shuffle_i32x4(a0, b0, 0xdd);   // L2 -> column 8 + e
    b[4 + e] = _mm512_shuffle_i32x4(a1, b1, 0x88);   // L1 -> column 4 + e
    b[12 + e] = _mm512_shuffle_i32x4(a1, b1, 0xdd);  // L3 -> column 12 + e
  }
  for (int r = 0; r < 16; ++r) _mm512_storeu_si512(out + r * ld_out, b[r]);
}
// The widest register transpose of 32-bit elements this build has.
inline constexpr int kTransposeRows = 16;
inline void transpose_block(const void* x, int64_t ld_bytes, uint32_t* out, int64_t ld_out) {
  transpose16x16(x, ld_bytes, out, ld_out);
}
#elif defined(__AVX2__)
// 8 x 8 transpose of 32-bit elements (the AVX2 build's): out row r = column r of the 8 rows at x.
// Pairs of rows interleaved, then 64-bit pairs picked, then the 128-bit halves exchanged.
inline constexpr int kTransposeRows = 8;
inline void transpose_block(const void* x, int64_t ld_bytes, uint32_t* out, int64_t ld_out) {
  __m256 r[8], t[8], u[8];
  for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(reinterpret_cast<const float*>(static_cast<const char*>(x) + j * ld_bytes));
  for (int j = 0; j < 8; j += 2) t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]), t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]);
  // u[4h + c]: columns c and c + 4 of rows 4h .. 4h + 3 (one per 128-bit half)
  for (int h = 0; h < 2; ++h) {
    u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int c = 0; c < 4; ++c) {
    _mm256_storeu_ps(reinterpret_cast<float*>(out + c * ld_out), _mm256_permute2f128_ps(u[c], u[4 + c], 0x20));
    _mm256_storeu_ps(reinterpret_cast<float*>(out + (c + 4) * ld_out), _mm256_permute2f128_ps(u[c], u[4 + c], 0x31));
  }
}
#else
inline constexpr int kTransposeRows = 1;  // no register transpose: callers copy element by element
inline void transpose_block(const void* x, int64_t, uint32_t* out, int64_t) { std::memcpy(out, x, 4); }
#endif

template <class T>
struct Simd;

// 64-byte vectors with AVX-512, 32 bytes where AVX exists, 16 (SSE2, every x86-64) otherwise:
// vector types wider than the ISA compile into slow spills (32 bytes without AVX: ~1.7 GFLOP/s).
#if defined(__AVX512F__)
inline constexpr int kVectorBytes = 64;
#elif defined(__AVX__)
inline constexpr int kVectorBytes = 32;
#else
inline constexpr int kVectorBytes = 16;
#endif

template <>
struct Simd<float> {
  typedef float vec __attribute__((vector_size(kVectorBytes)));
  typedef int32_t ivec __attribute__((vector_size(kVectorBytes)));
  static constexpr int width = kVectorBytes / 4;
};

template <>
struct Simd<double> {
  typedef double vec __attribute__((vector_size(kVectorBytes)));
  typedef int64_t ivec __attribute__((vector_size(kVectorBytes)));
  static constexpr int width = kVectorBytes / 8;
};

template <class T>
using vec_t = typename Simd<T>::vec;

template <class T>
inline vec_t<T> load(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <class T>
inline void store(T* p, vec_t<T> v) {
  std::memcpy(p, &v, sizeof(v));
}

template <class T>
inline vec_t<T> splat(T x) {
  return vec_t<T>{} + x;
}

template <class T>
inline vec_t<T> vmax(vec_t<T> a, vec_t<T> b) {
  return a > b ? a : b;
}

// min(a, b) where a NaN in a stays NaN (so NaN inputs still reach the output).
template <class T>
inline vec_t<T> vmin(vec_t<T> a, vec_t<T> b) {
  return b < a ? b : a;
}

// e^x of U float vectors (vexp<float> is this with U = 1), each step for all U vectors before the
// next. One vector's steps are a chain of ~60 cycles (the reduction, then five multiply-adds of 5
// each); Zen 1's FP scheduler holds ~36 ops, under two vectors' worth, so a loop of single exps
// waits on that chain: the forward's exp pass took 11.8 ns a vector (~28 cycles; the pipes need
// ~13), 9.5 with this form one vector at a time, 8.0 with 2 in lockstep, 7.1 with 4 and 6.9 with 8
// (benchmarks/diag/exp_pass_micro.cpp, the 2-core Zen 1 EPYC VM of benchmarks/NOTES.md's
// twenty-sixth session). The form: the polynomial is a degree-5 minimax one with constant term 1
// (float-evaluated relative error 2.3e-7 on |r| <= ln2 / 2 against the degree-6 Taylor one's
// 2.6e-7; e^0 = 1 exactly); NaN stays NaN (the clamps' compares are false for it).
// Below AVX-512: the clamps are a max and a min; 2^n's exponent bits come from the rounding sum's
// own mantissa (no conversion); the clamp at -127 ln2 makes that exponent field 0, so 2^n = +0 and
// the result 0 with no select (inputs in (-87.7, -87.3] give the denormals e^x is there).
// kNonPositive: x <= 0 or NaN (a softmax's score minus its running max or lse); otherwise x above
// 127.5 ln2 (where 2^n would need n = 128) gives +inf, for two operations more a vector (the upper
// clamp and a select).
// AVX-512: VRNDSCALEPS rounds n and VSCALEFPS applies 2^n, zeroing the lanes below -87.34 (where
// e^x leaves the normal floats; -inf too) through its mask: no denormal reaches the P V products,
// and 11 operations a vector (12 general) against the 15 of the degree-6 Taylor form it replaced.
// VSCALEFPS overflows to +inf where e^x does (88.72); the general form's clamp at 129 ln2 only
// keeps +inf's reduction finite.
template <int U, bool kNonPositive = true>
inline void vexp_lockstep(vec_t<float>* x) {
  using V = vec_t<float>;
  static constexpr float kPoly[] = {0.00829031505f, 0.0418979302f, 0.166676357f, 0.499991506f, 0.999999702f};
#if defined(__AVX512F__)
  if constexpr (kVectorBytes == 64) {
    __m512 xv[U], n[U], p[U];
    __mmask16 keep[U];
    for (int u = 0; u < U; ++u) {
      xv[u] = reinterpret_cast<__m512>(x[u]);
      keep[u] = _mm512_cmp_ps_mask(xv[u], _mm512_set1_ps(-87.3365447504f), _CMP_NLT_UQ);  // NaN kept
      if constexpr (!kNonPositive) xv[u] = _mm512_min_ps(_mm512_set1_ps(129 * 0.693147180559945f), xv[u]);
    }
    for (int u = 0; u < U; ++u)
      n[u] = _mm512_roundscale_ps(_mm512_mul_ps(xv[u], _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    for (int u = 0; u < U; ++u) {  // ln2 split in two for an exact reduction
      xv[u] = _mm512_fnmadd_ps(n[u], _mm512_set1_ps(0.693145751953125f), xv[u]);
      xv[u] = _mm512_fnmadd_ps(n[u], _mm512_set1_ps(1.42860682030941723212e-6f), xv[u]);
    }
    for (int u = 0; u < U; ++u) p[u] = _mm512_set1_ps(kPoly[0]);
    for (int i = 1; i < 5; ++i)
      for (int u = 0; u < U; ++u) p[u] = _mm512_fmadd_ps(p[u], xv[u], _mm512_set1_ps(kPoly[i]));
    for (int u = 0; u < U; ++u) {
      p[u] = _mm512_fmadd_ps(p[u], xv[u], _mm512_set1_ps(1.0f));
      x[u] = reinterpret_cast<V>(_mm512_maskz_scalef_ps(keep[u], p[u], n[u]));
    }
    return;
  }
#endif
  using I = Simd<float>::ivec;
  const V lo = splat<float>(-127 * 0.693147180559945f), magic = splat<float>(12582912.0f);
  const V hi = splat<float>(88.3762626647949f);
  V scale[U];
  I over[U];
  for (int u = 0; u < U; ++u) {
    if constexpr (!kNonPositive) over[u] = x[u] > hi, x[u] = x[u] > hi ? hi : x[u];
    x[u] = lo > x[u] ? lo : x[u];
  }
  for (int u = 0; u < U; ++u) {
    const V t = x[u] * 1.44269504088896341f + magic;  // n = round(x log2 e) in t's low mantissa bits
    I bits;
    std::memcpy(&bits, &t, sizeof(bits));
    bits = (bits << 23) + (127 << 23);  // (n + 127) << 23: the mantissa's upper bits shift out
    std::memcpy(&scale[u], &bits, sizeof(bits));
    const V n = t - magic;
    x[u] = x[u] - n * 0.693145751953125f;  // ln2 split in two for an exact reduction
    x[u] = x[u] - n * 1.42860682030941723212e-6f;
  }
  V p[U];
  for (int u = 0; u < U; ++u) p[u] = splat<float>(kPoly[0]);
  for (int i = 1; i < 5; ++i)
    for (int u = 0; u < U; ++u) p[u] = p[u] * x[u] + kPoly[i];
  for (int u = 0; u < U; ++u) x[u] = (p[u] * x[u] + 1.0f) * scale[u];
  if constexpr (!kNonPositive)
    for (int u = 0; u < U; ++u) x[u] = over[u] ? splat<float>(std::numeric_limits<float>::infinity()) : x[u];
}

// e^x, vectorised: x = n ln2 + r with |r| <= ln2/2, e^r by a polynomial, 2^n assembled in the
// exponent bits: float is vexp_lockstep's form; here double (degree-11 Taylor-Horner). Inputs
// below the underflow bound give 0 (needed: exp(-inf) = 0 for masked scores), above overflow give
// inf. kNonPositive: the caller's x is <= 0 or NaN (a softmax's score minus its running max or
// lse), so nothing overflows: the upper clamp and its select go.
template <class T, bool kNonPositive = false>
inline vec_t<T> vexp(vec_t<T> x) {
  using V = vec_t<T>;
  if constexpr (std::is_same_v<T, float>) {
    vexp_lockstep<1, kNonPositive>(&x);
    return x;
  } else {  // double
    using I = typename Simd<T>::ivec;
    const T hi = T(709.78), lo = T(-708.39);
    V xc = x;
    if constexpr (!kNonPositive) xc = x > hi ? splat<T>(hi) : x;
    xc = xc < lo ? splat<T>(lo) : xc;  // keeps n in the int conversion's range (-inf too)
    V n = xc * T(1.44269504088896341);
    // round to nearest via the magic-number trick (valid for |n| < 2^51)
    const V magic = splat<T>(T(6755399441055744.0));
    n = (n + magic) - magic;
    V r = xc - n * T(0.693145751953125);  // ln2 split in two for an exact reduction
    r = r - n * T(1.42860682030941723212e-6);
    V p = splat<T>(T(1.0 / 39916800));
    const T c[] = {1.0 / 3628800, 1.0 / 362880, 1.0 / 40320, 1.0 / 5040, 1.0 / 720, 1.0 / 120,
                   1.0 / 24,      1.0 / 6,      0.5,          1.0,          1.0};
    for (T ci : c) p = p * r + ci;
    const I bits = (__builtin_convertvector(n, I) + 1023) << 52;
    V scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    V out = p * scale;
    out = x < lo ? splat<T>(T(0)) : out;
    if constexpr (!kNonPositive) out = x > hi ? splat<T>(std::numeric_limits<T>::infinity()) : out;
    return out;
  }
}

// e^x of U vectors in place (vexp<T, kNonPositive> each): in lockstep for float (vexp_lockstep);
// double one vector after another.
// The U the kernels' softmax loops pass: 4 (8 gains 3% more in the microbenchmark, and a row's
// tail of fewer than U vectors runs one at a time).
inline constexpr int kExpLanes = 4;
template <class T, int U, bool kNonPositive>
inline void vexp_lanes(vec_t<T>* x) {
  if constexpr (std::is_same_v<T, float>) {
    vexp_lockstep<U, kNonPositive>(x);
  } else {
    for (int u = 0; u < U; ++u) x[u] = vexp<T, kNonPositive>(x[u]);
  }
}

// tanh(x) = 1 - 2 / (e^{2x} + 1): saturates correctly at +-1 through vexp's inf/0 limits. Near 0
// that form cancels (relative error ~eps/|x|: a softcap of 1e5 put 2e-3 on float32 outputs, 1e20
// flattened them), so small |x| takes the odd series: double to x^9 below 0.05 (next term < 1e-15
// relative there); float to x^11 below 0.39, where the two forms' errors meet: 2.1e-7 relative at
// most (numpy against float64 tanh), against 2.0e-6 with float at double's 0.05, which put a
// softcap-30 output 1.1x past FlashAttention's bound (tools.fuzz, seed 14).
// vtanh_lanes: U vectors in place, each step for all U before the next (vexp_lockstep's reason:
// a softcapped forward's max pass took tanh one vector at a time).
template <class T, int U>
inline void vtanh_lanes(vec_t<T>* x) {
  using V = vec_t<T>;
  constexpr bool kFloat = sizeof(T) == 4;
  V e[U], near[U];
  for (int u = 0; u < U; ++u) e[u] = x[u] + x[u];
  vexp_lanes<T, U, false>(e);
  for (int u = 0; u < U; ++u) {
    const V x2 = x[u] * x[u];
    const V tail = kFloat ? T(62.0 / 2835) + x2 * T(-1382.0 / 155925) : splat<T>(T(62.0 / 2835));
    near[u] = x[u] * (T(1) + x2 * (T(-1.0 / 3) + x2 * (T(2.0 / 15) + x2 * (T(-17.0 / 315) + x2 * tail))));
  }
  for (int u = 0; u < U; ++u) {
    const V far = T(1) - T(2) / (e[u] + T(1));
    const V ax = x[u] < splat<T>(T(0)) ? -x[u] : x[u];
    x[u] = ax < splat<T>(T(kFloat ? 0.39 : 0.05)) ? near[u] : far;
  }
}
template <class T>
inline vec_t<T> vtanh(vec_t<T> x) {
  vtanh_lanes<T, 1>(&x);
  return x;
}

template <class T>
inline T hmax(vec_t<T> v) {
  T out = v[0];
  for (int i = 1; i < Simd<T>::width; ++i) out = v[i] > out ? v[i] : out;
  return out;
}

// A reduction tree in registers (halves added pairwise, log2(width) steps), not one chain of
// width dependent adds: the chain (16 x 4 cycles with AVX-512) was 27% of a 4 x 16-token
// backward's per-call setup, where every (row, head) takes one (delta; perf, the Ice Lake Xeon).
// Through memory the tree lost its gain to store-forwarding stalls, hence the intrinsics.
template <class T>
inline T hsum(vec_t<T> v) {
  constexpr int W = Simd<T>::width;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && W == 16) return _mm512_reduce_add_ps(reinterpret_cast<__m512&>(v));
  if constexpr (std::is_same_v<T, double> && W == 8) return _mm512_reduce_add_pd(reinterpret_cast<__m512d&>(v));
#endif
#if defined(__AVX__)
  if constexpr (std::is_same_v<T, float> && W == 8) {
    const __m256 x = reinterpret_cast<__m256&>(v);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
  }
  if constexpr (std::is_same_v<T, double> && W == 4) {
    const __m256d x = reinterpret_cast<__m256d&>(v);
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(x), _mm256_extractf128_pd(x, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
  }
#endif
  T x[W];
  std::memcpy(x, &v, sizeof(x));
  for (int s = W / 2; s > 0; s /= 2)
    for (int i = 0; i < s; ++i) x[i] += x[i + s];
  return x[0];
}

SCREE_CPU_NAMESPACE_END
