// Intel AMX for the CPU attention's bfloat16 products (the amx build only): the tile
// configuration, the bf16 operand layouts and the one tile micro-kernel.
// Every tile here is 16 rows x 64 bytes (palette 1, the largest): a C tile holds 16 x 16 fp32, an A
// tile 16 rows x 32 bf16 (row-major, any row stride), a B tile 16 rows of 16 bf16 *pairs*: B's
// element (k, n) and (k + 1, n) sit side by side ("VNNI" layout), so that one _tile_dpbf16ps does
// C (16 x 16) += A (16 x 32) B (32 x 16) with fp32 accumulation: 16384 FLOPs per instruction.
// Measured on this Xeon (2 cores): torch's bf16 matmul (oneDNN on AMX) ~2.6-2.8 TFLOP/s against
// ~450 for fp32, the ~6x that makes the tiles worth a separate kernel.
#pragma once

#include "isa.h"

#if !defined(__AMX_TILE__) || !defined(__AMX_BF16__) || !defined(__AVX512BF16__)
#error "amx_tiles.h needs -mamx-tile -mamx-bf16 -mavx512bf16 (the amx build of CMakeLists.txt)"
#endif

// GCC 12's intrinsic headers trip -Wmaybe-uninitialized on their own _mm512_undefined_* idiom
// (`__m512i __Y = __Y;`, GCC bug 105593, fixed in 13) when the AVX-512 shuffles below inline.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "aligned.h"
#include "simd.h"  // transpose16x16

