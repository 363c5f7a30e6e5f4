// Paged decode (include/scree/attention/paged.h): one query per sequence over a paged KV cache.
// Decode reads every cached key and value once and does little math with each (Hq / Hk queries
// a key), so the kernel is built for bandwidth, and its math must stay off the issue slots the
// copies need: one thread block per (key split, kv head, block of 16 query heads, sequence);
// tiles of 64 keys gathered through the page table into shared memory by cp.async, three stages
// in flight (paged_rows.cuh); the GQA group's query heads are the 16 rows of m16n8k16 tensor-core
// products (S = Q K^T, O += P V, P kept in registers), each warp taking 16 keys of a tile with its
// own online softmax; the warps merged through shared memory, the splits of a sequence by a second
// kernel weighted by their lse, launched as a programmatic dependent of the first.
//
// Why tensor cores for a memory-bound kernel: the first version (CUDA cores, a key row per 16
// lanes, shuffles to reduce q.k) spent ~80 warp instructions a key row and reached 47% of the copy
// rate at 64 x 16k (benchmarks/NOTES.md); here a key row costs ~8 (two mma, an ldmatrix, its share
// of the softmax and of the copy), most of it the page lookup.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "cuda_check.h"
#include "launch_common.cuh"
#include "online_softmax.cuh"
#include "paged_rows.cuh"
#include "scree/attention/paged.h"
#include "scree/error.h"
#include "sm80/mma_sm80.cuh"
#include "sm80/smem_tile_sm80.cuh"
#include "sm90/sm_count.h"

namespace scree::cuda_attention::paged {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kBlockKeys = 16 * kWarps;  // keys a stage: 16 a warp (one k-step of P V)
constexpr int kStages = 3;               // tiles in flight: 2 blocks x 2 x 32 KiB a SM at d128
constexpr int kHeadRows = 16;            // query heads a block: the m16 rows of the products
constexpr int kMinSplitKeys = 256;

template <int D>
struct Smem {
  using Tile = SmemTile<kBlockKeys, D>;
  // K and V of each stage; reused after the loop for the warps' partial results (O, max, sum).
  static constexpr int kPipeline = kStages * 2 * Tile::kBytes;  // 96 KiB at d128, 48 KiB at d64
  static constexpr int kMerge = kWarps * kHeadRows * (D + 2) * int(sizeof(float));
  static constexpr int kBytes = kPipeline > kMerge ? kPipeline : kMerge;
  static constexpr int kBlocksPerSm = (227 * 1024) / kBytes;  // Hopper: 227 KiB a SM for blocks
};

// kFolded: no softcap and scale > 0 (ScoreMap::folds()): scores stay raw q.k until the exp2.
template <class T, int D, bool kFolded>
__global__ void __launch_bounds__(kThreads) paged_decode_kernel(const attention::PagedDecodeParams p,
                                                                const ScoreMap score, const int32_t page_shift,
                                                                int splits, int head_blocks, float* ws_out,
                                                                float* ws_lse) {
  using Tile = typename Smem<D>::Tile;
  constexpr int KS = D / 16;  // k-steps of Q K^T
  constexpr int DT = D / 8;   // n-tiles of O
  extern __shared__ __align__(128) char smem[];
  // The combine kernel (launched with programmatic stream serialization) may be scheduled now: its
  // blocks wait at griddepcontrol.wait for this grid's end and memory, and its launch overlaps this
  // grid instead of following it.
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
  const int split = blockIdx.x;
  const int kvh = int(blockIdx.y) / head_blocks, hb = int(blockIdx.y) % head_blocks;
  const int64_t seq = blockIdx.z;
  const int group = int(p.heads_q / p.heads_k);
  const int h0 = kvh * group + hb * kHeadRows;  // the block's first query head
  const int rows = min(kHeadRows, group - hb * kHeadRows);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, g = lane / 4, t = lane % 4;

  // Keys of this split: the visible keys [first, len) cut into `splits` chunks of whole tiles.
  // The length is clamped into the table (a bad length never reads past it).
  const int64_t cap_len = p.table_width * p.page_size;
  const int32_t len = int32_t(min(max(int64_t(p.kv_lens[seq]), int64_t(0)), cap_len));
  const int32_t first = p.window_left >= 0 ? int32_t(max(int64_t(0), int64_t(len) - 1 - p.window_left)) : 0;
  const int64_t per = (int64_t(len - first) + splits - 1) / splits;
  const int64_t chunk = (per + kBlockKeys - 1) / kBlockKeys * kBlockKeys;
  const int32_t lo = int32_t(min(int64_t(len), first + split * chunk));
  const int32_t hi = int32_t(min(int64_t(len), int64_t(lo) + chunk));
  const int tiles = int((hi - lo + kBlockKeys - 1) / kBlockKeys);

  // Q as the A operand of every k-step: rows g and g + 8 of the block's heads (zero past `rows`).
  uint32_t qa[KS][4];
  {
    const T* qs = static_cast<const T*>(p.q) + seq * p.q_row_stride + 2 * t;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = g + 8 * half;
      const T* qr = qs + int64_t(h0 + r) * p.q_head_stride;
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        qa[ks][half] = r < rows ? *reinterpret_cast<const uint32_t*>(qr + 16 * ks) : 0u;
        qa[ks][2 + half] = r < rows ? *reinterpret_cast<const uint32_t*>(qr + 16 * ks + 8) : 0u;
      }
    }
  }

  const T* kp = static_cast<const T*>(p.k_pages) + kvh * p.page_head_stride;
  const T* vp = static_cast<const T*>(p.v_pages) + kvh * p.page_head_stride;
  const PageMap pages{p.page_table + seq * p.table_stride, p.page_stride, p.page_row_stride,
                      int32_t(p.page_size), int32_t(min(p.num_pages, int64_t(INT32_MAX)) - 1), page_shift};
  auto sk = [&](int stage) { return Tile{smem + (2 * stage) * Tile::kBytes}; };
  auto sv = [&](int stage) { return Tile{smem + (2 * stage + 1) * Tile::kBytes}; };
  // Every call commits a group, empty past the last tile, so the wait below counts uniformly.
  auto load = [&](int tile) {
    if (tile < tiles) {
      load_paged_rows<kThreads>(sk(tile % kStages), sv(tile % kStages), kp, vp, pages, lo + tile * kBlockKeys, hi);
    }
    cp_async_commit();
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) load(s);

  RowState st;
  float o[DT][4];
