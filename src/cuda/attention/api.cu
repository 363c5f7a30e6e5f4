// The host API of include/scree/attention/cuda.h: validation of what the CUDA kernels can serve
// (shapes, types, alignment, grid limits; offsets stay on the device and are clamped there), the
// backward's workspace (bwd_workspace.h), and dispatch on (path, element type, head dim) to the
// launchers compiled for this build (SCREE_CUDA_<TYPE>_D<dim> and SCREE_CUDA_SM90_<TYPE>_D<dim>
// definitions from src/cuda/CMakeLists.txt).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "bwd_workspace.h"
#include "cuda_check.h"
#include "scree/attention/cuda.h"
#include "sm90/kv_source.h"
#include "sm90/tile_packing.h"
#include "scree/error.h"

namespace scree::cuda_attention {
using attention::VarlenBackwardParams;
using attention::VarlenParams;
// Defined and explicitly instantiated in instances/*.cu.
template <class T, int D>
void launch_fwd_sm80(const VarlenParams& p, cudaStream_t stream);
template <class T, int D>
void launch_bwd_sm80(const VarlenBackwardParams& p, const BwdWorkspace& ws, bool deterministic, cudaStream_t stream);
namespace sm90 {
template <class T, int D>
bool launch_fwd_sm90(const VarlenParams& p, char* workspace, cudaStream_t stream);
template <class T, int D>
bool launch_bwd_sm90(const VarlenBackwardParams& p, const BwdWorkspace& ws, bool deterministic, cudaStream_t stream);
}  // namespace sm90
}  // namespace scree::cuda_attention