SCREE_CPU_NAMESPACE_BEGIN
namespace tiles {

inline constexpr int kRows = 16;    // rows of every tile
inline constexpr int kBytes = 64;   // bytes per tile row: 16 fp32, 32 bf16, 16 bf16 pairs
inline constexpr int kK = 32;       // bf16 elements along k per A tile row (= per B tile pair-row x 2)

// The 64-byte operand of LDTILECFG (Intel SDM vol. 2, LDTILECFG): palette, then bytes per row and
// rows of each of the (up to 16) tile registers; palette 1 has 8 tiles of at most 16 x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Holds the tile configuration for the lifetime of the object, in the thread that creates it: the
// configuration is per thread (LDTILECFG writes the thread's XTILECFG state), so each worker of a
// call loads it before its first tile instruction; the destructor releases the tiles (TILERELEASE:
// the tile state returns to its init state, so the thread's context switches stop saving 8 KiB of
// tile data, and a pooled worker carries nothing into unrelated jobs).
class TileScope {
 public:
  TileScope() {
    TileConfig cfg;
    for (int t = 0; t < 8; ++t) cfg.colsb[t] = kBytes, cfg.rows[t] = kRows;
    _tile_loadconfig(&cfg);
  }
  ~TileScope() { _tile_release(); }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

// C (+)= A B in fp32 over `steps` steps of 32 along k, C cut into 16 x 16 tiles, mt x nt of them
// (both even), done as 2 x 2 groups: tiles 0-3 hold C, 4-5 two A tiles, 6-7 two B tiles, so each
// A and B tile loaded serves two products (4 products per 4 loads). All offsets in bytes:
//   A tile (i, s) at a + 16 i lda + s a_step (rows lda apart),
//   B tile (j, s) at b + j b_col + s b_step (rows 64 bytes apart: B tiles are stored contiguous),
//   C tile (i, j) at c + 16 i ldc + 64 j (rows ldc apart).
// Accumulate = false starts from zero (C is only written). Tile rows should start on a line
// (buffers from aligned.h, strides multiples of 64): a row across two lines costs ~2x (aligned.h).
// A band (masks: a causal block's diagonal, windows) may leave out what a row group (32 rows, i / 2)
// does not meet: `cols` limits it to column groups [cols->lo[i / 2], cols->hi[i / 2]) (32 columns
// each; C's other groups are left as they were), `ks` to steps [ks->lo[i / 2], ks->hi[i / 2]), or
// with ks->per_column, column group j / 2's steps [ks->lo[j / 2], ks->hi[j / 2]).
struct Band {
  const int64_t *lo, *hi;
  bool per_column = false;
};
template <bool Accumulate>
inline void gemm(int64_t mt, int64_t nt, int64_t steps, float* c, int64_t ldc, const void* a, int64_t lda,
                 int64_t a_step, const void* b, int64_t b_col, int64_t b_step, const Band* cols = nullptr,
                 const Band* ks = nullptr) {
  // Column groups outside: B tiles come from the packed keys / values (L2), A tiles from the item's
  // query block or P (L1), so each B tile leaves L2 once per product and later row groups find it
  // in L1.
  for (int64_t j = 0; j < nt; j += 2) {
    for (int64_t i = 0; i < mt; i += 2) {
      if (cols && (j / 2 < cols->lo[i / 2] || j / 2 >= cols->hi[i / 2])) continue;
      const int64_t at = ks && ks->per_column ? j / 2 : i / 2;
      const int64_t s0 = ks ? ks->lo[at] : 0, s1 = ks ? ks->hi[at] : steps;
      if (Accumulate && s0 >= s1) continue;
      char* c00 = reinterpret_cast<char*>(c) + i * kRows * ldc + j * kBytes;
      char* c10 = c00 + kRows * ldc;
      if constexpr (Accumulate) {
        _tile_loadd(0, c00, ldc);
        _tile_loadd(1, c00 + kBytes, ldc);
        _tile_loadd(2, c10, ldc);
        _tile_loadd(3, c10 + kBytes, ldc);
      } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
      const char* a0 = static_cast<const char*>(a) + i * kRows * lda;
      const char* b0 = static_cast<const char*>(b) + j * b_col;
      for (int64_t s = s0; s < s1; ++s) {
        // Each load just before the first product that needs it (tile registers are not renamed:
        // a load waits for the previous step's products that read its register).
        _tile_loadd(4, a0 + s * a_step, lda);
        _tile_loadd(6, b0 + s * b_step, kBytes);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(7, b0 + b_col + s * b_step, kBytes);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(5, a0 + kRows * lda + s * a_step, lda);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, c00, ldc);
      _tile_stored(1, c00 + kBytes, ldc);
      _tile_stored(2, c10, ldc);
      _tile_stored(3, c10 + kBytes, ldc);
    }
  }
}

// n bf16 values (bits) from src to dst, zeros after them up to dp (a multiple of 32): masked
// 64-byte loads, so no read past src + n, and no call (memcpy of a 256-byte row plus the fill of
// its padding were 17% of a forward over 64-token sequences).
inline void copy_row(uint16_t* dst, const uint16_t* src, int64_t n, int64_t dp) {
  for (int64_t d = 0; d < dp; d += 32) {
    const int64_t left = n - d;
    const __mmask32 m = left >= 32 ? ~__mmask32(0) : left <= 0 ? __mmask32(0) : (__mmask32(1) << left) - 1;
    _mm512_storeu_si512(dst + d, _mm512_maskz_loadu_epi16(m, src + d));
  }
}

// B operand of S = Q K^T for 16 keys: key row j at k + j ldk (bf16 bits; dp values used, dp a
// multiple of 32, zero padded by the caller when the head dim is shorter); out gets dp / 2 rows
// of 16 pairs, out[r][j] = (k[j][2r], k[j][2r + 1]): K^T in VNNI layout is K's rows read as 32-bit
// pairs and transposed 16 x 16 at a time, and the d-chunk c (32 values) of the tile is the 1 KiB at
// out + 256 c.
inline void pack_keys(const uint16_t* k, int64_t ldk, int64_t dp, uint32_t* out) {
  // Rows j of the source are 16 pairs of key j (32-bit elements).
  for (int64_t r0 = 0; r0 < dp / 2; r0 += 16) transpose16x16(k + 2 * r0, ldk * 2, out + r0 * 16, 16);
}

// A operand whose k runs down the columns of a row-major matrix (Q^T and dO^T of the attention
// backward: k = queries): 32 rows of dp bf16 (bits, rows ld apart, dp a multiple of 32) become dp
// rows of 32 (rows ld_out apart). pack_keys's 32-bit transpose of each 16 rows gives pair rows
// (d, d + 1); two permutes per pair row split it into rows d and d + 1 (the rows' 16 + 16 halves).
// ~1 cycle per output row against ~32 for a scalar loop.
inline void transpose_rows(const uint16_t* x, int64_t ld, int64_t dp, uint16_t* out, int64_t ld_out) {
  alignas(64) uint32_t top[256], bottom[256];  // rows 0-15 and 16-31, pair rows of 16 words
  alignas(64) uint16_t even_idx[32], odd_idx[32];
  for (int i = 0; i < 32; ++i) {
    even_idx[i] = uint16_t(i < 16 ? 2 * i : 32 + 2 * (i - 16));
    odd_idx[i] = uint16_t(even_idx[i] + 1);
  }
  const __m512i even = _mm512_load_si512(even_idx), odd = _mm512_load_si512(odd_idx);
  for (int64_t d0 = 0; d0 < dp; d0 += 32) {
    pack_keys(x + d0, ld, 32, top);
    pack_keys(x + 16 * ld + d0, ld, 32, bottom);
    for (int r = 0; r < 16; ++r) {
      const __m512i a = _mm512_load_si512(top + 16 * r), b = _mm512_load_si512(bottom + 16 * r);
      _mm512_storeu_si512(out + (d0 + 2 * r) * ld_out, _mm512_permutex2var_epi16(a, even, b));
      _mm512_storeu_si512(out + (d0 + 2 * r + 1) * ld_out, _mm512_permutex2var_epi16(a, odd, b));
    }
  }
}

// B operand of O = P V for 32 keys and 16 value columns: v points at column 0 of key row 0 (bf16
// bits, rows ld apart); out[r][c] = (v[2r][c], v[2r + 1][c]), the 1 KiB tile.
inline void pack_values(const uint16_t* v, int64_t ld, uint32_t* out) {
  for (int r = 0; r < 16; ++r) {
    const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + 2 * r * ld)));
    const __m512i hi =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + (2 * r + 1) * ld)));
    _mm512_storeu_si512(out + r * 16, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
  }
}

}  // namespace tiles
SCREE_CPU_NAMESPACE_END