#pragma unroll
  for (int dt = 0; dt < DT; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
  for (int it = 0; it < tiles; ++it) {
    cp_async_wait<kStages - 2>();  // tile it has landed (for this thread's copies)
    __syncthreads();               // ... and everyone's; the stage of tile it - 1 is free
    load(it + kStages - 1);
    const Tile k_tile = sk(it % kStages), v_tile = sv(it % kStages);
    float s[2][4] = {};
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      uint32_t b[4];
      k_tile.load_b(b, 16 * warp, 16 * ks);
      mma_16816<T>(s[0], qa[ks], b[0], b[1]);
      mma_16816<T>(s[1], qa[ks], b[2], b[3]);
    }
    const int32_t n0 = lo + it * kBlockKeys + 16 * warp;  // key of this warp's column 0
    float alpha[2];
    bool moved;
    if (n0 + 16 <= hi) {
      moved = softmax_scores_impl<false, kFolded>(s, st, ColMask{}, score, alpha);
    } else {  // the last tile: keys at or past hi are masked (columns relative to key n0 + 2t)
      const int end = hi - n0 - 2 * t;
      moved = softmax_scores_impl<true, kFolded>(s, st, ColMask{{INT32_MIN / 2, INT32_MIN / 2}, {end, end}}, score,
                                                 alpha);
    }
    if (moved) rescale(o, alpha);
    uint32_t pa[4];
    acc_to_a<T>(pa, s[0], s[1]);
#pragma unroll
    for (int j = 0; j < D / 16; ++j) {
      uint32_t b[4];
      v_tile.load_b_trans(b, 16 * j, 16 * warp);
      mma_16816<T>(o[2 * j], pa, b[0], b[1]);
      mma_16816<T>(o[2 * j + 1], pa, b[2], b[3]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the pipeline's shared memory becomes the merge buffer

  // Merge the warps: each leaves its rows' max (base 2), sum and unnormalised O.
  float* sm_o = reinterpret_cast<float*>(smem);  // [warp][row][D]
  float* sm_m = sm_o + kWarps * kHeadRows * D;   // [warp][row]
  float* sm_l = sm_m + kWarps * kHeadRows;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = g + 8 * r;
    const float l = quad_sum(st.sum[r]);
    if (t == 0) {
      sm_m[warp * kHeadRows + row] = st.max[r];
      sm_l[warp * kHeadRows + row] = l;
    }
    float* dst = sm_o + (warp * kHeadRows + row) * D + 2 * t;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      dst[8 * dt] = o[dt][2 * r];
      dst[8 * dt + 1] = o[dt][2 * r + 1];
    }
  }
  __syncthreads();
  const int64_t n = p.num_sequences, hq = p.heads_q;
  for (int e = int(threadIdx.x); e < rows * D; e += kThreads) {
    const int r = e / D, d = e % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sm_m[w * kHeadRows + r]);
    float tot = 0.f, a = 0.f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float wt = exp2_ftz(sm_m[w * kHeadRows + r] - mx);
        tot += sm_l[w * kHeadRows + r] * wt;
        a += sm_o[(w * kHeadRows + r) * D + d] * wt;
      }
    }
    const int64_t h = h0 + r;
    const float out = tot > 0.f ? a / tot : 0.f;
    const float lse = tot > 0.f ? mx * kLn2 + logf(tot) : -INFINITY;
    if (splits == 1) {
      static_cast<T*>(p.out)[seq * p.out_row_stride + h * p.out_head_stride + d] = static_cast<T>(out);
      if (d == 0 && p.lse != nullptr) p.lse[h * n + seq] = lse;
    } else {
      const int64_t slot = (seq * hq + h) * splits + split;
      ws_out[slot * D + d] = out;
      if (d == 0) ws_lse[slot] = lse;
    }
  }
}

