// The backward's device workspace, carved in one place for the size query (api.cu, JAX sizes it
// before it has pointers) and for the launchers of both paths:
//   header    the Hopper tile counter (zeroed by the preprocess) and the true maxima of the
//             sequence lengths, computed on the device, so a loose host max_seqlen costs no
//             empty tiles;
//   delta     rowsum(dO * O) per (head, token), fp32, rows of `ld` = total_q rounded up to 4
//             elements (a TMA tensor map needs 16-byte row strides);
//   lse2      the forward's lse in base-2 units (lse * log2 e; +inf where lse = -inf, so a row
//             that saw no key gets P = 0), same layout (read by the Hopper kernel only);
//   dq_accum  dQ in fp32, (total_q, heads_q, D) like dq, zeroed by the preprocess, accumulated by
//             the key-tile kernels and converted to dq's type by the postprocess; absent where
//             the Hopper kernel writes dq itself (writes_dq: 268 MB saved at 32k tokens x 16
//             heads x 128);
//   dq_sem    deterministic mode only: per (head, first token of a 64-, 80- or 128-query block) the
//             count of dQ additions done, so the Hopper kernel adds in a fixed order;
//   packed    the Hopper kernel's packed key-tile schedule (sm90/tile_packing.h; written only
//             where a call takes packed tiles), sized by total_k and the sequences; or, in the
//             causal backward over long keys, the sequences' longest-first ranks (`rank`: 4 bytes
//             a sequence, sm90/sequence_rank.cuh).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "sm90/tile_packing.h"

namespace scree::cuda_attention {

struct BwdHeader {
  unsigned long long tile_counter;
  int max_seqlen_q, max_seqlen_k;
};

struct BwdWorkspace {
  BwdHeader* header = nullptr;
  float* delta = nullptr;
  float* lse2 = nullptr;
  float* dq_accum = nullptr;
  int* dq_sem = nullptr;  // null unless deterministic
  void* packed = nullptr;
  int* rank = nullptr;  // set by the Hopper launcher where it ranks the sequences (in `packed`'s room)
  int64_t ld = 0;

  static constexpr size_t kAlign = 256;
  static size_t round(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
  static int64_t row_stride(int64_t total_q) { return (total_q + 3) / 4 * 4; }

  // Byte sizes of the parts, in order; their sum is what the caller allocates.
  struct Sizes {
    size_t header, delta, lse2, dq_accum, dq_sem, packed;
    size_t total() const { return header + delta + lse2 + dq_accum + dq_sem + packed; }
  };
  // accumulator: false where the Hopper kernel writes dq itself (no dq_accum, no dq_sem).
  static Sizes sizes(int64_t total_q, int64_t total_k, int64_t num_sequences, int64_t heads_q, int64_t head_dim,
                     bool deterministic, bool accumulator = true) {
    const size_t rows = size_t(heads_q) * size_t(row_stride(total_q));
    return {round(sizeof(BwdHeader)), round(rows * sizeof(float)), round(rows * sizeof(float)),
            accumulator ? round(size_t(total_q) * size_t(heads_q) * size_t(head_dim) * sizeof(float)) : 0,
            deterministic && accumulator ? round(size_t(total_q) * size_t(heads_q) * sizeof(int)) : 0,
            round(std::max(sm90::PackedTiles::bytes(total_k, num_sequences),
                           size_t(4) * size_t(num_sequences > 0 ? num_sequences : 0)))};
  }

  // Whether the Hopper kernel writes dq itself (bwd_sm90.cuh, dq_direct): the key tiles are packed
  // and every sequence's keys fit one (the host's bound; a bound below the truth is an unvalidated
  // layout, unspecified values). Then each query row takes its whole dQ from one key tile.
  static bool writes_dq(const attention::VarlenParams& p) {
    const bool keys = p.num_sequences > 0 && p.total_k > 0 && p.max_seqlen_k > 0;
    return keys && sm90::packed_tiles_chosen(p, /*by_keys=*/true) && p.max_seqlen_k <= sm90::kPackRows;
  }

  // base: at least sizes(...).total() bytes, 16-byte aligned (checked by the host API).
  static BwdWorkspace carve(void* base, int64_t total_q, int64_t total_k, int64_t num_sequences, int64_t heads_q,
                            int64_t head_dim, bool deterministic, bool accumulator = true) {
    const Sizes s = sizes(total_q, total_k, num_sequences, heads_q, head_dim, deterministic, accumulator);
    char* at = static_cast<char*>(base);
    BwdWorkspace w;
    w.ld = row_stride(total_q);
    w.header = reinterpret_cast<BwdHeader*>(at), at += s.header;
    w.delta = reinterpret_cast<float*>(at), at += s.delta;
    w.lse2 = reinterpret_cast<float*>(at), at += s.lse2;
    w.dq_accum = accumulator ? reinterpret_cast<float*>(at) : nullptr, at += s.dq_accum;
    w.dq_sem = deterministic && accumulator ? reinterpret_cast<int*>(at) : nullptr, at += s.dq_sem;
    w.packed = at;
    return w;
  }
};

}  // namespace scree::cuda_attention
