// XLA FFI handlers of varlen attention for JAX, on the CPU and (builds with SCREE_WITH_CUDA) on
// CUDA GPUs. XLA hands us dense row-major buffers and the call's attributes, decoded into the same
// AttentionArgs record the nanobind binding takes; attention_call.h checks the arguments and fills
// VarlenParams exactly as for the nanobind binding, and the same kernels run. scree::Error becomes
// ffi::Error (JAX raises it). `registrations()` exposes the handlers as capsules for
// jax.ffi.register_ffi_target; the CPU and CUDA handlers of one direction take the same operands and
// attributes, so _connect/jax.py registers them under one target name per platform.
#include <nanobind/nanobind.h>

#include <cstdint>
#include <string>
#include <utility>

#include "attention_call.h"
#include "scree/attention/cpu.h"
#include "scree/attention/params.h"
#include "error_names.h"
#include "scree/error.h"
#include "xla/ffi/api/ffi.h"
#ifdef SCREE_WITH_CUDA
#include <cuda_runtime_api.h>  // cudaStream_t, the type XLA's platform stream is decoded as

#include "scree/attention/cuda.h"
#endif

// The attributes of every call decode into AttentionArgs (Python passes AttentionArgs.fields()).
XLA_FFI_REGISTER_STRUCT_ATTR_DECODING(scree::bindings::AttentionArgs,
                                      ::xla::ffi::StructMember<int64_t>("max_seqlen_q"),
                                      ::xla::ffi::StructMember<int64_t>("max_seqlen_k"),
                                      ::xla::ffi::StructMember<double>("scale"),
                                      ::xla::ffi::StructMember<bool>("causal"),
                                      ::xla::ffi::StructMember<int64_t>("window_left"),
                                      ::xla::ffi::StructMember<int64_t>("window_right"),
                                      ::xla::ffi::StructMember<double>("softcap"),
                                      ::xla::ffi::StructMember<bool>("deterministic"));

namespace ffi = xla::ffi;
namespace nb = nanobind;

