// The backward's two memory-bound passes around its main kernels, shared by both paths:
//  preprocess: per (token, head): delta = rowsum(dO * O) in fp32, lse in base-2 units,
//              the fp32 dQ accumulator row and the deterministic-order counter zeroed (one pass
//              instead of a memset launch); block 0 also writes the workspace header (tile
//              counter 0, the true maximum lengths). Where the Hopper kernel writes dq itself
//              (no accumulator: every query's keys in one key tile), the rows that saw no key
//              (lse = -inf), which no tile writes, get dq = 0 here instead.
//  postprocess: dq = dq_accum * mult in dq's type (mult: the score scale the Hopper kernel leaves
//              out of dS, 1 for the sm80 one).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "bwd_workspace.h"
#include "fragment.cuh"
#include "scores.cuh"
#include "varlen_tile.cuh"

namespace scree::cuda_attention {

using attention::VarlenBackwardParams;

// The preprocess's lanes a row where out and dout rows are 16-byte aligned: a 16-byte chunk (8
// elements) each, where D / 8 is a power of two within a warp (kPreprocessVector); else a warp.
template <int D>
inline constexpr bool kPreprocessVector = D % 8 == 0 && D <= 256 && ((D / 8) & (D / 8 - 1)) == 0;
template <int D>
inline constexpr int kPreprocessLanes = kPreprocessVector<D> ? D / 8 : 32;

template <class T, int D>
__global__ void __launch_bounds__(128) bwd_preprocess_kernel(const VarlenBackwardParams p, const BwdWorkspace ws,
                                                             bool zero_keyless_dq) {
  const int lane = threadIdx.x % 32;
  if (blockIdx.x == 0) {
    // The true maxima over the sequences as the kernels clamp them (the host's max_seqlen may be
    // a loose bound): a block reduction, then one plain store (the header needs no zeroing).
    __shared__ int warp_max[2][4];
    int mq = 0, mk = 0;
    for (int64_t b = threadIdx.x; b < p.num_sequences; b += blockDim.x) {
      const SeqTile s = sequence(p, b);
      mq = max(mq, s.q_len), mk = max(mk, s.k_len);
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
      mq = max(mq, __shfl_xor_sync(0xffffffffu, mq, off));
      mk = max(mk, __shfl_xor_sync(0xffffffffu, mk, off));
    }
    if (lane == 0) warp_max[0][threadIdx.x / 32] = mq, warp_max[1][threadIdx.x / 32] = mk;
    __syncthreads();
    if (threadIdx.x == 0) {
      BwdHeader h{0ull, 0, 0};
      for (int w = 0; w < 4; ++w) h.max_seqlen_q = max(h.max_seqlen_q, warp_max[0][w]), h.max_seqlen_k = max(h.max_seqlen_k, warp_max[1][w]);
      *ws.header = h;
    }
  }
  // The padding of each head's row (tokens [total_q, ld)): read by TMA boxes that end past the
  // last token, never used (those queries are masked), written so that nothing reads garbage.
  const int64_t pad = ws.ld - p.total_q;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.heads_q * pad;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t at = (i / pad) * ws.ld + p.total_q + i % pad;
    ws.delta[at] = 0.f;
    if (ws.lse2 != nullptr) ws.lse2[at] = INFINITY;
  }
  // Each row (token, head) by a group of lanes: where the rows of out and dout are 16-byte aligned,
  // D / 8 lanes a row with one 16-byte load each of out and dout (on an H200 the warp-a-row loop of
  // 2-byte loads read them at ~1.9 TB/s: 138 us of a 0.63 ms tiny-sequence backward,
  // benchmarks/NOTES.md); else a warp a row, an element a lane per step.
  const int64_t rows = p.total_q * p.heads_q;
  auto by_groups = [&](auto vector_tag) {
    constexpr bool kVec = decltype(vector_tag)::value;
    constexpr int kLanes = kVec ? D / 8 : 32;  // a row's lanes (a power of two)
    constexpr int kRows = 32 / kLanes;         // rows a warp takes at once
    const int c = lane % kLanes;
    const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int64_t warps = int64_t(gridDim.x) * blockDim.x / 32;
    for (int64_t w0 = warp * kRows; w0 < rows; w0 += warps * kRows) {  // uniform over the warp (shuffles)
      const int64_t w = w0 + lane / kLanes;
      const bool live = w < rows;
      const int64_t t = live ? w / p.heads_q : 0, h = live ? w % p.heads_q : 0;
      const T* o = static_cast<const T*>(p.out) + t * p.out_row_stride + h * p.out_head_stride;
      const T* g = static_cast<const T*>(p.dout) + t * p.dout_row_stride + h * p.dout_head_stride;
      float acc = 0.f;
      if (live) {
        if constexpr (kVec) {
          const uint4 ov = *reinterpret_cast<const uint4*>(o + 8 * c), gv = *reinterpret_cast<const uint4*>(g + 8 * c);
          const T* oe = reinterpret_cast<const T*>(&ov);
          const T* ge = reinterpret_cast<const T*>(&gv);
#pragma unroll
          for (int e = 0; e < 8; ++e) acc += to_float(oe[e]) * to_float(ge[e]);
        } else {
#pragma unroll
          for (int d = c; d < D; d += 32) acc += to_float(o[d]) * to_float(g[d]);
        }
      }
#pragma unroll
      for (int off = kLanes / 2; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
      if (!live) continue;
      if (ws.dq_accum != nullptr) {
        float* row = ws.dq_accum + (t * p.heads_q + h) * D;
        if constexpr (kVec) {
          reinterpret_cast<float4*>(row + 8 * c)[0] = make_float4(0.f, 0.f, 0.f, 0.f);
          reinterpret_cast<float4*>(row + 8 * c)[1] = make_float4(0.f, 0.f, 0.f, 0.f);
        } else {
#pragma unroll
          for (int d = c; d < D; d += 32) row[d] = 0.f;
        }
      }
      const float lse = zero_keyless_dq || ws.lse2 != nullptr ? p.lse_in[h * p.total_q + t] : 0.f;
      if (zero_keyless_dq && lse == -INFINITY) {
        T* row = static_cast<T*>(p.dq) + t * p.dq_row_stride + h * p.dq_head_stride;
        for (int d = c; d < D; d += kLanes) row[d] = T(0.f);
      }
      if (c == 0) {
        ws.delta[h * ws.ld + t] = acc;
        if (ws.lse2 != nullptr) ws.lse2[h * ws.ld + t] = lse == -INFINITY ? INFINITY : lse * kLog2e;
        if (ws.dq_sem != nullptr) ws.dq_sem[h * p.total_q + t] = 0;
      }
    }
  };
  const bool vector = kPreprocessVector<D> && rows_16b(p.out, p.out_row_stride, p.out_head_stride) &&
                      rows_16b(p.dout, p.dout_row_stride, p.dout_head_stride);
  if constexpr (kPreprocessVector<D>) {
    if (vector) return by_groups(std::true_type{});
  }
  by_groups(std::false_type{});
}

// dq (Tq, Hq, D) in T from the fp32 accumulator laid out (Tq, Hq, D) contiguously. Where dq's rows
// are 16-byte aligned (kPreprocessVector's rule), D / 8 lanes a row, each with two 16-byte loads,
// one 16-byte store and one division; else 2 elements a thread (8-byte loads and two 64-bit
// divisions per 2 elements), which made the short d128 backward 3-7% slower on an H200
// (benchmarks/NOTES.md).
template <class T, int D, bool kVec>
__global__ void __launch_bounds__(256) dq_convert_kernel(const VarlenBackwardParams p, const float* dq_accum, float mult) {
  if constexpr (kVec) {
    constexpr int kLanes = D / 8;
    const int c = threadIdx.x % kLanes;
    const int64_t rows = p.total_q * p.heads_q;
    const int64_t step = int64_t(gridDim.x) * blockDim.x / kLanes;
    for (int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kLanes; row < rows; row += step) {
      const float4* src = reinterpret_cast<const float4*>(dq_accum + row * D + 8 * c);
      const float4 a = src[0], b = src[1];
      const int64_t t = row / p.heads_q, h = row - t * p.heads_q;
      const uint4 out{pack2<T>(a.x * mult, a.y * mult), pack2<T>(a.z * mult, a.w * mult),
                      pack2<T>(b.x * mult, b.y * mult), pack2<T>(b.z * mult, b.w * mult)};
      *reinterpret_cast<uint4*>(static_cast<T*>(p.dq) + t * p.dq_row_stride + h * p.dq_head_stride + 8 * c) = out;
    }
  } else {
    const int64_t n = p.total_q * p.heads_q * (D / 2);
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
      const int64_t row = i / (D / 2), d = (i % (D / 2)) * 2;
      const int64_t t = row / p.heads_q, h = row % p.heads_q;
      const float2 x = *reinterpret_cast<const float2*>(dq_accum + row * D + d);
      *reinterpret_cast<uint32_t*>(static_cast<T*>(p.dq) + t * p.dq_row_stride + h * p.dq_head_stride + d) =
          pack2<T>(x.x * mult, x.y * mult);
    }
  }
}

