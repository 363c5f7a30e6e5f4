// Bindings of varlen attention (include/scree/attention): check q/k/v/out/lse and the offsets
// once, fill VarlenParams from the arrays' shapes and strides, and run the kernel for the
// arrays' device with the GIL released. Outputs are allocated by the Python caller.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <cstdint>
#include <optional>
#include <string>

#include "ndarray_checks.h"
#include "scree/attention/cpu.h"
#include "scree/attention/params.h"

namespace scree::bindings {
namespace {

using attention::Offsets;
using attention::VarlenBackwardParams;
using attention::VarlenParams;

DType attention_dtype(const InArray& a, const char* name) {
  const dl::dtype t = a.dtype();
  if (is(t, dl::dtype_code::Float, 32)) return DType::Float32;
  if (is(t, dl::dtype_code::Float, 64)) return DType::Float64;
  if (is(t, dl::dtype_code::Float, 16)) return DType::Float16;
  if (is(t, dl::dtype_code::Bfloat, 16)) return DType::BFloat16;
  throw Error(ErrorKind::DTypeMismatch, std::string(name) + " must be float32, float64, float16 or bfloat16, got " +
                                            dtype_name(t));
}

// A (rows, heads, dim) array whose last dimension is contiguous; rows and heads may be strided.
template <class A>
void require_3d(const A& a, const char* name, const char* dims) {
  scree::require(a.ndim() == 3, ErrorKind::ShapeMismatch, [&] {
    return std::string(name) + " values must have shape " + dims + ", got " + std::to_string(a.ndim()) + "-D";
  });
  scree::require(a.shape(2) <= 1 || a.stride(2) == 1, ErrorKind::InvalidArgument,
                 [&] { return std::string(name) + " must have a contiguous last (head_dim) dimension"; });
}

template <class A>
void require_dims(const A& a, const char* name, int64_t d0, int64_t d1, int64_t d2) {
  scree::require(int64_t(a.shape(0)) == d0 && int64_t(a.shape(1)) == d1 && int64_t(a.shape(2)) == d2,
                 ErrorKind::ShapeMismatch, [&] {
                   return std::string(name) + " must have shape (" + std::to_string(d0) + ", " + std::to_string(d1) +
                          ", " + std::to_string(d2) + "), got " + shape_str(InArray(a));
                 });
}

Offsets offsets_arg(const InArray& a, const char* name) {
  require_cpu(a, name);
  require_ndim(a, 1, name);
  require_dtype_index(a, name);
  require_contiguous(a, name);
  return {a.data(), is(a.dtype(), dl::dtype_code::Int, 64)};
}

// Fills the fields shared by forward and backward; checks everything they read.
void fill_common(VarlenParams& p, const InArray& q, const InArray& k, const InArray& v, const InArray& cu_q,
                 const InArray& cu_k, int64_t max_q, int64_t max_k, double scale, bool causal, int64_t window_left,
                 int64_t window_right, double softcap) {
  require_3d(q, "q", "(Tq, Hq, D)");
  require_3d(k, "k", "(Tk, Hk, D)");
  require_3d(v, "v", "(Tk, Hk, Dv)");
  for (auto [a, name] : {std::pair{&q, "q"}, std::pair{&k, "k"}, std::pair{&v, "v"}}) require_cpu(*a, name);
  p.dtype = attention_dtype(q, "q");
  require_same_dtype(q, "q", k, "k");
  require_same_dtype(q, "q", v, "v");
  scree::require(q.shape(2) == k.shape(2), ErrorKind::ShapeMismatch, [&] {
    return "q and k head dims differ: " + std::to_string(q.shape(2)) + " vs " + std::to_string(k.shape(2));
  });
  scree::require(k.shape(0) == v.shape(0) && k.shape(1) == v.shape(1), ErrorKind::ShapeMismatch, [&] {
    return "k " + shape_str(k) + " and v " + shape_str(v) + " must agree on (Tk, Hk)";
  });
  scree::require(cu_q.ndim() == 1 && cu_k.ndim() == 1 && cu_q.shape(0) == cu_k.shape(0), ErrorKind::ShapeMismatch,
                 [&] { return std::string("q and k must hold the same number of sequences (cu_seqlens lengths differ)"); });
  p.q = q.data(), p.k = k.data(), p.v = v.data();
  p.q_row_stride = q.stride(0), p.q_head_stride = q.stride(1);
  p.k_row_stride = k.stride(0), p.k_head_stride = k.stride(1);
  p.v_row_stride = v.stride(0), p.v_head_stride = v.stride(1);
  p.cu_seqlens_q = offsets_arg(cu_q, "cu_seqlens_q");
  p.cu_seqlens_k = offsets_arg(cu_k, "cu_seqlens_k");
  p.num_sequences = int64_t(cu_q.shape(0)) - 1;
  p.total_q = int64_t(q.shape(0)), p.total_k = int64_t(k.shape(0));
  p.max_seqlen_q = max_q, p.max_seqlen_k = max_k;
  p.heads_q = int64_t(q.shape(1)), p.heads_k = int64_t(k.shape(1));
  p.head_dim = int64_t(q.shape(2)), p.head_dim_v = int64_t(v.shape(2));
  p.scale = scale, p.causal = causal, p.window_left = window_left, p.window_right = window_right;
  p.softcap = softcap;
}

template <class A>
void require_lse(const A& lse, int64_t hq, int64_t tq, const char* name) {
  require_cpu(lse, name);
  require_contiguous(lse, name);
  scree::require(is(lse.dtype(), dl::dtype_code::Float, 32), ErrorKind::DTypeMismatch,
                 [&] { return std::string(name) + " must be float32, got " + dtype_name(lse.dtype()); });
  scree::require(lse.ndim() == 2 && int64_t(lse.shape(0)) == hq && int64_t(lse.shape(1)) == tq,
                 ErrorKind::ShapeMismatch, [&] {
                   return std::string(name) + " must have shape (Hq, Tq) = (" + std::to_string(hq) + ", " +
                          std::to_string(tq) + ")";
                 });
}

template <class A>
void require_output(const A& a, const char* name, const InArray& like, int64_t d0, int64_t d1, int64_t d2) {
  require_3d(a, name, "(rows, heads, dim)");
  require_cpu(a, name);
  require_same_dtype(a, name, like, "q");
  require_dims(a, name, d0, d1, d2);
}

void varlen_fwd(const InArray& q, const InArray& k, const InArray& v, const InArray& cu_q, const InArray& cu_k,
                OutArray out, std::optional<OutArray> lse, int64_t max_q, int64_t max_k, double scale, bool causal,
                int64_t window_left, int64_t window_right, double softcap) {
  VarlenParams p;
  fill_common(p, q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, window_left, window_right, softcap);
  require_output(out, "out", q, p.total_q, p.heads_q, p.head_dim_v);
  p.out = out.data();
  p.out_row_stride = out.stride(0), p.out_head_stride = out.stride(1);
  if (lse) {
    require_lse(*lse, p.heads_q, p.total_q, "lse");
    p.lse = static_cast<float*>(lse->data());
  }
  attention::validate(p);
  nb::gil_scoped_release release;
  attention::varlen_fwd_cpu(p);
}

void varlen_bwd(const InArray& dout, const InArray& q, const InArray& k, const InArray& v, const InArray& out,
                const InArray& lse, const InArray& cu_q, const InArray& cu_k, OutArray dq, OutArray dk, OutArray dv,
                int64_t max_q, int64_t max_k, double scale, bool causal, int64_t window_left, int64_t window_right,
                double softcap) {
  VarlenBackwardParams p;
  fill_common(p, q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, window_left, window_right, softcap);
  require_output(out, "out", q, p.total_q, p.heads_q, p.head_dim_v);
  require_output(dout, "dout", q, p.total_q, p.heads_q, p.head_dim_v);
  require_output(dq, "dq", q, p.total_q, p.heads_q, p.head_dim);
  require_output(dk, "dk", q, p.total_k, p.heads_k, p.head_dim);
  require_output(dv, "dv", q, p.total_k, p.heads_k, p.head_dim_v);
  require_lse(lse, p.heads_q, p.total_q, "lse");
  p.out = const_cast<void*>(out.data());  // read only in the backward
  p.out_row_stride = out.stride(0), p.out_head_stride = out.stride(1);
  p.dout = dout.data(), p.dout_row_stride = dout.stride(0), p.dout_head_stride = dout.stride(1);
  p.lse_in = static_cast<const float*>(lse.data());
  p.dq = dq.data(), p.dq_row_stride = dq.stride(0), p.dq_head_stride = dq.stride(1);
  p.dk = dk.data(), p.dk_row_stride = dk.stride(0), p.dk_head_stride = dk.stride(1);
  p.dv = dv.data(), p.dv_row_stride = dv.stride(0), p.dv_head_stride = dv.stride(1);
  attention::validate(p);
  nb::gil_scoped_release release;
  attention::varlen_bwd_cpu(p);
}

}  // namespace

void register_attention(nb::module_& m) {
  m.def("cpu_isa", &attention::cpu_isa, "Instruction-set variant of the CPU attention kernels in use.");
  m.def("varlen_fwd", &varlen_fwd, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("cu_seqlens_q"),
        nb::arg("cu_seqlens_k"), nb::arg("out"), nb::arg("lse").none(), nb::arg("max_seqlen_q"),
        nb::arg("max_seqlen_k"), nb::arg("scale"), nb::arg("causal"), nb::arg("window_left"),
        nb::arg("window_right"), nb::arg("softcap"),
        "Varlen attention forward into out (Tq, Hq, Dv) and lse (Hq, Tq) float32 (optional).\n"
        "cu_seqlens are host int32/int64 (n+1); window sides -1 = unbounded; softcap 0 = off.");
  m.def("varlen_bwd", &varlen_bwd, nb::arg("dout"), nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"),
        nb::arg("lse"), nb::arg("cu_seqlens_q"), nb::arg("cu_seqlens_k"), nb::arg("dq"), nb::arg("dk"),
        nb::arg("dv"), nb::arg("max_seqlen_q"), nb::arg("max_seqlen_k"), nb::arg("scale"), nb::arg("causal"),
        nb::arg("window_left"), nb::arg("window_right"), nb::arg("softcap"),
        "Varlen attention backward: dq, dk, dv from dout, the forward's out and lse.");
}

}  // namespace scree::bindings