namespace scree::bindings {
namespace {

using attention::VarlenBackwardParams;
using attention::VarlenParams;

// XLA's element type as DLPack's (code, bits), for the checks and their messages.
void set_type(ArrayArg& a, ffi::DataType t) {
  using T = ffi::DataType;
  switch (t) {
    case T::F16: a.type = ElemType::Float16, a.code = 2, a.bits = 16; return;
    case T::BF16: a.type = ElemType::BFloat16, a.code = 4, a.bits = 16; return;
    case T::F32: a.type = ElemType::Float32, a.code = 2, a.bits = 32; return;
    case T::F64: a.type = ElemType::Float64, a.code = 2, a.bits = 64; return;
    case T::S32: a.type = ElemType::Int32, a.code = 0, a.bits = 32; return;
    case T::S64: a.type = ElemType::Int64, a.code = 0, a.bits = 64; return;
    case T::S8: a.code = 0, a.bits = 8; return;
    case T::S16: a.code = 0, a.bits = 16; return;
    case T::U8: a.code = 1, a.bits = 8; return;
    case T::U16: a.code = 1, a.bits = 16; return;
    case T::U32: a.code = 1, a.bits = 32; return;
    case T::U64: a.code = 1, a.bits = 64; return;
    case T::PRED: a.code = 6, a.bits = 8; return;
    default: a.code = 3, a.bits = 0; return;  // "opaque0": a type attention never takes
  }
}

// A dense row-major XLA buffer on the handler's platform as an ArrayArg.
ArrayArg arg(const ffi::AnyBuffer& b, const char* name, int device_type) {
  ArrayArg a;
  a.name = name;
  a.data = const_cast<void*>(b.untyped_data());
  const auto dims = b.dimensions();
  a.ndim = int(dims.size());
  int64_t stride = 1;
  for (int i = a.ndim - 1; i >= 0; --i) {
    if (i < 3) a.shape[i] = dims[i], a.stride[i] = stride;
    stride *= dims[i];
  }
  set_type(a, b.element_type());
  a.device_type = device_type;
  a.nbytes = int64_t(b.size_bytes());
  return a;
}

template <class Fn>
ffi::Error guarded(Fn&& fn) {
  try {
    fn();
  } catch (const scree::Error& e) {
    return ffi::Error::InvalidArgument(std::string("scree.") + error_class_name(e.kind()) + ": " + e.what());
  }
  return ffi::Error::Success();
}

// q, k, v and the offsets of one call on `device` (kCpuDevice or kCudaDevice) into p.
void fill_call(VarlenParams& p, int device, const ffi::AnyBuffer& q, const ffi::AnyBuffer& k, const ffi::AnyBuffer& v,
               const ffi::AnyBuffer& cu_q, const ffi::AnyBuffer& cu_k, const AttentionArgs& a) {
  fill_inputs(p, arg(q, "q", device), arg(k, "k", device), arg(v, "v", device), arg(cu_q, "cu_seqlens_q", device),
              arg(cu_k, "cu_seqlens_k", device), a);
}

void fill_fwd(VarlenParams& p, int device, const ffi::AnyBuffer& q, const ffi::AnyBuffer& k, const ffi::AnyBuffer& v,
              const ffi::AnyBuffer& cu_q, const ffi::AnyBuffer& cu_k, const AttentionArgs& a, ffi::AnyBuffer& out,
              ffi::AnyBuffer& lse) {
  fill_call(p, device, q, k, v, cu_q, cu_k, a);
  const ArrayArg lse_arg = arg(lse, "lse", device);
  fill_forward_outputs(p, arg(q, "q", device), arg(out, "out", device), &lse_arg);
}

void fill_bwd(VarlenBackwardParams& p, int device, const ffi::AnyBuffer& dout, const ffi::AnyBuffer& q,
              const ffi::AnyBuffer& k, const ffi::AnyBuffer& v, const ffi::AnyBuffer& out, const ffi::AnyBuffer& lse,
              const ffi::AnyBuffer& cu_q, const ffi::AnyBuffer& cu_k, const AttentionArgs& a, ffi::AnyBuffer& dq,
              ffi::AnyBuffer& dk, ffi::AnyBuffer& dv) {
  fill_call(p, device, q, k, v, cu_q, cu_k, a);
  fill_backward(p, arg(q, "q", device), arg(dout, "dout", device), arg(out, "out", device), arg(lse, "lse", device),
                arg(dq, "dq", device), arg(dk, "dk", device), arg(dv, "dv", device));
}

// The workspace result is empty on the CPU (the host kernels need none).
ffi::Error varlen_fwd(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer cu_q, ffi::AnyBuffer cu_k,
                      AttentionArgs a, ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> lse,
                      ffi::Result<ffi::AnyBuffer> /*workspace: unused here*/) {
  return guarded([&] {
    VarlenParams p;
    fill_fwd(p, kCpuDevice, q, k, v, cu_q, cu_k, a, *out, *lse);
    attention::varlen_fwd_cpu(p);  // validates p, the host offsets included
  });
}

// The CPU backward is deterministic whatever a.deterministic asks; the workspace result is empty.
ffi::Error varlen_bwd(ffi::AnyBuffer dout, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer out,
                      ffi::AnyBuffer lse, ffi::AnyBuffer cu_q, ffi::AnyBuffer cu_k, AttentionArgs a,
                      ffi::Result<ffi::AnyBuffer> dq, ffi::Result<ffi::AnyBuffer> dk, ffi::Result<ffi::AnyBuffer> dv,
                      ffi::Result<ffi::AnyBuffer> /*workspace: unused here*/) {
  return guarded([&] {
    VarlenBackwardParams p;
    fill_bwd(p, kCpuDevice, dout, q, k, v, out, lse, cu_q, cu_k, a, *dq, *dk, *dv);
    attention::varlen_bwd_cpu(p);
  });
}

#ifdef SCREE_WITH_CUDA
// CUDA: the buffers and the offsets are device memory (offsets int32 or int64 as JAX holds them);
// the kernels go to XLA's stream. Under jax.jit the max_seqlen attributes may be token counts
// (upper bounds), which the kernels accept.
// The workspace (the tile counter) is the call's third result, as the backward's is its fourth.
ffi::Error varlen_fwd_cuda(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                           ffi::AnyBuffer cu_q, ffi::AnyBuffer cu_k, AttentionArgs a, ffi::Result<ffi::AnyBuffer> out,
                           ffi::Result<ffi::AnyBuffer> lse, ffi::Result<ffi::AnyBuffer> workspace) {
  return guarded([&] {
    VarlenParams p;
    fill_fwd(p, kCudaDevice, q, k, v, cu_q, cu_k, a, *out, *lse);
    // validates p and the workspace's size for the CUDA kernels first
    attention::varlen_fwd_cuda(p, workspace->untyped_data(), workspace->size_bytes(), stream);
  });
}

// The workspace is the call's fourth result, sized in Python from the same C++ formula
// (scree._C.cuda_bwd_workspace_bytes): XLA's scratch allocator refused even 150 KB inside jit on
// an H200 with jax 0.11 (RESOURCE_EXHAUSTED), while an output buffer is planned with the others.
ffi::Error varlen_bwd_cuda(cudaStream_t stream, ffi::AnyBuffer dout, ffi::AnyBuffer q, ffi::AnyBuffer k,
                           ffi::AnyBuffer v, ffi::AnyBuffer out, ffi::AnyBuffer lse, ffi::AnyBuffer cu_q,
                           ffi::AnyBuffer cu_k, AttentionArgs a, ffi::Result<ffi::AnyBuffer> dq,
                           ffi::Result<ffi::AnyBuffer> dk, ffi::Result<ffi::AnyBuffer> dv,
                           ffi::Result<ffi::AnyBuffer> workspace) {
  return guarded([&] {
    VarlenBackwardParams p;
    fill_bwd(p, kCudaDevice, dout, q, k, v, out, lse, cu_q, cu_k, a, *dq, *dk, *dv);
    const size_t need = attention::varlen_bwd_cuda_workspace_bytes(p, a.deterministic);
    require(workspace->size_bytes() >= need, ErrorKind::InvalidArgument, [&] {
      return "the backward workspace holds " + std::to_string(workspace->size_bytes()) + " bytes, needs " +
             std::to_string(need);
    });
    attention::varlen_bwd_cuda(p, workspace->untyped_data(), workspace->size_bytes(), a.deterministic, stream);
  });
}
#endif

// Operands, attributes and results of each direction, after the platform's context arguments
// (none on the CPU; the stream on CUDA).
template <class Binding>
auto fwd_signature(Binding binding) {
  return std::move(binding)
      .template Arg<ffi::AnyBuffer>()  // q
      .template Arg<ffi::AnyBuffer>()  // k
      .template Arg<ffi::AnyBuffer>()  // v
      .template Arg<ffi::AnyBuffer>()  // cu_seqlens_q
      .template Arg<ffi::AnyBuffer>()  // cu_seqlens_k
      .template Attrs<AttentionArgs>()
      .template Ret<ffi::AnyBuffer>()   // out
      .template Ret<ffi::AnyBuffer>()   // lse (float32; float64 for float64 inputs)
      .template Ret<ffi::AnyBuffer>();  // workspace (uint8; empty on the CPU)
}

template <class Binding>
auto bwd_signature(Binding binding) {
  return std::move(binding)
      .template Arg<ffi::AnyBuffer>()  // dout
      .template Arg<ffi::AnyBuffer>()  // q
      .template Arg<ffi::AnyBuffer>()  // k
      .template Arg<ffi::AnyBuffer>()  // v
      .template Arg<ffi::AnyBuffer>()  // out
      .template Arg<ffi::AnyBuffer>()  // lse
      .template Arg<ffi::AnyBuffer>()  // cu_seqlens_q
      .template Arg<ffi::AnyBuffer>()  // cu_seqlens_k
      .template Attrs<AttentionArgs>()
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
    // Keys end in the platform (_cpu / _cuda): _connect/jax.py registers each handler under the
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
