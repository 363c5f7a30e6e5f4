// Element types the CPU kernels are instantiated for, including 16-bit floats stored as raw bits
// (float16, bfloat16) that convert to float for arithmetic; accumulation happens in float or wider.
#pragma once

#include <cstdint>
#include <cstring>

namespace scree {

enum class DType { Bool, Int8, Int16, Int32, Int64, UInt8, Float16, BFloat16, Float32, Float64 };

struct float16 {
  uint16_t bits;
};
struct bfloat16 {
  uint16_t bits;
};

inline float to_float(float16 h) {
  uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t man = h.bits & 0x3ffu;
  uint32_t out;
  if (exp == 0x1f) {
    out = sign | 0x7f800000u | (man << 13);  // inf / nan
  } else if (exp != 0) {
    out = sign | ((exp + 112) << 23) | (man << 13);  // normal: rebias 15 -> 127
  } else if (man == 0) {
    out = sign;  // signed zero
  } else {       // subnormal: normalise
    int shift = 0;
    while ((man & 0x400u) == 0) {
      man <<= 1;
      ++shift;
    }
    man &= 0x3ffu;
    out = sign | (uint32_t(113 - shift) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &out, 4);
  return f;
}

inline float16 to_float16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  uint32_t exp = (x >> 23) & 0xffu;
  uint32_t man = x & 0x7fffffu;
  if (exp == 0xff) return {uint16_t(sign | 0x7c00u | (man ? 0x200u : 0u))};
  int e = int(exp) - 127 + 15;
  if (e >= 0x1f) return {uint16_t(sign | 0x7c00u)};  // overflow -> inf
  if (e <= 0) {                                       // subnormal or zero, round to nearest even
    if (e < -10) return {sign};
    man |= 0x800000u;
    int shift = 14 - e;
    uint32_t half = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return {uint16_t(sign | half)};
  }
  uint32_t half = (uint32_t(e) << 10) | (man >> 13);
  uint32_t rem = man & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;  // may carry into exponent: fine
  return {uint16_t(sign | half)};
}

inline float to_float(bfloat16 b) {
  uint32_t x = uint32_t(b.bits) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

inline bfloat16 to_bfloat16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return {uint16_t((x >> 16) | 0x40u)};  // quiet nan
  uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);                             // nearest even
  return {uint16_t((x + rounding) >> 16)};
}

// Accumulator type and conversions used by the reduction kernels.
template <class T>
struct Accum {
  using type = T;
  static type load(T v) { return v; }
  static T store(type v) { return v; }
};
template <>
struct Accum<float16> {
  using type = float;
  static float load(float16 v) { return to_float(v); }
  static float16 store(float v) { return to_float16(v); }
};
template <>
struct Accum<bfloat16> {
  using type = float;
  static float load(bfloat16 v) { return to_float(v); }
  static bfloat16 store(float v) { return to_bfloat16(v); }
};

}  // namespace scree
