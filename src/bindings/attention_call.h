// One varlen attention call as both bindings see it, and the one function that turns it into the
// kernels' VarlenParams: AttentionArgs (the scalar arguments, a typed record that Python builds as
// scree._C.AttentionArgs and XLA FFI decodes from the call's attributes under the same member
// names), ArrayArg (an array argument reduced to pointer, shape, element strides, element type and
// device, made from an nb::ndarray or an ffi::AnyBuffer), and fill_inputs / fill_forward_outputs /
// fill_backward, which check every argument (typed scree::Error naming it) and fill the params.
// The offsets are not read here: the CPU kernels validate host offsets at their entry (once per
// call) and the CUDA kernels clamp device offsets. No framework header: this file serves both.
#pragma once

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

#include "scree/attention/params.h"
#include "scree/error.h"

namespace scree::bindings {

// The scalars of one varlen attention call (forward or backward). Window sides -1 = unbounded;
// softcap 0 = off; max_seqlen may be upper bounds (the GPU grid is sized from them). deterministic
// only matters to the CUDA backward (the CPU kernels always are).
struct AttentionArgs {
  int64_t max_seqlen_q = 0;
  int64_t max_seqlen_k = 0;
  double scale = 1.0;
  bool causal = false;
  int64_t window_left = attention::kUnbounded;
  int64_t window_right = attention::kUnbounded;
  double softcap = 0.0;
  bool deterministic = false;
};

// Element types an attention call can meet; Other carries DLPack's (code, bits) for the message.
enum class ElemType { Float16, BFloat16, Float32, Float64, Int32, Int64, Other };

// DLPack's device type numbers (kDLCPU, kDLCUDA), which XLA's handlers also use for their platform.
inline constexpr int kCpuDevice = 1;
inline constexpr int kCudaDevice = 2;

// One array argument: the first three dims and strides (in elements) are kept; ndim is the true rank.
struct ArrayArg {
  const char* name = "";
  void* data = nullptr;
  int ndim = 0;
  int64_t shape[3] = {0, 0, 0};
  int64_t stride[3] = {0, 0, 0};
  ElemType type = ElemType::Other;
  int code = 0, bits = 0;  // DLPack's dtype code and bits, for messages about unexpected types
  int device_type = kCpuDevice, device_id = 0;
  int64_t nbytes = 0;
};

inline std::string type_name(const ArrayArg& a) {
  switch (a.type) {
    case ElemType::Float16: return "float16";
    case ElemType::BFloat16: return "bfloat16";
    case ElemType::Float32: return "float32";
    case ElemType::Float64: return "float64";
    case ElemType::Int32: return "int32";
    case ElemType::Int64: return "int64";
    case ElemType::Other: break;
  }
  static const char* const kinds[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
  const std::string kind = a.code >= 0 && a.code <= 6 ? kinds[a.code] : "code" + std::to_string(a.code) + "_";
  return kind + std::to_string(a.bits);
}

inline std::string device_name(int type, int id) {
  if (type == kCpuDevice) return "cpu";
  if (type == kCudaDevice) return "cuda:" + std::to_string(id);
  return "DLPack device " + std::to_string(type) + ":" + std::to_string(id);
}

inline std::string shape_text(const ArrayArg& a) {
  std::string s = "(";
  for (int i = 0; i < a.ndim && i < 3; ++i) s += std::to_string(a.shape[i]) + (a.ndim == 1 || i + 1 < a.ndim ? "," : "");
  return s + (a.ndim > 3 ? " ...)" : ")");
}

// `a` must live where `q` lives (same device type and, for GPUs, ordinal): a kernel handed a
// pointer of another device would fault, so this comes before anything else about `a`.
inline void require_with_q(const ArrayArg& a, const ArrayArg& q) {
  const bool same = a.device_type == q.device_type && (q.device_type == kCpuDevice || a.device_id == q.device_id);
  require(same, ErrorKind::InvalidArgument, [&] {
    return std::string(a.name) + " is on " + device_name(a.device_type, a.device_id) + " but q is on " +
           device_name(q.device_type, q.device_id) + ": all arrays of one call must be on the same device";
  });
}

// A (rows, heads, dim) array whose last dimension is contiguous; rows and heads may be strided.
inline void require_rows_heads_dim(const ArrayArg& a, const char* dims) {
  require(a.ndim == 3, ErrorKind::ShapeMismatch, [&] {
    return std::string(a.name) + " values must have shape " + dims + ", got " + std::to_string(a.ndim) + "-D";
  });
  // (an array with no element has no layout to speak of: NumPy gives empty ones strides of 0)
  const bool empty = a.shape[0] == 0 || a.shape[1] == 0 || a.shape[2] == 0;
  require(empty || a.shape[2] <= 1 || a.stride[2] == 1, ErrorKind::InvalidArgument,
          [&] { return std::string(a.name) + " must have a contiguous last (head_dim) dimension"; });
}

inline void require_same_type(const ArrayArg& a, const ArrayArg& ref) {
  require(a.type == ref.type && a.code == ref.code && a.bits == ref.bits, ErrorKind::DTypeMismatch, [&] {
    return std::string(a.name) + " and " + ref.name + " must have the same dtype, got " + type_name(a) + " and " +
           type_name(ref);
  });
}

inline void require_dims(const ArrayArg& a, int64_t d0, int64_t d1, int64_t d2) {
  require(a.shape[0] == d0 && a.shape[1] == d1 && a.shape[2] == d2, ErrorKind::ShapeMismatch, [&] {
    return std::string(a.name) + " must have shape (" + std::to_string(d0) + ", " + std::to_string(d1) + ", " +
           std::to_string(d2) + "), got " + shape_text(a);
  });
}

inline DType attention_dtype(const ArrayArg& q) {
  switch (q.type) {
    case ElemType::Float32: return DType::Float32;
    case ElemType::Float64: return DType::Float64;
    case ElemType::Float16: return DType::Float16;
    case ElemType::BFloat16: return DType::BFloat16;
    default: break;
  }
  throw Error(ErrorKind::DTypeMismatch,
              std::string(q.name) + " must be float32, float64, float16 or bfloat16, got " + type_name(q));
}

// Offsets (n+1) on q's device, int32 or int64, contiguous, not empty.
inline attention::Offsets offsets_arg(const ArrayArg& a, const ArrayArg& q) {
  require_with_q(a, q);
  require(a.ndim == 1, ErrorKind::ShapeMismatch,
          [&] { return std::string(a.name) + " must be 1-D, got " + std::to_string(a.ndim) + "-D"; });
  require(a.type == ElemType::Int32 || a.type == ElemType::Int64, ErrorKind::DTypeMismatch,
          [&] { return std::string(a.name) + " must be int32 or int64, got " + type_name(a); });
  require(a.shape[0] <= 1 || a.stride[0] == 1, ErrorKind::InvalidArgument,
          [&] { return std::string(a.name) + " must be C-contiguous (row-major)"; });
  require(a.shape[0] >= 1, ErrorKind::InvalidOffsets,
          [&] { return std::string(a.name) + " must hold n+1 >= 1 offsets, got an empty array"; });
  return {a.data, a.type == ElemType::Int64};
}

// The kernels compute scores in float32 (float64 for float64 inputs), with q scaled by scale, or by
// scale / softcap under a cap: those must be finite normal numbers there, or the scores become inf
// or 0 and the output NaN (scale=1e39 on float32 inputs did). A cap beyond the type's range changes
// no representable score (cap * tanh(s / cap) == s): it is dropped, which is the exact answer.
inline void require_in_kernel_range(attention::VarlenParams& p) {
  const bool f64 = p.dtype == DType::Float64;
  const double hi = f64 ? DBL_MAX : FLT_MAX, lo = f64 ? DBL_MIN : FLT_MIN;
  const std::string type = f64 ? "float64" : "float32";
  auto g = [](double x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", x);
    return std::string(buf);
  };
  require(std::abs(p.scale) <= hi, ErrorKind::InvalidArgument,
          [&] { return "scale=" + g(p.scale) + " does not fit the kernels' " + type + " arithmetic"; });
  if (p.softcap > hi) p.softcap = 0.0;
  const bool cap_ok = p.softcap == 0.0 || (p.softcap >= lo && std::abs(p.scale / p.softcap) <= hi);
  require(cap_ok, ErrorKind::InvalidArgument, [&] {
    return "softcap=" + g(p.softcap) + " with scale=" + g(p.scale) + " does not fit the kernels' " + type +
           " arithmetic (softcap must be a normal number there, and scale / softcap finite)";
  });
}

// The fields forward and backward share: q, k, v, the offsets and the scalars, each checked.
inline void fill_inputs(attention::VarlenParams& p, const ArrayArg& q, const ArrayArg& k, const ArrayArg& v,
                        const ArrayArg& cu_q, const ArrayArg& cu_k, const AttentionArgs& a) {
  require_rows_heads_dim(q, "(Tq, Hq, D)");
  require_with_q(k, q);
  require_with_q(v, q);
  require_rows_heads_dim(k, "(Tk, Hk, D)");
  require_rows_heads_dim(v, "(Tk, Hk, Dv)");
  p.dtype = attention_dtype(q);
  require_same_type(k, q);
  require_same_type(v, q);
  require(q.shape[2] == k.shape[2], ErrorKind::ShapeMismatch, [&] {
    return "q and k head dims differ: " + std::to_string(q.shape[2]) + " vs " + std::to_string(k.shape[2]);
  });
  require(k.shape[0] == v.shape[0] && k.shape[1] == v.shape[1], ErrorKind::ShapeMismatch,
          [&] { return "k " + shape_text(k) + " and v " + shape_text(v) + " must agree on (Tk, Hk)"; });
  p.q = q.data, p.k = k.data, p.v = v.data;
  p.q_row_stride = q.stride[0], p.q_head_stride = q.stride[1];
  p.k_row_stride = k.stride[0], p.k_head_stride = k.stride[1];
  p.v_row_stride = v.stride[0], p.v_head_stride = v.stride[1];
  p.cu_seqlens_q = offsets_arg(cu_q, q);
  p.cu_seqlens_k = offsets_arg(cu_k, q);
  require(cu_q.shape[0] == cu_k.shape[0], ErrorKind::ShapeMismatch, [] {
    return std::string("q and k must hold the same number of sequences (cu_seqlens lengths differ)");
  });
  // Upper bounds are fine (the GPU grid is sized from them; extra tiles exit), negative ones not.
  require(a.max_seqlen_q >= 0 && a.max_seqlen_k >= 0, ErrorKind::InvalidArgument, [&] {
    return "max_seqlen_q and max_seqlen_k must be >= 0, got " + std::to_string(a.max_seqlen_q) + " and " +
           std::to_string(a.max_seqlen_k);
  });
  require(std::isfinite(a.scale), ErrorKind::InvalidArgument, [] { return std::string("scale must be finite"); });
  require(a.softcap >= 0.0 && std::isfinite(a.softcap), ErrorKind::InvalidArgument,
          [] { return std::string("softcap must be finite and >= 0 (0 = off)"); });
  require(a.window_left >= attention::kUnbounded && a.window_right >= attention::kUnbounded,
          ErrorKind::InvalidArgument, [] { return std::string("window sides must be >= 0, or -1 for unbounded"); });
  p.num_sequences = cu_q.shape[0] - 1;
  p.total_q = q.shape[0], p.total_k = k.shape[0];
  p.max_seqlen_q = a.max_seqlen_q, p.max_seqlen_k = a.max_seqlen_k;
  p.heads_q = q.shape[1], p.heads_k = k.shape[1];
  p.head_dim = q.shape[2], p.head_dim_v = v.shape[2];
  p.scale = a.scale, p.causal = a.causal;
  p.softcap = a.softcap;
  require_in_kernel_range(p);
  p.window_left = a.window_left, p.window_right = a.window_right;  // clamped by the entry points
}

// lse (Hq, Tq) float32, or float64 for float64 inputs (what scree's glue allocates for them: an
// fp32 lse of fp64 inputs loses their precision), contiguous, with q.
inline void require_lse(const ArrayArg& lse, const ArrayArg& q, int64_t hq, int64_t tq) {
  require_with_q(lse, q);
  const bool f64 = q.type == ElemType::Float64;
  require(lse.type == ElemType::Float32 || (f64 && lse.type == ElemType::Float64), ErrorKind::DTypeMismatch, [&] {
    return std::string(lse.name) + (f64 ? " must be float64 (or float32) for float64 inputs, got "
                                        : " must be float32, got ") + type_name(lse);
  });
  require(lse.ndim == 2 && lse.shape[0] == hq && lse.shape[1] == tq, ErrorKind::ShapeMismatch, [&] {
    return std::string(lse.name) + " must have shape (Hq, Tq) = (" + std::to_string(hq) + ", " + std::to_string(tq) +
           ")";
  });
  require(tq <= 1 || lse.stride[1] == 1, ErrorKind::InvalidArgument,
          [&] { return std::string(lse.name) + " must be C-contiguous (row-major)"; });
  require(hq <= 1 || tq == 0 || lse.stride[0] == tq, ErrorKind::InvalidArgument,
          [&] { return std::string(lse.name) + " must be C-contiguous (row-major)"; });
}

// An output (or dout) with q's device and dtype and the given shape; returns its (row, head) strides.
inline void require_like_q(const ArrayArg& a, const ArrayArg& q, int64_t d0, int64_t d1, int64_t d2) {
  require_with_q(a, q);
  require_rows_heads_dim(a, "(rows, heads, dim)");
  require_same_type(a, q);
  require_dims(a, d0, d1, d2);
}

// Forward outputs: out (Tq, Hq, Dv) and, when given, lse (Hq, Tq) float32 (or float64, see require_lse).
inline void fill_forward_outputs(attention::VarlenParams& p, const ArrayArg& q, const ArrayArg& out,
                                 const ArrayArg* lse) {
  require_like_q(out, q, p.total_q, p.heads_q, p.head_dim_v);
  p.out = out.data;
  p.out_row_stride = out.stride[0], p.out_head_stride = out.stride[1];
  if (lse != nullptr) {
    require_lse(*lse, q, p.heads_q, p.total_q);
    if (lse->type == ElemType::Float64)
      p.lse64 = static_cast<double*>(lse->data);
    else
      p.lse = static_cast<float*>(lse->data);
  }
}

// Backward: dout and the forward's out and lse in; dq, dk, dv out, shaped like q, k, v.
inline void fill_backward(attention::VarlenBackwardParams& p, const ArrayArg& q, const ArrayArg& dout,
                          const ArrayArg& out, const ArrayArg& lse, const ArrayArg& dq, const ArrayArg& dk,
                          const ArrayArg& dv) {
  require_like_q(out, q, p.total_q, p.heads_q, p.head_dim_v);
  require_like_q(dout, q, p.total_q, p.heads_q, p.head_dim_v);
  require_like_q(dq, q, p.total_q, p.heads_q, p.head_dim);
  require_like_q(dk, q, p.total_k, p.heads_k, p.head_dim);
  require_like_q(dv, q, p.total_k, p.heads_k, p.head_dim_v);
  require_lse(lse, q, p.heads_q, p.total_q);
  p.out = out.data;  // read only in the backward
  p.out_row_stride = out.stride[0], p.out_head_stride = out.stride[1];
  p.dout = dout.data, p.dout_row_stride = dout.stride[0], p.dout_head_stride = dout.stride[1];
  if (lse.type == ElemType::Float64)
    p.lse_in64 = static_cast<const double*>(lse.data);
  else
    p.lse_in = static_cast<const float*>(lse.data);
  p.dq = dq.data, p.dq_row_stride = dq.stride[0], p.dq_head_stride = dq.stride[1];
  p.dk = dk.data, p.dk_row_stride = dk.stride[0], p.dk_head_stride = dk.stride[1];
  p.dv = dv.data, p.dv_row_stride = dv.stride[0], p.dv_head_stride = dv.stride[1];
}

}  // namespace scree::bindings
