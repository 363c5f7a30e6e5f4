// AVX-512 pieces of the AMX kernels' fp32 passes between tile products (fwd_amx.cpp,
// bwd_amx.cpp; the amx build only): the softmax's exponential in log2 units, the lane mask of a
// row's visible keys, and the bf16 rounding of results.
#pragma once

#include "isa.h"

#include <cstdint>

#include "amx_tiles.h"  // <immintrin.h>, with its GCC 12 warning workaround

SCREE_CPU_NAMESPACE_BEGIN

// 2^t for t <= 0 (a softmax's arguments in log2 units), 16 lanes: t = n + f with n = round(t),
// |f| <= 1/2, 2^f by a polynomial fitted for relative error on [-1/2, 1/2], 2^n applied by
// VSCALEFPS, which flushes to 0 below the fp32 range. t must not be -inf (-inf - round(-inf) is
// NaN): masked lanes are zeroed after the call instead. 9 instructions against simd.h's vexp's ~22
// (range clamps, exponent assembly by integer ops). Degree 4 (max 2.7e-6 in fp32, the degree-5
// Taylor polynomial's 2.4e-6 for one FMA less; the row sum's relative error moves lse by ~3e-6);
// kCubic, for values rounded to bf16 right after (the forward's P, 2^-9 = 2e-3): degree 3, 7.5e-5,
// one FMA less.
template <bool kCubic = false>
inline __m512 exp2_nonpositive(__m512 t) {
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p;
  if constexpr (kCubic) {
    p = _mm512_fmadd_ps(_mm512_set1_ps(0.055157460272312164f), f, _mm512_set1_ps(0.24261002242565155f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.693263590335846f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.9999282360076904f));
  } else {
    p = _mm512_fmadd_ps(_mm512_set1_ps(0.009569929912686348f), f, _mm512_set1_ps(0.0559174008667469f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.240247443318367f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6931218504905701f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.9999992847442627f));
  }
  return _mm512_scalef_ps(p, n);
}

// Lanes j .. j + 15 of a block whose keys [lo, hi) (block-relative) are visible.
inline __mmask16 visible_lanes(int64_t j, int64_t lo, int64_t hi) {
  const __m512i key = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                       _mm512_set1_epi32(int32_t(j)));
  return _mm512_cmpge_epi32_mask(key, _mm512_set1_epi32(int32_t(lo))) &
         _mm512_cmplt_epi32_mask(key, _mm512_set1_epi32(int32_t(hi)));
}

// 16 floats to bf16 bits, the same bits as dtypes.h's to_bfloat16 (nearest even by an integer add,
// NaN made quiet, denormals kept; VCVTNEPS2BF16 flushes those): stores of results in bf16.
inline __m256i to_bf16_bits(__m512 f) {
  const __m512i x = _mm512_castps_si512(f);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(x, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7fffffff)),
                                                 _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}

SCREE_CPU_NAMESPACE_END
