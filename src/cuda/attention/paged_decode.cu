// Paged decode (include/scree/attention/paged.h): one query per sequence over a paged KV cache.
// Decode reads every cached key and value once and does little math with them (Hq / Hk queries per
// row), so the kernel is built for bandwidth: one thread block per (key split, kv head, sequence)
// holding the GQA group's queries in registers, each group of D*2/16 lanes reading whole 16-byte
// slices of kUnroll key and value rows at a time out of their pages (the loads of a step are all
// issued before any is used), an online softmax per lane group, the groups merged through shared
// memory, and the splits of a sequence merged by a second kernel weighted by their lse.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "cuda_check.h"
#include "scree/attention/paged.h"
#include "scree/error.h"
#include "sm90/sm_count.h"

namespace scree::cuda_attention::paged {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kUnroll = 4;        // key rows in flight per lane group
constexpr int kMinSplitKeys = 256;

template <class T>
struct Pair;
template <>
struct Pair<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static __device__ float2 widen(T2 x) { return __bfloat1622float2(x); }
};
template <>
struct Pair<__half> {
  using T2 = __half2;
  static __device__ float2 widen(T2 x) { return __half22float2(x); }
};

// 8 elements of T (16 bytes) as floats.
template <class T>
__device__ inline void widen8(const uint4& raw, float (&x)[8]) {
  const auto* h = reinterpret_cast<const typename Pair<T>::T2*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = Pair<T>::widen(h[i]);
    x[2 * i] = f.x;
    x[2 * i + 1] = f.y;
  }
}

template <class T, int D, int G>
__global__ void __launch_bounds__(kThreads) paged_decode_kernel(const attention::PagedDecodeParams p, int splits,
                                                                float* ws_out, float* ws_lse) {
  constexpr int kLanes = D * static_cast<int>(sizeof(T)) / 16;  // lanes per key row (16 bytes each)
  constexpr int kRowsPerWarp = 32 / kLanes;
  constexpr int kGroups = kWarps * kRowsPerWarp;
  constexpr float kNegInf = -INFINITY;
  const int split = blockIdx.x, kvh = blockIdx.y;
  const int64_t seq = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = lane % kLanes, grp = warp * kRowsPerWarp + lane / kLanes;

  // Keys of this split: the sequence's visible keys [first, len) cut in `splits` pieces. Lengths
  // and page ids are clamped into the table and the cache (a bad table never reads outside).
  const int64_t cap_len = p.table_stride * p.page_size;
  const int64_t len = min(max(static_cast<int64_t>(p.kv_lens[seq]), int64_t(0)), cap_len);
  const int64_t first = p.window_left >= 0 ? max(int64_t(0), len - 1 - p.window_left) : 0;
  const int64_t chunk = (len - first + splits - 1) / splits;
  const int64_t lo = first + split * chunk, hi = min(len, lo + chunk);

  const bool capped = p.softcap > 0.0;
  const float cap = static_cast<float>(p.softcap);
  const float qscale = static_cast<float>(capped ? p.scale / p.softcap : p.scale);
  float q[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const T* qp = static_cast<const T*>(p.q) + seq * p.q_row_stride + (kvh * G + g) * p.q_head_stride + sub * 8;
    widen8<T>(*reinterpret_cast<const uint4*>(qp), q[g]);
#pragma unroll
    for (int i = 0; i < 8; ++i) q[g][i] *= qscale;
  }
  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = kNegInf;
    l[g] = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[g][i] = 0.f;
  }

  const int32_t* table = p.page_table + seq * p.table_stride;
  const T* kbase = static_cast<const T*>(p.k_pages) + kvh * p.page_head_stride + sub * 8;
  const T* vbase = static_cast<const T*>(p.v_pages) + kvh * p.page_head_stride + sub * 8;
  // The loop is uniform across a warp (its lane groups reduce with shuffles of the whole warp):
  // warp w takes kRowsPerWarp * kUnroll consecutive keys a step, lane group r of it kUnroll of those.
  const int64_t step = static_cast<int64_t>(kGroups) * kUnroll;
  const int64_t lane_off = static_cast<int64_t>(lane / kLanes) * kUnroll;
  // Rows of a step are loaded one step ahead (register double buffering), so their latency hides
  // behind the previous step's math.
  // Keys fit int32 (kv_lens are int32): one 32-bit division per step, then the page and the slot
  // advance row by row (a 64-bit division per row cost more than all the math of the row).
  const int32_t page_size = static_cast<int32_t>(p.page_size);
  const int32_t last_page = static_cast<int32_t>(min(p.num_pages, int64_t(INT32_MAX)) - 1);
  auto load = [&](int64_t base, uint4 (&kr)[kUnroll], uint4 (&vr)[kUnroll]) {
    const int32_t b32 = static_cast<int32_t>(min(base, int64_t(INT32_MAX)));
    int32_t col = b32 / page_size, slot = b32 - col * page_size;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (base + u < hi) {
        const int64_t page = min(max(table[col], 0), last_page);
        const int64_t at = page * p.page_stride + static_cast<int64_t>(slot) * p.page_row_stride;
        kr[u] = *reinterpret_cast<const uint4*>(kbase + at);
        vr[u] = *reinterpret_cast<const uint4*>(vbase + at);
      } else {
        kr[u] = make_uint4(0, 0, 0, 0);
        vr[u] = make_uint4(0, 0, 0, 0);
      }
      if (++slot == page_size) {
        slot = 0;
        ++col;
      }
    }
  };
  const int64_t wstart = lo + static_cast<int64_t>(warp) * kRowsPerWarp * kUnroll;
  uint4 kraw[kUnroll], vraw[kUnroll];
  load(wstart + lane_off, kraw, vraw);
  for (int64_t wbase = wstart; wbase < hi; wbase += step) {
    const int64_t base = wbase + lane_off;
    uint4 knext[kUnroll], vnext[kUnroll];
    load(base + step, knext, vnext);
    float s[kUnroll][G];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float k[8];
      widen8<T>(kraw[u], k);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float dot = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) dot = fmaf(q[g][i], k[i], dot);