namespace scree::attention {
namespace {

using cuda_attention::check_cuda;

// Every compiled (type, head dim), in one list; F(type, dtype tag, head dim) per entry.
#define SCREE_CUDA_INSTANCES(F) SCREE_BF16_32(F) SCREE_BF16_64(F) SCREE_BF16_128(F) \
  SCREE_FP16_32(F) SCREE_FP16_64(F) SCREE_FP16_128(F)
#if defined(SCREE_CUDA_BF16_D32)
#define SCREE_BF16_32(F) F(__nv_bfloat16, DType::BFloat16, 32)
#else
#define SCREE_BF16_32(F)
#endif
#if defined(SCREE_CUDA_BF16_D64)
#define SCREE_BF16_64(F) F(__nv_bfloat16, DType::BFloat16, 64)
#else
#define SCREE_BF16_64(F)
#endif
#if defined(SCREE_CUDA_BF16_D128)
#define SCREE_BF16_128(F) F(__nv_bfloat16, DType::BFloat16, 128)
#else
#define SCREE_BF16_128(F)
#endif
#if defined(SCREE_CUDA_FP16_D32)
#define SCREE_FP16_32(F) F(__half, DType::Float16, 32)
#else
#define SCREE_FP16_32(F)
#endif
#if defined(SCREE_CUDA_FP16_D64)
#define SCREE_FP16_64(F) F(__half, DType::Float16, 64)
#else
#define SCREE_FP16_64(F)
#endif
#if defined(SCREE_CUDA_FP16_D128)
#define SCREE_FP16_128(F) F(__half, DType::Float16, 128)
#else
#define SCREE_FP16_128(F)
#endif

// The Hopper instances, forward and backward (SCREE_CUDA_SM90_<TYPE>_D<dim>, compiled when 90a is
// in SCREE_CUDA_ARCHS and the head dim in SCREE_HEADDIMS).
#define SCREE_SM90_INSTANCES(F) SCREE_SM90_BF16_64(F) SCREE_SM90_BF16_128(F) SCREE_SM90_FP16_64(F) SCREE_SM90_FP16_128(F)
#if defined(SCREE_CUDA_SM90_BF16_D64)
#define SCREE_SM90_BF16_64(F) F(__nv_bfloat16, DType::BFloat16, 64)
#else
#define SCREE_SM90_BF16_64(F)
#endif
#if defined(SCREE_CUDA_SM90_BF16_D128)
#define SCREE_SM90_BF16_128(F) F(__nv_bfloat16, DType::BFloat16, 128)
#else
#define SCREE_SM90_BF16_128(F)
#endif
#if defined(SCREE_CUDA_SM90_FP16_D64)
#define SCREE_SM90_FP16_64(F) F(__half, DType::Float16, 64)
#else
#define SCREE_SM90_FP16_64(F)
#endif
#if defined(SCREE_CUDA_SM90_FP16_D128)
#define SCREE_SM90_FP16_128(F) F(__half, DType::Float16, 128)
#else
#define SCREE_SM90_FP16_128(F)
#endif

// Compute capability major of the current device, cached per device (one attribute query each).
int device_major() {
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  static int cache[64] = {};
  if (dev < 0 || dev >= 64) return 0;
  if (cache[dev] == 0) {
    int major = 0;
    check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
    cache[dev] = major;
  }
  return cache[dev];
}

bool sm90_compiled(DType dtype, int64_t head_dim) {
#define SCREE_MATCH(T, TAG, D) if (dtype == TAG && head_dim == D) return true;
  SCREE_SM90_INSTANCES(SCREE_MATCH)
#undef SCREE_MATCH
  (void)dtype, (void)head_dim;
  return false;
}

// The Hopper kernels serve p when compiled for its type and head dim (64, 128) and the device is
// sm_90: the forward is the faster one at both since the softmax rewrite (H200, benchmarks/NOTES.md:
// mix d128 566 vs 268 TFLOP/s, mix d64 387 vs 248; short d64 166 vs 173, within 5%).
// SCREE_CUDA_PATH=sm80 forces the portable kernels, =sm90 the Hopper ones wherever they are
// compiled (tests run both on one card); read at each call, so a process can switch.
bool use_sm90(const VarlenParams& p) {
  if (!sm90_compiled(p.dtype, p.head_dim) || device_major() != 9) return false;
  const char* forced = std::getenv("SCREE_CUDA_PATH");
  if (forced != nullptr && std::string(forced) == "sm80") return false;
  return true;
}

// The Hopper backward also needs a query token (a call with none only zeroes dK and dV, which the
// portable kernel does without tensor maps over empty arrays).
bool use_sm90_bwd(const VarlenBackwardParams& p) { return p.total_q > 0 && use_sm90(p); }

bool compiled(DType dtype, int64_t head_dim) {
#define SCREE_MATCH(T, TAG, D) if (dtype == TAG && head_dim == D) return true;
  SCREE_CUDA_INSTANCES(SCREE_MATCH)
#undef SCREE_MATCH
  (void)dtype, (void)head_dim;
  return false;
}

const char* dtype_label(DType t) {
  switch (t) {
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    default: return "this dtype";
  }
}

std::string dims_list() {
  std::string s;
  for (int d : cuda_head_dims()) s += (s.empty() ? "" : ", ") + std::to_string(d);
  return s.empty() ? "none" : s;
}

// 16-byte rows for cp.async: the base and both strides in whole 8-element units.
void require_aligned16(const void* ptr, int64_t row_stride, int64_t head_stride, int64_t rows, const char* name) {
  if (rows == 0) return;
  require(reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && row_stride % 8 == 0 && head_stride % 8 == 0,
          ErrorKind::Unsupported, [&] {
            return std::string(name) + " must be 16-byte aligned with row and head strides that are multiples of 8 "
                   "elements for the CUDA kernels (got strides " + std::to_string(row_stride) + ", " +
                   std::to_string(head_stride) + "); pass a contiguous tensor";
          });
}

// 4-byte stores of element pairs.
void require_aligned4(const void* ptr, int64_t row_stride, int64_t head_stride, int64_t rows, const char* name) {
  if (rows == 0) return;
  require(reinterpret_cast<uintptr_t>(ptr) % 4 == 0 && row_stride % 2 == 0 && head_stride % 2 == 0,
          ErrorKind::Unsupported, [&] {
            return std::string(name) + " must be 4-byte aligned with even row and head strides for the CUDA kernels";
          });
}

void require_present(const void* ptr, int64_t rows, const char* name) {
  require(rows == 0 || ptr != nullptr, ErrorKind::InvalidArgument,
          [&] { return std::string(name) + " is a null pointer"; });
}

constexpr int64_t kGridYZ = 65535;  // CUDA's limit on gridDim.y and gridDim.z
constexpr int64_t kMinTile = 64;    // smallest tile along a sequence (tile_grid in launch.cuh)

}  // namespace

std::vector<int> cuda_head_dims() {
  std::vector<int> out;
  for (int d : {32, 64, 128})
    for (DType t : {DType::BFloat16, DType::Float16})
      if (compiled(t, d)) {
        out.push_back(d);
        break;
      }
  return out;
}

bool cuda_compiled(DType dtype, int64_t head_dim) { return compiled(dtype, head_dim); }

void validate_cuda(const VarlenParams& p) {
  require(p.dtype == DType::Float16 || p.dtype == DType::BFloat16, ErrorKind::Unsupported, [&] {
    return std::string("the CUDA attention kernels take float16 or bfloat16, got ") + dtype_label(p.dtype) +
           " (cast the inputs, or run on the CPU)";
  });
  require(p.heads_k > 0 && p.heads_q >= 0 && p.heads_q % p.heads_k == 0, ErrorKind::ShapeMismatch, [&] {
    return "heads of q (" + std::to_string(p.heads_q) + ") must be a multiple of the heads of k and v (" +
           std::to_string(p.heads_k) + ")";
  });
  require(p.head_dim == p.head_dim_v, ErrorKind::Unsupported, [&] {
    return "the CUDA attention kernels need v's head dim equal to q's (" + std::to_string(p.head_dim) + " vs " +
           std::to_string(p.head_dim_v) + ")";
  });
  require(compiled(p.dtype, p.head_dim), ErrorKind::Unsupported, [&] {
    return "no CUDA attention kernel for head dim " + std::to_string(p.head_dim) + " in " + dtype_label(p.dtype) +
           " in this build (compiled head dims: " + dims_list() + "; set SCREE_HEADDIMS when building)";
  });
  require(p.num_sequences >= 0 && p.num_sequences < (int64_t(1) << 31), ErrorKind::Unsupported,
          [&] { return "at most 2^31 - 1 sequences per call, got " + std::to_string(p.num_sequences); });
  require(p.total_q < (int64_t(1) << 31) && p.total_k < (int64_t(1) << 31), ErrorKind::Unsupported,
          [&] { return std::string("at most 2^31 - 1 tokens per call in q and in k"); });
  require(p.max_seqlen_q >= 0 && p.max_seqlen_k >= 0 && (p.max_seqlen_q + kMinTile - 1) / kMinTile <= kGridYZ &&
              (p.max_seqlen_k + kMinTile - 1) / kMinTile <= kGridYZ,
          ErrorKind::Unsupported, [&] {
            return "max_seqlen_q / max_seqlen_k must be in [0, " + std::to_string(kGridYZ * kMinTile) + "], got " +
                   std::to_string(p.max_seqlen_q) + " / " + std::to_string(p.max_seqlen_k);
          });
  require(p.heads_q <= kGridYZ, ErrorKind::Unsupported,
          [&] { return "at most " + std::to_string(kGridYZ) + " query heads, got " + std::to_string(p.heads_q); });
  require(p.window_left >= kUnbounded && p.window_right >= kUnbounded, ErrorKind::InvalidArgument,
          [&] { return std::string("window sides must be >= 0, or -1 for unbounded"); });
  require(p.cu_seqlens_q.data != nullptr && p.cu_seqlens_k.data != nullptr, ErrorKind::InvalidArgument,
          [&] { return std::string("cu_seqlens_q / cu_seqlens_k are null pointers"); });
  require_present(p.q, p.total_q, "q");
  require_present(p.k, p.total_k, "k");
  require_present(p.v, p.total_k, "v");
  require_present(p.out, p.total_q, "out");
  require_aligned16(p.q, p.q_row_stride, p.q_head_stride, p.total_q, "q");
  require_aligned16(p.k, p.k_row_stride, p.k_head_stride, p.total_k, "k");
  require_aligned16(p.v, p.v_row_stride, p.v_head_stride, p.total_k, "v");
  require_aligned4(p.out, p.out_row_stride, p.out_head_stride, p.total_q, "out");
}

const char* cuda_forward_path(const VarlenParams& p) { return use_sm90(p) ? "sm90" : "sm80"; }

// The Hopper forward's tile counter (8 bytes, padded to the 16-byte alignment asked of the buffer),
// then room for the packed-tile schedule (sm90/tile_packing.h) or the grouped tiles' sequence ranks
// (sm90/sequence_rank.cuh: 4 bytes a sequence), whichever is larger.
size_t varlen_fwd_cuda_workspace_bytes(int64_t total_q, int64_t num_sequences) {
  const size_t packed = cuda_attention::sm90::PackedTiles::bytes(total_q, num_sequences);
  const size_t ranks = size_t(4) * size_t(num_sequences > 0 ? num_sequences : 0);
  return cuda_attention::sm90::kFwdCounterBytes + (packed > ranks ? packed : ranks);
}

size_t cuda_tile_schedule_bytes(int64_t rows, int64_t num_sequences) {
  return cuda_attention::sm90::PackedTiles::bytes(rows, num_sequences);
}

namespace {
// The caller's schedule (VarlenParams::tile_schedule) over `rows` packed rows: large enough, aligned,
// and present where it is said to be ready.
void require_tile_schedule(const VarlenParams& p, int64_t rows) {
  require(p.tile_schedule != nullptr || !p.tile_schedule_ready, ErrorKind::InvalidArgument,
          [] { return std::string("tile_schedule_ready without a tile schedule"); });
  if (p.tile_schedule == nullptr) return;
  const size_t need = cuda_tile_schedule_bytes(rows, p.num_sequences);
  require(p.tile_schedule_bytes >= need && reinterpret_cast<uintptr_t>(p.tile_schedule) % 16 == 0,
          ErrorKind::InvalidArgument, [&] {
            return "the tile schedule needs " + std::to_string(need) + " bytes, 16-byte aligned, got " +
                   std::to_string(p.tile_schedule_bytes) + " at an address " +
                   (reinterpret_cast<uintptr_t>(p.tile_schedule) % 16 == 0 ? "aligned" : "not 16-byte aligned");
          });
}
}  // namespace

bool varlen_fwd_cuda(const VarlenParams& params, void* workspace, size_t workspace_bytes, void* stream) {
  validate_cuda(params);
  VarlenParams p = params;
  make_windows_reachable(p);  // as the CPU entry points: a side past every distance is unbounded
  require_tile_schedule(p, p.total_q);
  // The packed order needs its schedule's room (unless the caller keeps it), longest-first grouped
  // tiles their ranks' room; the per-sequence order only the counter.
  const bool packs = use_sm90(p) && cuda_attention::sm90::packed_tiles_chosen(p);
  const bool ranks = use_sm90(p) && cuda_attention::sm90::fwd_head_group(p) > 1 &&
                     cuda_attention::sm90::grouped_longest_first();
  const size_t need = (packs && p.tile_schedule == nullptr) || ranks
                          ? varlen_fwd_cuda_workspace_bytes(p.total_q, p.num_sequences)
                          : cuda_attention::sm90::kFwdCounterBytes;
  require(workspace != nullptr && workspace_bytes >= need, ErrorKind::InvalidArgument, [&] {
    return "the forward needs " + std::to_string(need) + " bytes of workspace, got " + std::to_string(workspace_bytes);
  });
  require(reinterpret_cast<uintptr_t>(workspace) % 16 == 0, ErrorKind::InvalidArgument,
          [&] { return std::string("the workspace must be 16-byte aligned"); });
  if (p.paged) {  // pages read by TMA or cp.async (sm90/kv_source.h); the portable kernel reads packed rows only
    require(use_sm90(p), ErrorKind::Unsupported, [&] {
      return std::string("attention over a paged cache on CUDA runs on the Hopper kernels (an sm_90 device and ") +
             "head dims 64 and 128 in this build); this call: head dim " + std::to_string(p.head_dim);
    });
    const int64_t ps = p.page_size;
    require(ps >= 1, ErrorKind::InvalidArgument, [&] { return "page_size must be >= 1, got " + std::to_string(ps); });
    require(cuda_attention::sm90::paged_source(ps) == cuda_attention::sm90::KvSource::kPagesCopy ||
                (ps % 16 == 0 && (128 % ps == 0 || ps % 128 == 0)),
            ErrorKind::Unsupported, [&] {
              return "the TMA loader of the CUDA paged forward (SCREE_SM90_PAGED_LOADER=tma) takes pages of 16, 32, "
                     "64, 128 or a multiple of 128 tokens (whole boxes of a 128-key tile), got " + std::to_string(ps);
            });
    require(p.kv_page_stride % 8 == 0 && p.kv_rows / ps < (int64_t(1) << 31) &&
                (p.page_table_width == 0 || p.page_table != nullptr),
            ErrorKind::Unsupported, [] {
              return std::string("pages need a stride of a multiple of 8 elements, fewer than 2^31 pages, and a table");
            });
  }
  auto s = static_cast<cudaStream_t>(stream);
  if (use_sm90(p)) {
    auto* ws = static_cast<char*>(workspace);
#define SCREE_RUN(T, TAG, D) \
  if (p.dtype == TAG && p.head_dim == D) return cuda_attention::sm90::launch_fwd_sm90<T, D>(p, ws, s);
    SCREE_SM90_INSTANCES(SCREE_RUN)
#undef SCREE_RUN
  }
#define SCREE_RUN(T, TAG, D) \
  if (p.dtype == TAG && p.head_dim == D) return cuda_attention::launch_fwd_sm80<T, D>(p, s), false;
  SCREE_CUDA_INSTANCES(SCREE_RUN)
#undef SCREE_RUN
  (void)s;
  return false;
}

namespace {
// Whether the call's backward accumulates dQ in the workspace: all but the Hopper kernel's calls
// whose keys fit one packed tile per sequence (BwdWorkspace::writes_dq).
bool bwd_accumulates_dq(const VarlenBackwardParams& p) {
  return !(use_sm90_bwd(p) && cuda_attention::BwdWorkspace::writes_dq(p));
}
}  // namespace

size_t varlen_bwd_cuda_workspace_bytes(int64_t total_q, int64_t total_k, int64_t num_sequences, int64_t heads_q,
                                       int64_t head_dim, bool deterministic, DType dtype, int64_t max_seqlen_k) {
  bool accumulator = true;
  if (max_seqlen_k >= 0) {
    VarlenBackwardParams p;
    p.total_q = total_q, p.total_k = total_k, p.num_sequences = num_sequences, p.heads_q = heads_q;
    p.head_dim = head_dim, p.dtype = dtype, p.max_seqlen_k = max_seqlen_k;
    accumulator = bwd_accumulates_dq(p);
  }
  return cuda_attention::BwdWorkspace::sizes(total_q, total_k, num_sequences, heads_q, head_dim, deterministic,
                                             accumulator)
      .total();
}

size_t varlen_bwd_cuda_workspace_bytes(const VarlenBackwardParams& p, bool deterministic) {
  return cuda_attention::BwdWorkspace::sizes(p.total_q, p.total_k, p.num_sequences, p.heads_q, p.head_dim,
                                             deterministic, bwd_accumulates_dq(p))
      .total();
}

const char* cuda_backward_path(const VarlenBackwardParams& p) { return use_sm90_bwd(p) ? "sm90" : "sm80"; }

bool varlen_bwd_cuda(const VarlenBackwardParams& params, void* workspace, size_t workspace_bytes, bool deterministic,
                     void* stream) {
  validate_cuda(params);
  VarlenBackwardParams p = params;
  make_windows_reachable(p);
  require_tile_schedule(p, p.total_k);
  for (auto [ptr, rows, name] : {std::tuple{p.dout, p.total_q, "dout"}, std::tuple{(const void*)p.dq, p.total_q, "dq"},
                                 std::tuple{(const void*)p.dk, p.total_k, "dk"},
                                 std::tuple{(const void*)p.dv, p.total_k, "dv"},
                                 std::tuple{(const void*)p.lse_in, p.total_q, "lse"}})
    require_present(ptr, rows, name);
  require_aligned16(p.dout, p.dout_row_stride, p.dout_head_stride, p.total_q, "dout");
  require_aligned4(p.out, p.out_row_stride, p.out_head_stride, p.total_q, "out");
  require_aligned4(p.dq, p.dq_row_stride, p.dq_head_stride, p.total_q, "dq");
  require_aligned4(p.dk, p.dk_row_stride, p.dk_head_stride, p.total_k, "dk");
  require_aligned4(p.dv, p.dv_row_stride, p.dv_head_stride, p.total_k, "dv");
  const size_t need = varlen_bwd_cuda_workspace_bytes(p, deterministic);
  require(workspace_bytes >= need && (need == 0 || workspace != nullptr), ErrorKind::InvalidArgument, [&] {
    return "the backward needs " + std::to_string(need) + " bytes of workspace, got " + std::to_string(workspace_bytes);
  });
  require(reinterpret_cast<uintptr_t>(workspace) % 16 == 0, ErrorKind::InvalidArgument,
          [&] { return std::string("the workspace must be 16-byte aligned"); });
  const auto ws = cuda_attention::BwdWorkspace::carve(workspace, p.total_q, p.total_k, p.num_sequences, p.heads_q,
                                                      p.head_dim, deterministic, bwd_accumulates_dq(p));
  auto s = static_cast<cudaStream_t>(stream);
  if (use_sm90_bwd(p)) {
#define SCREE_RUN(T, TAG, D) \
  if (p.dtype == TAG && p.head_dim == D) return cuda_attention::sm90::launch_bwd_sm90<T, D>(p, ws, deterministic, s);
    SCREE_SM90_INSTANCES(SCREE_RUN)
#undef SCREE_RUN
  }
#define SCREE_RUN(T, TAG, D) \
  if (p.dtype == TAG && p.head_dim == D) return cuda_attention::launch_bwd_sm80<T, D>(p, ws, deterministic, s), false;
  SCREE_CUDA_INSTANCES(SCREE_RUN)
#undef SCREE_RUN
  (void)s, (void)ws;
  return false;
}

}  // namespace scree::attention