// The splits of each (sequence, query head) weighted by exp(lse_split - lse).
template <class T, int D>
__global__ void combine_kernel(const attention::PagedDecodeParams p, int splits, const float* ws_out,
                               const float* ws_lse) {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");  // the split kernel's partials are complete and visible
#endif
  const int64_t idx = blockIdx.x, hq = p.heads_q;
  const int64_t seq = idx / hq, h = idx % hq;
  const int d = threadIdx.x;
  const float* lses = ws_lse + idx * splits;
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, lses[s]);
  float tot = 0.f, a = 0.f;
  if (mx != -INFINITY) {
    for (int s = 0; s < splits; ++s) {
      const float w = __expf(lses[s] - mx);
      tot += w;
      a += w * ws_out[(idx * splits + s) * D + d];
    }
  }
  static_cast<T*>(p.out)[seq * p.out_row_stride + h * p.out_head_stride + d] = static_cast<T>(tot > 0.f ? a / tot : 0.f);
  if (d == 0 && p.lse != nullptr) p.lse[h * p.num_sequences + seq] = tot > 0.f ? mx + logf(tot) : -INFINITY;
}

int head_blocks(const attention::PagedDecodeParams& p) {
  return int((p.heads_q / p.heads_k + kHeadRows - 1) / kHeadRows);
}

template <class T, int D, bool kFolded>
void launch(const attention::PagedDecodeParams& p, int splits, float* ws, cudaStream_t stream) {
  const int64_t slots = p.num_sequences * p.heads_q * splits;
  float* ws_out = ws;
  float* ws_lse = ws == nullptr ? nullptr : ws + slots * D;
  const int hb = head_blocks(p);
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(p.heads_k * hb),
                  static_cast<unsigned>(p.num_sequences));
  const float cap = static_cast<float>(p.softcap);
  const ScoreMap score{static_cast<float>(p.scale), cap, cap > 0.f ? 1.f / cap : 0.f,
                       static_cast<float>(p.scale) * kLog2e};
  int32_t shift = -1;
  for (int32_t b = 0; b < 31; ++b) {
    if ((int64_t(1) << b) == p.page_size) shift = b;
  }
  auto kernel = paged_decode_kernel<T, D, kFolded>;
  set_smem(kernel, Smem<D>::kBytes);
  kernel<<<grid, kThreads, Smem<D>::kBytes, stream>>>(p, score, shift, splits, hb, ws_out, ws_lse);
  check_cuda(cudaGetLastError(), "paged_decode_kernel launch");
  if (splits > 1) {
    // Programmatic dependent launch (sm_90): the combine's launch latency hides under the split
    // kernel's tail, a few microseconds of a ~90 us step at 16 x 4k.
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(static_cast<unsigned>(p.num_sequences * p.heads_q));
    cfg.blockDim = dim3(D);
    cfg.stream = stream;
    int dev = 0, major = 0;
    check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = major >= 9 ? 1 : 0;  // earlier devices: a plain launch after the split kernel
    const float* out_arg = ws_out;
    const float* lse_arg = ws_lse;
    check_cuda(cudaLaunchKernelEx(&cfg, combine_kernel<T, D>, p, splits, out_arg, lse_arg),
               "paged_decode combine launch");
  }
}

template <class T, int D>
void launch_score(const attention::PagedDecodeParams& p, int splits, float* ws, cudaStream_t stream) {
  if (p.softcap == 0.0 && p.scale > 0.0) return launch<T, D, true>(p, splits, ws, stream);
  return launch<T, D, false>(p, splits, ws, stream);
}

template <class T>
void launch_dim(const attention::PagedDecodeParams& p, int splits, float* ws, cudaStream_t stream) {
  if (p.head_dim == 64) return launch_score<T, 64>(p, splits, ws, stream);
  return launch_score<T, 128>(p, splits, ws, stream);
}

}  // namespace
}  // namespace scree::cuda_attention::paged