#pragma unroll
        for (int o = kLanes / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        s[u][g] = base + u < hi ? (capped ? cap * tanhf(dot) : dot) : kNegInf;
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float mb = m[g];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) mb = fmaxf(mb, s[u][g]);
      if (mb == kNegInf) continue;  // nothing visible yet in this lane group
      const float alpha = __expf(m[g] - mb);  // 0 while m is -inf
      float pu[kUnroll], sum = 0.f;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        pu[u] = __expf(s[u][g] - mb);
        sum += pu[u];
      }
      l[g] = l[g] * alpha + sum;
      m[g] = mb;
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[g][i] *= alpha;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        float v[8];
        widen8<T>(vraw[u], v);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] = fmaf(pu[u], v[i], acc[g][i]);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      kraw[u] = knext[u];
      vraw[u] = vnext[u];
    }
  }

  // Merge the lane groups of the block.
  __shared__ float sm_m[kGroups][G], sm_l[kGroups][G];
  __shared__ float sm_acc[kGroups][G][D];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (sub == 0) {
      sm_m[grp][g] = m[g];
      sm_l[grp][g] = l[g];
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) sm_acc[grp][g][sub * 8 + i] = acc[g][i];
  }
  __syncthreads();
  const int64_t n = p.num_sequences, hq = p.heads_q;
  for (int e = threadIdx.x; e < G * D; e += kThreads) {
    const int g = e / D, d = e % D;
    float mx = kNegInf;
    for (int r = 0; r < kGroups; ++r) mx = fmaxf(mx, sm_m[r][g]);
    float tot = 0.f, a = 0.f;
    if (mx != kNegInf) {
      for (int r = 0; r < kGroups; ++r) {
        const float w = __expf(sm_m[r][g] - mx);
        tot += sm_l[r][g] * w;
        a += sm_acc[r][g][d] * w;
      }
    }
    const int64_t h = kvh * G + g;
    const float o = tot > 0.f ? a / tot : 0.f;
    const float lse = tot > 0.f ? mx + logf(tot) : kNegInf;
    if (splits == 1) {
      static_cast<T*>(p.out)[seq * p.out_row_stride + h * p.out_head_stride + d] = static_cast<T>(o);
      if (d == 0 && p.lse != nullptr) p.lse[h * n + seq] = lse;
    } else {
      const int64_t slot = (seq * hq + h) * splits + split;
      ws_out[slot * D + d] = o;
      if (d == 0) ws_lse[slot] = lse;
    }
  }
}

