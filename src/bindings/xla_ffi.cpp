// XLA FFI handlers of varlen attention for JAX, on the CPU and (builds with SCREE_WITH_CUDA) on
// CUDA GPUs: XLA hands us dense row-major buffers; we fill the same VarlenParams the Python binding
// fills and call the same kernels. Errors become ffi::Error (JAX raises them); the Python side
// checks shapes before it ever calls in here. `registrations()` exposes the handlers as capsules
// for jax.ffi.register_ffi_target; the CPU and CUDA handlers of one direction take the same
// operands and attributes, so jax_attention.py registers them under one target name per platform.
#include <nanobind/nanobind.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "scree/attention/cpu.h"
#include "scree/attention/params.h"
#include "scree/error.h"
#include "xla/ffi/api/ffi.h"
#ifdef SCREE_WITH_CUDA
#include <cuda_runtime_api.h>  // cudaStream_t, the type XLA's platform stream is decoded as

#include "scree/attention/cuda.h"
#endif

namespace ffi = xla::ffi;
namespace nb = nanobind;

namespace scree::bindings {
namespace {

using attention::VarlenBackwardParams;
using attention::VarlenParams;

bool to_dtype(ffi::DataType t, DType& out) {
  switch (t) {
    case ffi::DataType::F32: out = DType::Float32; return true;
    case ffi::DataType::F64: out = DType::Float64; return true;
    case ffi::DataType::F16: out = DType::Float16; return true;
    case ffi::DataType::BF16: out = DType::BFloat16; return true;
    default: return false;
  }
}

attention::Offsets offsets_of(const ffi::AnyBuffer& b) {
  return {b.untyped_data(), b.element_type() == ffi::DataType::S64};
}

// Dense (rows, heads, dim) buffer: row stride heads*dim, head stride dim.
void strides(const ffi::AnyBuffer& b, int64_t& row, int64_t& head) {
  auto d = b.dimensions();
  row = d[1] * d[2];
  head = d[2];
}

ffi::Error fill_common(VarlenParams& p, const ffi::AnyBuffer& q, const ffi::AnyBuffer& k, const ffi::AnyBuffer& v,
                       const ffi::AnyBuffer& cu_q, const ffi::AnyBuffer& cu_k, int64_t max_q, int64_t max_k,
                       double scale, bool causal, int64_t wl, int64_t wr, double softcap) {
  if (q.dimensions().size() != 3 || k.dimensions().size() != 3 || v.dimensions().size() != 3)
    return ffi::Error::InvalidArgument("q, k, v must be (tokens, heads, dim)");
  if (!to_dtype(q.element_type(), p.dtype) || k.element_type() != q.element_type() ||
      v.element_type() != q.element_type())
    return ffi::Error::InvalidArgument("q, k, v must share one of float32, float64, float16, bfloat16");
  for (const ffi::AnyBuffer* c : {&cu_q, &cu_k})
    if (c->dimensions().size() != 1 ||
        (c->element_type() != ffi::DataType::S32 && c->element_type() != ffi::DataType::S64))
      return ffi::Error::InvalidArgument("cu_seqlens must be 1-D int32 or int64");
  if (cu_q.dimensions()[0] != cu_k.dimensions()[0])
    return ffi::Error::InvalidArgument("q and k must hold the same number of sequences");
  auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  if (qd[2] != kd[2] || kd[0] != vd[0] || kd[1] != vd[1])
    return ffi::Error::InvalidArgument("q/k head dims or k/v (tokens, heads) disagree");
  p.q = q.untyped_data(), p.k = k.untyped_data(), p.v = v.untyped_data();
  strides(q, p.q_row_stride, p.q_head_stride);
  strides(k, p.k_row_stride, p.k_head_stride);
  strides(v, p.v_row_stride, p.v_head_stride);
  p.cu_seqlens_q = offsets_of(cu_q), p.cu_seqlens_k = offsets_of(cu_k);
  p.num_sequences = cu_q.dimensions()[0] - 1;
  p.total_q = qd[0], p.total_k = kd[0], p.max_seqlen_q = max_q, p.max_seqlen_k = max_k;
  p.heads_q = qd[1], p.heads_k = kd[1], p.head_dim = qd[2], p.head_dim_v = vd[2];
  p.scale = scale, p.causal = causal, p.window_left = wl, p.window_right = wr, p.softcap = softcap;
  return ffi::Error::Success();
}

template <class Fn>
ffi::Error guarded(Fn&& fn) {
  try {
    fn();
  } catch (const scree::Error& e) {
    return ffi::Error::InvalidArgument(std::string("scree: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error varlen_fwd(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer cu_q, ffi::AnyBuffer cu_k,
                      int64_t max_q, int64_t max_k, double scale, bool causal, int64_t wl, int64_t wr,
                      double softcap, ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::F32>> lse) {
  VarlenParams p;
  if (auto err = fill_common(p, q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, wl, wr, softcap); err.failure())
    return err;
  p.out = out->untyped_data();
  strides(*out, p.out_row_stride, p.out_head_stride);
  p.lse = lse->typed_data();
  return guarded([&] { attention::varlen_fwd_cpu(p); });
}

// The backward's extra pointers (dout, out, lse in; dq, dk, dv out), shared by CPU and CUDA.
void fill_backward(VarlenBackwardParams& p, const ffi::AnyBuffer& dout, const ffi::AnyBuffer& out,
                   const ffi::Buffer<ffi::F32>& lse, ffi::AnyBuffer& dq, ffi::AnyBuffer& dk, ffi::AnyBuffer& dv) {
  p.out = const_cast<void*>(out.untyped_data());  // read only in the backward
  strides(out, p.out_row_stride, p.out_head_stride);
  p.dout = dout.untyped_data();
  strides(dout, p.dout_row_stride, p.dout_head_stride);
  p.lse_in = lse.typed_data();
  p.dq = dq.untyped_data(), p.dk = dk.untyped_data(), p.dv = dv.untyped_data();
  strides(dq, p.dq_row_stride, p.dq_head_stride);
  strides(dk, p.dk_row_stride, p.dk_head_stride);
  strides(dv, p.dv_row_stride, p.dv_head_stride);
}

// `deterministic` is accepted so that the CPU and CUDA handlers share one attribute set; the CPU
// backward is deterministic whatever is asked.
ffi::Error varlen_bwd(ffi::AnyBuffer dout, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer out,
                      ffi::Buffer<ffi::F32> lse, ffi::AnyBuffer cu_q, ffi::AnyBuffer cu_k, int64_t max_q,
                      int64_t max_k, double scale, bool causal, int64_t wl, int64_t wr, double softcap,
                      bool /*deterministic*/, ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dk,
                      ffi::Result<ffi::AnyBuffer> dv, ffi::Result<ffi::AnyBuffer> /*workspace: unused here*/) {
  VarlenBackwardParams p;
  if (auto err = fill_common(p, q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, wl, wr, softcap); err.failure())
    return err;
  fill_backward(p, dout, out, lse, *dq, *dk, *dv);
  return guarded([&] { attention::varlen_bwd_cpu(p); });
}

#ifdef SCREE_WITH_CUDA
// CUDA: the buffers and the offsets are device memory (offsets int32 or int64 as JAX holds them);
// the kernels go to XLA's stream. Under jax.jit the max_seqlen attributes are token counts (upper
// bounds), which the kernels accept.
ffi::Error varlen_fwd_cuda(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                           ffi::AnyBuffer cu_q, ffi::AnyBuffer cu_k, int64_t max_q, int64_t max_k, double scale,
                           bool causal, int64_t wl, int64_t wr, double softcap, ffi::Result<ffi::AnyBuffer> out,
                           ffi::Result<ffi::Buffer<ffi::F32>> lse) {
  VarlenParams p;
  if (auto err = fill_common(p, q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, wl, wr, softcap); err.failure())
    return err;
  p.out = out->untyped_data();
  strides(*out, p.out_row_stride, p.out_head_stride);
  p.lse = lse->typed_data();
  return guarded([&] {
    attention::validate_cuda(p);
    attention::varlen_fwd_cuda(p, stream);
  });
}

// The workspace is the call's fourth result, sized in Python from the same C++ formula
// (scree._C.cuda_bwd_workspace_bytes): XLA's scratch allocator refused even 150 KB inside jit on
// an H200 with jax 0.11 (RESOURCE_EXHAUSTED), while an output buffer is planned with the others.
ffi::Error varlen_bwd_cuda(cudaStream_t stream, ffi::AnyBuffer dout, ffi::AnyBuffer q,
                           ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer out, ffi::Buffer<ffi::F32> lse,
                           ffi::AnyBuffer cu_q, ffi::AnyBuffer cu_k, int64_t max_q, int64_t max_k, double scale,
                           bool causal, int64_t wl, int64_t wr, double softcap, bool deterministic,
                           ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dk,
                           ffi::Result<ffi::AnyBuffer> dv, ffi::Result<ffi::AnyBuffer> workspace) {
  VarlenBackwardParams p;
  if (auto err = fill_common(p, q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, wl, wr, softcap); err.failure())
    return err;
  fill_backward(p, dout, out, lse, *dq, *dk, *dv);
  size_t bytes = 0;
  if (auto err = guarded([&] {
        attention::validate_cuda(p);
        bytes = attention::varlen_bwd_cuda_workspace_bytes(p, deterministic);
      });
      err.failure())
    return err;
  if (workspace->size_bytes() < bytes)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "scree: the backward workspace holds " + std::to_string(workspace->size_bytes()) +
                          " bytes, needs " + std::to_string(bytes));
  return guarded(
      [&] { attention::varlen_bwd_cuda(p, workspace->untyped_data(), workspace->size_bytes(), deterministic, stream); });
}
#endif

// The scalar attributes both handlers take, in the order of their parameters (jax_attention.py
// passes them by these names).
template <class Binding>
auto attention_attrs(Binding binding) {
  return std::move(binding).template Attr<int64_t>("max_seqlen_q")
      .template Attr<int64_t>("max_seqlen_k")
      .template Attr<double>("scale")
      .template Attr<bool>("causal")
      .template Attr<int64_t>("window_left")
      .template Attr<int64_t>("window_right")
      .template Attr<double>("softcap");
}

// Operands, attributes and results of each direction, after the platform's context arguments
// (none on the CPU; the stream on CUDA).
template <class Binding>
auto fwd_signature(Binding binding) {
  return attention_attrs(std::move(binding)
                             .template Arg<ffi::AnyBuffer>()   // q
                             .template Arg<ffi::AnyBuffer>()   // k
                             .template Arg<ffi::AnyBuffer>()   // v
                             .template Arg<ffi::AnyBuffer>()   // cu_seqlens_q
                             .template Arg<ffi::AnyBuffer>())  // cu_seqlens_k
      .template Ret<ffi::AnyBuffer>()                          // out
      .template Ret<ffi::Buffer<ffi::F32>>();                  // lse
}

template <class Binding>
auto bwd_signature(Binding binding) {
  return attention_attrs(std::move(binding)
                             .template Arg<ffi::AnyBuffer>()          // dout
                             .template Arg<ffi::AnyBuffer>()          // q
                             .template Arg<ffi::AnyBuffer>()          // k
                             .template Arg<ffi::AnyBuffer>()          // v
                             .template Arg<ffi::AnyBuffer>()          // out
                             .template Arg<ffi::Buffer<ffi::F32>>()   // lse
                             .template Arg<ffi::AnyBuffer>()          // cu_seqlens_q
                             .template Arg<ffi::AnyBuffer>())         // cu_seqlens_k
      .template Attr<bool>("deterministic")
      .template Ret<ffi::AnyBuffer>()   // dq
      .template Ret<ffi::AnyBuffer>()   // dk
      .template Ret<ffi::AnyBuffer>()   // dv
      .template Ret<ffi::AnyBuffer>();  // workspace (uint8; empty on the CPU)
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ScreeVarlenFwdCpu, varlen_fwd, fwd_signature(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ScreeVarlenBwdCpu, varlen_bwd, bwd_signature(ffi::Ffi::Bind()));
#ifdef SCREE_WITH_CUDA
XLA_FFI_DEFINE_HANDLER_SYMBOL(ScreeVarlenFwdCuda, varlen_fwd_cuda,
                              fwd_signature(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(ScreeVarlenBwdCuda, varlen_bwd_cuda,
                              bwd_signature(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()));
#endif

void register_xla(nb::module_& m) {
  m.def("registrations", [] {
    // Keys end in the platform (_cpu / _cuda): jax_attention.py registers each handler under the
    // name without it, for that platform, so one ffi_call lowers to whichever device XLA picks.
    nb::dict d;
    d["scree_varlen_fwd_cpu"] = nb::capsule(reinterpret_cast<void*>(&ScreeVarlenFwdCpu));
    d["scree_varlen_bwd_cpu"] = nb::capsule(reinterpret_cast<void*>(&ScreeVarlenBwdCpu));
#ifdef SCREE_WITH_CUDA
    d["scree_varlen_fwd_cuda"] = nb::capsule(reinterpret_cast<void*>(&ScreeVarlenFwdCuda));
    d["scree_varlen_bwd_cuda"] = nb::capsule(reinterpret_cast<void*>(&ScreeVarlenBwdCuda));
#endif
    return d;
  }, "XLA FFI handlers (name -> capsule) for jax.ffi.register_ffi_target; empty when built without jax.");
}

}  // namespace scree::bindings