namespace scree::attention {

void validate_paged_decode(const PagedDecodeParams& p) {
  auto unsupported = [](const std::string& what) { throw Error(ErrorKind::Unsupported, "paged decode on CUDA: " + what); };
  if (p.dtype != DType::BFloat16 && p.dtype != DType::Float16) unsupported("needs bfloat16 or float16");
  if (p.head_dim != 64 && p.head_dim != 128) unsupported("head dim " + std::to_string(p.head_dim) + " (64 or 128)");
  if (p.heads_k < 1 || p.heads_q % p.heads_k != 0) unsupported("query heads must be a multiple of kv heads");
  if (p.num_sequences > 65535 || p.heads_k * cuda_attention::paged::head_blocks(p) > 65535) {
    unsupported("more than 65535 sequences or kv heads x blocks of 16 query heads");
  }
  if (p.page_size < 1 || p.page_size > INT32_MAX || p.num_pages < 1 || p.table_stride < 0 || p.table_width < 0) {
    unsupported("an empty cache or bad page size");
  }
  // 16-byte loads of 8 elements: pointers and every stride a multiple of 8 elements.
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  for (int64_t s : {p.q_row_stride, p.q_head_stride, p.page_stride, p.page_row_stride, p.page_head_stride}) {
    if (s % 8 != 0) unsupported("strides must be multiples of 8 elements (16-byte loads)");
  }
  if (!aligned(p.q) || !aligned(p.k_pages) || !aligned(p.v_pages)) unsupported("q and the pages must be 16-byte aligned");
}

int paged_decode_splits(const PagedDecodeParams& p, int64_t max_kv_len) {
  namespace pd = cuda_attention::paged;
  const int64_t blocks = std::max<int64_t>(1, p.num_sequences * p.heads_k * pd::head_blocks(p));
  const int64_t resident = (p.head_dim == 64 ? pd::Smem<64>::kBlocksPerSm : pd::Smem<128>::kBlocksPerSm) *
                           static_cast<int64_t>(cuda_attention::sm90::sm_count());
  const int64_t tiles = std::max<int64_t>(1, (max_kv_len + pd::kBlockKeys - 1) / pd::kBlockKeys);
  const int64_t most = std::clamp<int64_t>((max_kv_len + pd::kMinSplitKeys - 1) / pd::kMinSplitKeys, 1, 64);
  // The split count with the least modelled time: waves of resident blocks (2 a SM at d128, 4 at
  // d64: shared memory) times the tiles a block streams plus ~1 tile of fixed cost (pipeline fill,
  // merge). A short last wave idles most SMs: 5 splits of batch 16 x 8 kv heads made 2.4 waves,
  // 61% / 76% of the copy rate at 4k / 16k on an H200, where 1 full wave was predicted faster
  // (benchmarks/NOTES.md).
  int64_t best = 1, best_cost = INT64_MAX;
  for (int64_t s = 1; s <= most; ++s) {
    const int64_t waves = (blocks * s + resident - 1) / resident;
    const int64_t cost = waves * ((tiles + s - 1) / s + 1);
    if (cost < best_cost) best = s, best_cost = cost;
  }
  return static_cast<int>(best);
}

size_t paged_decode_workspace_bytes(const PagedDecodeParams& p, int splits) {
  if (splits <= 1) return 0;
  return static_cast<size_t>(p.num_sequences * p.heads_q * splits) * static_cast<size_t>(p.head_dim + 1) * sizeof(float);
}

void paged_decode_cuda(const PagedDecodeParams& p, int splits, void* workspace, size_t workspace_bytes, void* stream) {
  validate_paged_decode(p);
  if (splits < 1) throw Error(ErrorKind::InvalidArgument, "paged decode: splits must be >= 1");
  const size_t need = paged_decode_workspace_bytes(p, splits);
  if (workspace_bytes < need || (need > 0 && workspace == nullptr)) {
    throw Error(ErrorKind::InvalidArgument, "paged decode: workspace holds " + std::to_string(workspace_bytes) +
                                                " bytes, this call needs " + std::to_string(need));
  }
  if (p.num_sequences == 0) return;
  auto* ws = static_cast<float*>(workspace);
  auto s = static_cast<cudaStream_t>(stream);
  if (p.dtype == DType::BFloat16) {
    cuda_attention::paged::launch_dim<__nv_bfloat16>(p, splits, ws, s);
  } else {
    cuda_attention::paged::launch_dim<__half>(p, splits, ws, s);
  }
}

}  // namespace scree::attention