// Grid of a grid-stride pass over `items` units of work, `per_block` a block.
inline unsigned stride_grid(int64_t items, int64_t per_block) {
  const int64_t blocks = (items + per_block - 1) / per_block;
  return unsigned(blocks < 1 ? 1 : (blocks < 65536 * 8 ? blocks : 65536 * 8));
}

// Launches the preprocess (always one block at least: block 0 writes the header); a block of 4
// warps takes 4 x 32 / (D / 8) rows at once (16 at D = 128).
template <class T, int D>
void launch_bwd_preprocess(const VarlenBackwardParams& p, const BwdWorkspace& ws, cudaStream_t stream,
                           bool zero_keyless_dq = false) {
  constexpr int kRowsPerBlock = 4 * 32 / kPreprocessLanes<D>;
  bwd_preprocess_kernel<T, D>
      <<<stride_grid(p.total_q * p.heads_q, kRowsPerBlock), 128, 0, stream>>>(p, ws, zero_keyless_dq);
}

template <class T, int D>
void launch_dq_convert(const VarlenBackwardParams& p, const float* dq_accum, float mult, cudaStream_t stream) {
  if (p.total_q == 0 || p.heads_q == 0) return;
  if constexpr (kPreprocessVector<D>) {
    if (rows_16b(p.dq, p.dq_row_stride, p.dq_head_stride)) {
      dq_convert_kernel<T, D, true>
          <<<stride_grid(p.total_q * p.heads_q * (D / 8), 256), 256, 0, stream>>>(p, dq_accum, mult);
      return;
    }
  }
  dq_convert_kernel<T, D, false><<<stride_grid(p.total_q * p.heads_q * (D / 2), 256), 256, 0, stream>>>(p, dq_accum, mult);
}

}  // namespace scree::cuda_attention