// The splits of each (sequence, query head) weighted by exp(lse_split - lse).
template <class T, int D>
__global__ void combine_kernel(const attention::PagedDecodeParams p, int splits, const float* ws_out,
                               const float* ws_lse) {
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

template <class T, int D, int G>
void launch(const attention::PagedDecodeParams& p, int splits, float* ws, cudaStream_t stream) {
  const int64_t slots = p.num_sequences * p.heads_q * splits;
  float* ws_out = ws;
  float* ws_lse = ws == nullptr ? nullptr : ws + slots * D;
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(p.heads_k),
                  static_cast<unsigned>(p.num_sequences));
  paged_decode_kernel<T, D, G><<<grid, kThreads, 0, stream>>>(p, splits, ws_out, ws_lse);
  check_cuda(cudaGetLastError(), "paged_decode_kernel launch");
  if (splits > 1) {
    combine_kernel<T, D><<<static_cast<unsigned>(p.num_sequences * p.heads_q), D, 0, stream>>>(p, splits, ws_out,
                                                                                               ws_lse);
    check_cuda(cudaGetLastError(), "paged_decode combine launch");
  }
}

template <class T, int D>
void launch_group(const attention::PagedDecodeParams& p, int splits, float* ws, cudaStream_t stream) {
  switch (p.heads_q / p.heads_k) {
    case 1: return launch<T, D, 1>(p, splits, ws, stream);
    case 2: return launch<T, D, 2>(p, splits, ws, stream);
    case 4: return launch<T, D, 4>(p, splits, ws, stream);
    case 8: return launch<T, D, 8>(p, splits, ws, stream);
    default: break;
  }
}

template <class T>
void launch_dim(const attention::PagedDecodeParams& p, int splits, float* ws, cudaStream_t stream) {
  if (p.head_dim == 64) return launch_group<T, 64>(p, splits, ws, stream);
  return launch_group<T, 128>(p, splits, ws, stream);
}

}  // namespace
}  // namespace scree::cuda_attention::paged

namespace scree::attention {

void validate_paged_decode(const PagedDecodeParams& p) {
  auto unsupported = [](const std::string& what) { throw Error(ErrorKind::Unsupported, "paged decode on CUDA: " + what); };
  if (p.dtype != DType::BFloat16 && p.dtype != DType::Float16) unsupported("needs bfloat16 or float16");
  if (p.head_dim != 64 && p.head_dim != 128) unsupported("head dim " + std::to_string(p.head_dim) + " (64 or 128)");
  if (p.heads_k < 1 || p.heads_q % p.heads_k != 0) unsupported("query heads must be a multiple of kv heads");
  const int64_t group = p.heads_q / p.heads_k;
  if (group != 1 && group != 2 && group != 4 && group != 8) {
    unsupported("GQA group of " + std::to_string(group) + " query heads per kv head (1, 2, 4 or 8)");
  }
  if (p.num_sequences > 65535 || p.heads_k > 65535) unsupported("more than 65535 sequences or kv heads");
  if (p.page_size < 1 || p.num_pages < 1 || p.table_stride < 0) unsupported("an empty cache or bad page size");
  // 16-byte loads of 8 elements: pointers and every stride a multiple of 8 elements.
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  for (int64_t s : {p.q_row_stride, p.q_head_stride, p.page_stride, p.page_row_stride, p.page_head_stride}) {
    if (s % 8 != 0) unsupported("strides must be multiples of 8 elements (16-byte loads)");
  }
  if (!aligned(p.q) || !aligned(p.k_pages) || !aligned(p.v_pages)) unsupported("q and the pages must be 16-byte aligned");
}

int paged_decode_splits(const PagedDecodeParams& p, int64_t max_kv_len) {
  const int64_t blocks = std::max<int64_t>(1, p.num_sequences * p.heads_k);
  // ~16 blocks per SM: 2-3 are resident at a time (141-220 registers a thread), so the last wave
  // of a grid of one block per (sequence, kv head) left most SMs idle (batch 64, 8 kv heads: 512
  // blocks in 1.3 waves of 396, 37% of the copy rate at 16k; benchmarks/NOTES.md).
  const int64_t want = (16 * static_cast<int64_t>(cuda_attention::sm90::sm_count()) + blocks - 1) / blocks;
  const int64_t most = std::max<int64_t>(1, (max_kv_len + cuda_attention::paged::kMinSplitKeys - 1) /
                                                cuda_attention::paged::kMinSplitKeys);
  return static_cast<int>(std::clamp<int64_t>(want, 1, std::min<int64_t>(most, 64)));
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
