// CUDA varlen attention host API (forward, backward) over the same VarlenParams as the CPU path.
// Pointers in the params are device pointers, the offsets included (int32 or int64 on the device);
// every launch goes to the caller's stream and is followed by an error check that throws
// scree::Error. Nothing here includes a CUDA header: the stream is passed as a void*
// (a cudaStream_t), so framework bindings need no CUDA toolkit to call it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "scree/attention/params.h"

namespace scree::attention {

// Head dims (D == Dv) this build compiled kernels for (SCREE_HEADDIMS), ascending.
std::vector<int> cuda_head_dims();

// Whether this build compiled kernels for `dtype` at `head_dim` (SCREE_CUDA_DTYPES x SCREE_HEADDIMS).
bool cuda_compiled(DType dtype, int64_t head_dim);

// Throws scree::Error (Unsupported / ShapeMismatch / InvalidArgument / DTypeMismatch) when the
// CUDA kernels cannot serve p: dtype not float16/bfloat16, head dim not compiled, D != Dv, null
// pointers, heads not divisible. Offsets are not read (they live on the device): the kernels clamp
// every sequence into [0, total) so that bad device offsets can never cause an out-of-bounds access.
void validate_cuda(const VarlenParams& p);

// out (Tq, Hq, Dv) and, when p.lse is set, lse (Hq, Tq) float32. Grid sized from the host-side
// maxima p.max_seqlen_q (an upper bound is fine: extra tiles exit at once). On sm_90 devices the
// Hopper kernel (wgmma, TMA) runs at head dim 128 (where it is faster), the portable sm80 kernel
// elsewhere; the environment variable SCREE_CUDA_PATH=sm80 forces the portable one, =sm90 the
// Hopper one wherever it is compiled (head dims 64 and 128). `workspace` (at least
// varlen_fwd_cuda_workspace_bytes(p.total_q, p.num_sequences), 16-byte aligned, device memory of the
// stream's device) holds the persistent scheduler's tile counter and, over short sequences, the
// packed-tile schedule, which the call writes on the stream: the caller
// allocates it with its framework's caching allocator (a cudaMallocAsync of it per call cost ~12 us
// of host time, ~100 us after every device sync, which returns the pool's memory on an H200 host).
// With p.tile_schedule set, the schedule goes there instead (the workspace then needs the counter
// only) and is packed once: returns true when the call's tiles came from p.tile_schedule (written
// by it, or read where p.tile_schedule_ready), so that the caller may pass ready from then on.
bool varlen_fwd_cuda(const VarlenParams& p, void* workspace, size_t workspace_bytes, void* stream);

// Bytes of device workspace varlen_fwd_cuda needs for a call with these totals (16 + ~16 per
// sequence: the packed-tile schedule's bound).
size_t varlen_fwd_cuda_workspace_bytes(int64_t total_q, int64_t num_sequences);

// Bytes of a packed-tile schedule (VarlenParams::tile_schedule) over `rows` packed rows (the
// forward: query tokens; the backward: key tokens) in num_sequences sequences.
size_t cuda_tile_schedule_bytes(int64_t rows, int64_t num_sequences);

// Which forward kernel varlen_fwd_cuda would run for p on the current device: "sm90" or "sm80".
const char* cuda_forward_path(const VarlenParams& p);

// Bytes of device workspace varlen_bwd_cuda needs (a small header, float32 row sums of dout*out and
// the lse in base-2 units, the float32 dq accumulator, int32 ordering counters when deterministic,
// and room for the packed key-tile schedule of short sequences). The caller allocates it with its
// framework's allocator, 16-byte aligned. Where every sequence's keys fit one packed key tile
// (max_seqlen_k <= 128) the Hopper kernel writes dq itself and the accumulator is left out.
size_t varlen_bwd_cuda_workspace_bytes(const VarlenBackwardParams& p, bool deterministic);
// The same from the sizes it depends on (for callers that allocate before they have pointers: JAX).
// max_seqlen_k < 0 (unknown) always counts the accumulator: enough for any call of these sizes.
size_t varlen_bwd_cuda_workspace_bytes(int64_t total_q, int64_t total_k, int64_t num_sequences, int64_t heads_q,
                                       int64_t head_dim, bool deterministic, DType dtype = DType::Float32,
                                       int64_t max_seqlen_k = -1);

// dq, dk, dv. dk/dv of a kv head are summed over its query heads inside one thread block (no
// atomics); dq is accumulated in float32 in the workspace and converted at the end. On sm_90 the
// Hopper kernel (wgmma, TMA) adds each key tile's dq with bulk reduce-adds, in a fixed order per
// query block when deterministic; the portable kernel uses float32 atomics, or, when
// deterministic, a second kernel that owns each dq tile (~1.4x the matrix work). Either way a
// deterministic run gives the same bits every time. SCREE_CUDA_PATH chooses as for the forward.
// p.tile_schedule (the backward's own, over key tiles) and the return value as for the forward.
bool varlen_bwd_cuda(const VarlenBackwardParams& p, void* workspace, size_t workspace_bytes, bool deterministic,
                     void* stream);

// Which backward varlen_bwd_cuda would run for p on the current device: "sm90" or "sm80".
const char* cuda_backward_path(const VarlenBackwardParams& p);

}  // namespace scree::attention
