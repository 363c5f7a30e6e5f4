// The schedule of a CPU attention backward call, shared by the fp32 kernel (bwd.cpp, every ISA
// build) and the AMX bfloat16 kernel (bwd_amx.cpp, the amx build only): key blocks, the
// (sequence, kv head, chunk of key blocks) work items with their costs, the partial-dQ scratch
// of chunked sequences and its reduction in a fixed order, dq's write-out, and which rows need
// their softmax statistics recomputed (lse too coarse). Why this decomposition: bwd.cpp's header.
// What differs between the kernels (operand layouts, products, the P / dS pass) stays in their
// files; the block sizes and alignments are the kernel's (Schedule's constructor).
#pragma once

#include "isa.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "convert.h"
#include "prefetch.h"
#include "scree/attention/params.h"
#include "work.h"

SCREE_CPU_NAMESPACE_BEGIN
namespace bwd {

// Minimum number of items the chunking aims at (independent of the thread count: deterministic).
inline constexpr int64_t kTargetItems = 8;
// Upper bound on the partial-dQ scratch of chunked sequences (bytes).
inline constexpr double kScratchBudget = 256.0 * 1024 * 1024;

// Key block j of a sequence is keys [j * block_k, min(Lk, (j + 1) * block_k)); rows
// [row_lo, row_hi) are the query rows whose visible range meets it (a contiguous range: both ends
// of the visible range are non-decreasing in the row).
struct KeyBlock {
  int64_t row_lo, row_hi;
  double cost;  // one kv head, all G query heads
};

// A run of consecutive key blocks of one sequence (one item per kv head). Rows [row_lo, row_hi)
// cover every row any of its blocks sees; its dQ accumulator holds rows [acc_lo, acc_lo +
// acc_rows), the same range widened to the kernel's row alignment. In a chunked sequence
// (num_chunks > 1) each chunk owns a partial dQ (Hq, acc_rows, D_pad) at `scratch` in the shared
// scratch buffer.
struct Chunk {
  int64_t seq;
  int64_t kb_begin, kb_end;  // indices into the sequence's key blocks
  int64_t row_lo, row_hi;
  int64_t acc_lo, acc_rows;
  int64_t scratch;  // offset in elements; -1 in an unchunked sequence (per-thread accumulator)
  double cost;
};

struct Sequence {
  int64_t q0, k0, Lq, Lk;
  int64_t first_block, num_blocks;  // its KeyBlocks in the flat list
  int64_t first_chunk, num_chunks;
};

// First row in [0, Lq) for which pred(visible_keys(row)) holds, pred monotone false -> true.
template <class Pred>
int64_t first_row(const attention::VarlenBackwardParams& p, int64_t Lq, int64_t Lk, Pred pred) {
  int64_t lo = 0, hi = Lq;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (pred(attention::visible_keys(p, mid, Lq, Lk)))
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

struct Schedule {
  const attention::VarlenBackwardParams& p;
  int64_t block_k, row_align;
  int64_t G = 1, D = 0, Dv = 0, D_pad = 0, Dv_pad = 0;
  std::vector<Sequence> seqs;
  std::vector<KeyBlock> blocks;
  std::vector<Chunk> chunks;
  int64_t scratch_elems = 0;    // partial dQ of chunked sequences
  int64_t thread_dq_elems = 0;  // per-thread dQ accumulator of unchunked sequences

  // Key blocks of block_k keys, dQ accumulator rows aligned to row_align, head dims padded to
  // d_align, dQ elements of elem_bytes (for the scratch budget).
  Schedule(const attention::VarlenBackwardParams& params, int64_t block_k_, int64_t row_align_, int64_t d_align,
           int64_t elem_bytes)
      : p(params), block_k(block_k_), row_align(row_align_) {
    G = p.heads_q / p.heads_k;
    D = p.head_dim;
    Dv = p.head_dim_v;
    D_pad = round_up(D, d_align);
    Dv_pad = round_up(Dv, d_align);

    // Key blocks and their costs: the five GEMMs over (rows x keys), plus packing.
    const double pair_flops = 2.0 * double(3 * D + 2 * Dv);
    seqs.resize(static_cast<size_t>(p.num_sequences));
    double total = 0;
    for (int64_t b = 0; b < p.num_sequences; ++b) {
      Sequence& s = seqs[b];
      s.q0 = p.cu_seqlens_q[b];
      s.k0 = p.cu_seqlens_k[b];
      s.Lq = p.cu_seqlens_q[b + 1] - s.q0;
      s.Lk = p.cu_seqlens_k[b + 1] - s.k0;
      s.first_block = static_cast<int64_t>(blocks.size());
      s.num_blocks = (s.Lk + block_k - 1) / block_k;
      for (int64_t j = 0; j < s.num_blocks; ++j) {
        const int64_t a = j * block_k, e = std::min(s.Lk, a + block_k), n = e - a;
        KeyBlock blk{};
        blk.row_lo = first_row(p, s.Lq, s.Lk, [&](attention::KeyRange r) { return r.hi > a; });
        blk.row_hi = first_row(p, s.Lq, s.Lk, [&](attention::KeyRange r) { return r.lo >= e; });
        if (blk.row_hi < blk.row_lo) blk.row_hi = blk.row_lo;
        blk.cost = double(G) * double(blk.row_hi - blk.row_lo) * double(n) * pair_flops + double(n) * double(D + Dv) * 16;
        blocks.push_back(blk);
        total += blk.cost * double(p.heads_k);
      }
      total += double(s.Lq) * double(p.heads_q) * double(D) * 4;  // dq write-out
    }

    // Chunk counts: a (sequence, kv head) unit costing more than total / kTargetItems is cut.
    std::vector<int64_t> count(seqs.size(), 1);
    const double grain = total / double(kTargetItems);
    for (size_t b = 0; b < seqs.size(); ++b) {
      const Sequence& s = seqs[b];
      double unit = 0;
      for (int64_t j = 0; j < s.num_blocks; ++j) unit += blocks[s.first_block + j].cost;
      if (grain > 0 && unit > grain)
        count[b] = std::min<int64_t>({static_cast<int64_t>(std::ceil(unit / grain)), s.num_blocks, kTargetItems});
    }
    // Respect the scratch budget: take chunks away from the most-chunked sequence until it fits.
    for (;;) {
      chunks.clear();
      double bytes = 0;
      for (size_t b = 0; b < seqs.size(); ++b) {
        make_chunks(seqs[b], count[b]);
        if (count[b] > 1)
          for (int64_t c = 0; c < seqs[b].num_chunks; ++c)
            bytes += double(chunks[seqs[b].first_chunk + c].acc_rows) * double(p.heads_q * D_pad) * double(elem_bytes);
      }
      if (bytes <= kScratchBudget) break;
      auto most = std::max_element(count.begin(), count.end());
      if (*most <= 1) break;
      --*most;
    }
    for (const Sequence& s : seqs)
      for (int64_t c = 0; c < s.num_chunks; ++c) {
        Chunk& ch = chunks[s.first_chunk + c];
        if (s.num_chunks > 1) {
          ch.scratch = scratch_elems;
          scratch_elems += ch.acc_rows * p.heads_q * D_pad;
        } else {
          thread_dq_elems = std::max(thread_dq_elems, ch.acc_rows * G * D_pad);
        }
      }
  }

  // Items: one per (chunk, kv head); item.seq is the chunk's index. `flops` gets their total.
  std::vector<WorkItem> chunk_items(double& flops) const {
    std::vector<WorkItem> items;
    flops = 0;
    for (size_t ci = 0; ci < chunks.size(); ++ci) {
      for (int64_t kvh = 0; kvh < p.heads_k; ++kvh) items.push_back({int64_t(ci), kvh, 0, chunks[ci].cost});
      flops += chunks[ci].cost * double(p.heads_k);
    }
    return items;
  }

  // Items of the dq reduction of chunked sequences: (sequence, query head, first row), rows_per_item rows each.
  std::vector<WorkItem> reduce_items(int64_t rows_per_item, double& work) const {
    std::vector<WorkItem> items;
    work = 0;
    for (size_t b = 0; b < seqs.size(); ++b) {
      const Sequence& s = seqs[b];
      if (s.num_chunks <= 1) continue;
      for (int64_t h = 0; h < p.heads_q; ++h)
        for (int64_t i0 = 0; i0 < s.Lq; i0 += rows_per_item) {
          const double cost = double(std::min(rows_per_item, s.Lq - i0)) * double(D * s.num_chunks);
          items.push_back({int64_t(b), h, i0, cost});
          work += cost;
        }
    }
    return items;
  }

  // Unchunked chunk ch, kv head kvh: its item owns dq of all the sequence's rows for its G query
  // heads; acc is its accumulator (G, acc_rows, D_pad), written times qscale (0 for rows it lacks).
  template <class T, class C>
  void write_dq(const Chunk& ch, int64_t kvh, const C* acc, C qscale, C* row) const {
    const Sequence& s = seqs[ch.seq];
    T* dQ = static_cast<T*>(p.dq);
    for (int64_t g = 0; g < G; ++g) {
      const int64_t h = kvh * G + g;
      for (int64_t i = 0; i < s.Lq; ++i) {
        if (i + kRowsAhead < s.Lq)
          prefetch_row(dQ + (s.q0 + i + kRowsAhead) * p.dq_row_stride + h * p.dq_head_stride, D * int64_t(sizeof(T)), true);
        if (i >= ch.row_lo && i < ch.row_hi) {
          const C* a = acc + (g * ch.acc_rows + i - ch.acc_lo) * D_pad;
          for (int64_t d = 0; d < D; ++d) row[d] = a[d] * qscale;
        } else {
          std::fill(row, row + D, C(0));
        }
        from_compute(row, dQ + (s.q0 + i) * p.dq_row_stride + h * p.dq_head_stride, D);
      }
    }
  }

  // dq of chunked sequence b, rows [i0, i0 + rows) of head h: the partials in `scratch` summed in
  // chunk order, times qscale. row: D values of the caller's.
  template <class T, class C>
  void reduce_dq(const C* scratch, C qscale, int64_t b, int64_t h, int64_t i0, int64_t rows, C* row) const {
    const Sequence& s = seqs[b];
    T* dQ = static_cast<T*>(p.dq);
    for (int64_t i = i0; i < std::min(s.Lq, i0 + rows); ++i) {
      std::fill(row, row + D, C(0));
      for (int64_t c = 0; c < s.num_chunks; ++c) {
        const Chunk& ch = chunks[s.first_chunk + c];
        if (i < ch.row_lo || i >= ch.row_hi) continue;
        const C* part = scratch + ch.scratch + (h * ch.acc_rows + i - ch.acc_lo) * D_pad;
        for (int64_t d = 0; d < D; ++d) row[d] += part[d];
      }
      for (int64_t d = 0; d < D; ++d) row[d] *= qscale;
      from_compute(row, dQ + (s.q0 + i) * p.dq_row_stride + h * p.dq_head_stride, D);
    }
  }

 private:
  // Chunk boundaries of one sequence: `count` runs of blocks of about equal cost, none empty.
  void make_chunks(Sequence& s, int64_t count) {
    s.first_chunk = static_cast<int64_t>(chunks.size());
    s.num_chunks = count;
    const int64_t seq = static_cast<int64_t>(&s - seqs.data());
    if (s.num_blocks == 0) {  // no keys: one empty chunk still writes the sequence's dq = 0
      Chunk ch{};
      ch.seq = seq;
      ch.scratch = -1;
      chunks.push_back(ch);
      s.num_chunks = 1;
      return;
    }
    const KeyBlock* kb = blocks.data() + s.first_block;
    double total = 0;
    for (int64_t j = 0; j < s.num_blocks; ++j) total += kb[j].cost;
    int64_t begin = 0;
    double cum = 0;
    for (int64_t c = 0; c < count; ++c) {
      int64_t end = begin + 1;
      cum += kb[begin].cost;
      if (c == count - 1) {
        end = s.num_blocks;
      } else {
        const double target = total * double(c + 1) / double(count);
        while (end < s.num_blocks - (count - 1 - c) && cum + 0.5 * kb[end].cost < target) cum += kb[end++].cost;
      }
      Chunk ch{};
      ch.seq = seq;
      ch.kb_begin = begin;
      ch.kb_end = end;
      ch.row_lo = s.Lq;
      ch.row_hi = 0;
      for (int64_t j = begin; j < end; ++j) {
        ch.cost += kb[j].cost;
        if (kb[j].row_lo < kb[j].row_hi) {
          ch.row_lo = std::min(ch.row_lo, kb[j].row_lo);
          ch.row_hi = std::max(ch.row_hi, kb[j].row_hi);
        }
      }
      if (ch.row_lo >= ch.row_hi) ch.row_lo = ch.row_hi = 0;
      ch.acc_lo = ch.row_lo / row_align * row_align;
      ch.acc_rows = ch.row_hi > ch.row_lo ? round_up(ch.row_hi, row_align) - ch.acc_lo : 0;
      ch.scratch = -1;
      chunks.push_back(ch);
      begin = end;
    }
  }
};

// Rows whose softmax statistics the backward recomputes instead of trusting the forward's lse
// (bwd.cpp, softmax_stats: why, and the cost): for the fp32 compute type, the query blocks with a
// row whose lse is at least kExactLse in magnitude (or +inf); every row of fp64 inputs.
inline constexpr float kExactLse = 32.0f;

inline bool lse_too_coarse(const float* lse, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    const float x = lse[r];
    if (x >= kExactLse || (x <= -kExactLse && x != -std::numeric_limits<float>::infinity())) return true;
  }
  return false;
}

// Items (sequence, query head, query block of block_q rows) whose statistics are recomputed
// (every block when `all`); row_max / log_sum (Hq, total_q) start as (lse, 0) unless `all`.
// `flops` gets the S products' total.
template <class C>
std::vector<WorkItem> stats_items(const Schedule& s, int64_t block_q, bool all, std::vector<C>& row_max,
                                  std::vector<C>& log_sum, double& flops) {
  const auto& p = s.p;
  const size_t rows_all = static_cast<size_t>(p.heads_q * p.total_q);
  row_max.resize(rows_all);
  log_sum.resize(rows_all);
  if (!all) {  // the forward's lse, where it is accurate enough
    for (size_t i = 0; i < rows_all; ++i) row_max[i] = C(p.lse_in[i]);
    std::fill(log_sum.begin(), log_sum.end(), C(0));
  }
  std::vector<WorkItem> items;
  flops = 0;
  for (int64_t b = 0; b < p.num_sequences; ++b) {
    const Sequence& q = s.seqs[b];
    for (int64_t blk = 0; blk * block_q < q.Lq; ++blk) {
      const int64_t i0 = blk * block_q, rows = std::min(block_q, q.Lq - i0);
      const attention::KeyRange first = attention::visible_keys(p, i0, q.Lq, q.Lk);
      const attention::KeyRange last = attention::visible_keys(p, i0 + rows - 1, q.Lq, q.Lk);
      const double cost = 2.0 * double(rows) * double(std::max<int64_t>(last.hi - first.lo, 1)) * double(s.D);
      for (int64_t h = 0; h < p.heads_q; ++h) {
        if (!all && !lse_too_coarse(p.lse_in + h * p.total_q + q.q0 + i0, rows)) continue;
        items.push_back({b, h, blk, cost});
        flops += cost;
      }
    }
  }
  return items;
}

}  // namespace bwd
SCREE_CPU_NAMESPACE_END
