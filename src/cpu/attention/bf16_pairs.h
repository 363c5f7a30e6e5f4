// bfloat16 operands as pairs in 32-bit words, for VDPBF16PS: the avx512bf16 build's forward
// (fwd.cpp) runs both products of a bfloat16 call on it, reading the inputs as they are instead of
// converting them to fp32. A word holds two consecutive indices of a product's reduction: (d, d + 1)
// of a Q or K row (the row's own memory order), (key j, key j + 1) of P and V (interleaved here).
// Defines SCREE_CPU_BF16_PAIRS where the build has the instruction and no AMX (the amx build puts
// bfloat16 on the tiles: fwd_amx.cpp). SCREE_CPU_BF16_PAIRS_EMULATED (never set by the project's
// build) gives the same operations in plain C++ at any vector width, so that the pairs' layout
// and masking can be checked against the reference on a machine without the instruction
// (scripts/test_bf16_pairs_emulated.sh, part of scripts/test.sh).
#pragma once

#include "isa.h"

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__) && !defined(SCREE_CPU_AMX)
#define SCREE_CPU_BF16_PAIRS 1
#define SCREE_CPU_BF16_PAIRS_NATIVE 1
#include <immintrin.h>
#elif defined(SCREE_CPU_BF16_PAIRS_EMULATED) && !defined(SCREE_CPU_AMX)
#define SCREE_CPU_BF16_PAIRS 1
#endif

#if defined(SCREE_CPU_BF16_PAIRS)
#include <cstdint>
#include <cstring>

#include "scree/dtypes.h"
#include "simd.h"

SCREE_CPU_NAMESPACE_BEGIN

// gemm.h's multiply-add policy for pairs: each 32-bit lane of C gains a.lo x b.lo + a.hi x b.hi
// (bf16 products, exact in fp32, accumulated in fp32): twice an fp32 FMA's multiplies, a step
// covering two indices of the reduction (kPack). A's words may sit at any 2-byte boundary (a bf16
// row read in place): read through memcpy.
struct Bf16PairProduct {
  using A = uint32_t;
  using B = uint32_t;
  static constexpr int kPack = 2;
  static uint32_t load_a(const A* a) {
    uint32_t x;
    std::memcpy(&x, a, sizeof(x));
    return x;
  }
  static vec_t<float> madd(vec_t<float> c, uint32_t a, vec_t<float> b) {
#if defined(SCREE_CPU_BF16_PAIRS_NATIVE)
    return vec_t<float>(_mm512_dpbf16_ps(__m512(c), __m512bh(_mm512_set1_epi32(int(a))), __m512bh(b)));
#else
    const float a0 = to_float(bfloat16{uint16_t(a)}), a1 = to_float(bfloat16{uint16_t(a >> 16)});
    for (int i = 0; i < Simd<float>::width; ++i) {
      uint32_t w;
      std::memcpy(&w, reinterpret_cast<const char*>(&b) + 4 * i, 4);
      c[i] += a0 * to_float(bfloat16{uint16_t(w)}) + a1 * to_float(bfloat16{uint16_t(w >> 16)});
    }
    return c;
#endif
  }
};

// Words of a row of n bfloat16: (n + 1) / 2, the last one's upper half 0 where n is odd.
inline void row_pairs(const bfloat16* src, int64_t n, uint32_t* dst) {
  std::memcpy(dst, src, size_t(n) * sizeof(bfloat16));
  if (n % 2 != 0) reinterpret_cast<uint16_t*>(dst)[n] = 0;
}

// Word i of dst = (a[i], b[i]) for i < n_pad (a multiple of 16), zeros past n; b null: zeros (the
// partner of a block's odd last key).
inline void interleave_rows(const bfloat16* a, const bfloat16* b, int64_t n, uint32_t* dst, int64_t n_pad) {
#if defined(SCREE_CPU_BF16_PAIRS_NATIVE)
  // Word 2i of the result from a's element i, word 2i + 1 from b's (index 32 + i: the second source).
  alignas(64) static const uint16_t kIdx[32] = {0, 32, 1, 33, 2,  34, 3,  35, 4,  36, 5,  37, 6,  38, 7,  39,
                                                8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i idx = _mm512_load_si512(kIdx);
  for (int64_t i = 0; i < n_pad; i += 16) {
    const int64_t left = n - i;
    const __mmask16 m = left >= 16 ? __mmask16(0xffff) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1);
    const __m256i va = _mm256_maskz_loadu_epi16(m, a + i);
    const __m256i vb = b != nullptr ? _mm256_maskz_loadu_epi16(m, b + i) : _mm256_setzero_si256();
    _mm512_storeu_si512(dst + i, _mm512_permutex2var_epi16(_mm512_castsi256_si512(va), idx, _mm512_castsi256_si512(vb)));
  }
#else
  for (int64_t i = 0; i < n_pad; ++i)
    dst[i] = i < n ? uint32_t(a[i].bits) | uint32_t(b != nullptr ? b[i].bits : 0) << 16 : 0u;
#endif
}

// A vector of P's columns for keys j (e0) and j + 1 (e1), rounded to bfloat16 (nearest even) and
// interleaved into a vector of words.
inline void store_pairs(uint32_t* dst, vec_t<float> e0, vec_t<float> e1) {
#if defined(SCREE_CPU_BF16_PAIRS_NATIVE)
  alignas(64) static const uint16_t kIdx[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i both = __m512i(_mm512_cvtne2ps_pbh(__m512(e1), __m512(e0)));  // words 0-15: e0, 16-31: e1
  _mm512_storeu_si512(dst, _mm512_permutexvar_epi16(_mm512_load_si512(kIdx), both));
#else
  for (int i = 0; i < Simd<float>::width; ++i)
    dst[i] = uint32_t(to_bfloat16(e0[i]).bits) | uint32_t(to_bfloat16(e1[i]).bits) << 16;
#endif
}

SCREE_CPU_NAMESPACE_END

#endif
