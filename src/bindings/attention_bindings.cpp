// Bindings of varlen attention (include/scree/attention): check q/k/v/out/lse and the offsets
// once, fill VarlenParams from the arrays' shapes and strides, and run the kernel for the
// arrays' device (CPU, or CUDA in builds with SCREE_WITH_CUDA) with the GIL released. Outputs and
// the CUDA backward's workspace are allocated by the Python caller with its framework.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ndarray_checks.h"
#include "scree/attention/cpu.h"
#include "scree/attention/params.h"
#ifdef SCREE_WITH_CUDA
#include <cuda_runtime_api.h>

#include "scree/attention/cuda.h"
#endif

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

// The device of the call is q's: the CPU, or (in CUDA builds) a CUDA GPU. A CUDA array reaching a
// CPU-only build is a valid request this build cannot serve, hence Unsupported rather than a crash.
CallDevice call_device(const InArray& q) {
  if (q.device_type() == nb::device::cpu::value) return {};
  if (q.device_type() == nb::device::cuda::value) {
#ifdef SCREE_WITH_CUDA
    return {q.device_type(), q.device_id()};
#else
    throw Error(ErrorKind::Unsupported,
                "q is on " + device_str(q.device_type(), q.device_id()) +
                    " but this build of scree has no CUDA kernels (built without nvcc or with SCREE_CUDA=OFF): "
                    "move the arrays to the CPU or install a CUDA build");
#endif
  }
  throw Error(ErrorKind::Unsupported, "q is on " + device_str(q.device_type(), q.device_id()) +
                                          ": varlen attention runs on the CPU or on CUDA GPUs");
}

// Offsets (n+1) on the call's device: host offsets are read by the CPU kernels (and validated
// there), device offsets are handed to the CUDA kernels as they are (int32 or int64, no copy).
Offsets offsets_arg(const InArray& a, const char* name, const CallDevice& dev) {
  require_on(a, name, dev, "q");
  require_ndim(a, 1, name);
  require_dtype_index(a, name);
  require_contiguous(a, name);
  scree::require(a.shape(0) >= 1, ErrorKind::InvalidOffsets,
                 [&] { return std::string(name) + " must hold n+1 >= 1 offsets, got an empty array"; });
  return {a.data(), is(a.dtype(), dl::dtype_code::Int, 64)};
}

// Fills the fields shared by forward and backward; checks everything they read. Returns the
// device every array of the call was checked to be on.
CallDevice fill_common(VarlenParams& p, const InArray& q, const InArray& k, const InArray& v, const InArray& cu_q,
                       const InArray& cu_k, int64_t max_q, int64_t max_k, double scale, bool causal,
                       int64_t window_left, int64_t window_right, double softcap) {
  const CallDevice dev = call_device(q);
  require_3d(q, "q", "(Tq, Hq, D)");
  require_3d(k, "k", "(Tk, Hk, D)");
  require_3d(v, "v", "(Tk, Hk, Dv)");
  require_on(k, "k", dev, "q");
  require_on(v, "v", dev, "q");
  p.dtype = attention_dtype(q, "q");
  require_same_dtype(q, "q", k, "k");
  require_same_dtype(q, "q", v, "v");
  scree::require(q.shape(2) == k.shape(2), ErrorKind::ShapeMismatch, [&] {
    return "q and k head dims differ: " + std::to_string(q.shape(2)) + " vs " + std::to_string(k.shape(2));
  });
  scree::require(k.shape(0) == v.shape(0) && k.shape(1) == v.shape(1), ErrorKind::ShapeMismatch, [&] {
    return "k " + shape_str(k) + " and v " + shape_str(v) + " must agree on (Tk, Hk)";
  });
  p.q = q.data(), p.k = k.data(), p.v = v.data();
  p.q_row_stride = q.stride(0), p.q_head_stride = q.stride(1);
  p.k_row_stride = k.stride(0), p.k_head_stride = k.stride(1);
  p.v_row_stride = v.stride(0), p.v_head_stride = v.stride(1);
  p.cu_seqlens_q = offsets_arg(cu_q, "cu_seqlens_q", dev);
  p.cu_seqlens_k = offsets_arg(cu_k, "cu_seqlens_k", dev);
  scree::require(cu_q.shape(0) == cu_k.shape(0), ErrorKind::ShapeMismatch,
                 [&] { return std::string("q and k must hold the same number of sequences (cu_seqlens lengths differ)"); });
  // Upper bounds are fine (the GPU grid is sized from them; extra tiles exit), negative ones not.
  scree::require(max_q >= 0 && max_k >= 0, ErrorKind::InvalidArgument, [&] {
    return "max_seqlen_q and max_seqlen_k must be >= 0, got " + std::to_string(max_q) + " and " + std::to_string(max_k);
  });
  p.num_sequences = int64_t(cu_q.shape(0)) - 1;
  p.total_q = int64_t(q.shape(0)), p.total_k = int64_t(k.shape(0));
  p.max_seqlen_q = max_q, p.max_seqlen_k = max_k;
  p.heads_q = int64_t(q.shape(1)), p.heads_k = int64_t(k.shape(1));
  p.head_dim = int64_t(q.shape(2)), p.head_dim_v = int64_t(v.shape(2));
  p.scale = scale, p.causal = causal, p.window_left = window_left, p.window_right = window_right;
  p.softcap = softcap;
  return dev;
}

template <class A>
void require_lse(const A& lse, int64_t hq, int64_t tq, const char* name, const CallDevice& dev) {
  require_on(lse, name, dev, "q");
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
void require_output(const A& a, const char* name, const InArray& like, const CallDevice& dev, int64_t d0,
                    int64_t d1, int64_t d2) {
  require_3d(a, name, "(rows, heads, dim)");
  require_on(a, name, dev, "q");
  require_same_dtype(a, name, like, "q");
  require_dims(a, name, d0, d1, d2);
}

#ifdef SCREE_WITH_CUDA
// Makes the arrays' GPU current for the launch (torch lets a tensor live on cuda:1 while cuda:0
// is current; a launch on the wrong device would fail or touch foreign memory), and restores the
// previous device afterwards, as torch's own CUDAGuard does.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ == device) previous_ = -1;
    else check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  static void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess)
      throw Error(ErrorKind::DeviceFailure, std::string(what) + " failed: " + cudaGetErrorString(e));
  }
  int previous_ = -1;
};

// Workspace for callers that pass none (direct scree._C calls): allocated with cudaMallocAsync on
// the launch stream and freed on it after the kernels, so neither costs a device sync. The
// framework glue passes a buffer from its own caching allocator instead, which is cheaper.
class StreamScratch {
 public:
  StreamScratch(size_t bytes, void* stream) : stream_(static_cast<cudaStream_t>(stream)) {
    if (bytes == 0) return;
    const cudaError_t e = cudaMallocAsync(&ptr_, bytes, stream_);
    if (e != cudaSuccess) {
      ptr_ = nullptr;
      cudaGetLastError();  // not sticky, but leave no error behind for the caller's next check
      throw Error(ErrorKind::DeviceFailure, "cannot allocate " + std::to_string(bytes) +
                                                " bytes of attention backward workspace: " + cudaGetErrorString(e));
    }
  }
  ~StreamScratch() {
    if (ptr_ != nullptr) cudaFreeAsync(ptr_, stream_);
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  void* get() const { return ptr_; }

 private:
  cudaStream_t stream_;
  void* ptr_ = nullptr;
};
#endif

// The stream argument is an integer handle (torch.cuda.current_stream().cuda_stream); 0 is the
// legacy default stream.
void* stream_ptr(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

void varlen_fwd(const InArray& q, const InArray& k, const InArray& v, const InArray& cu_q, const InArray& cu_k,
                OutArray out, std::optional<OutArray> lse, int64_t max_q, int64_t max_k, double scale, bool causal,
                int64_t window_left, int64_t window_right, double softcap, uintptr_t stream) {
  VarlenParams p;
  const CallDevice dev =
      fill_common(p, q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, window_left, window_right, softcap);
  require_output(out, "out", q, dev, p.total_q, p.heads_q, p.head_dim_v);
  p.out = out.data();
  p.out_row_stride = out.stride(0), p.out_head_stride = out.stride(1);
  if (lse) {
    require_lse(*lse, p.heads_q, p.total_q, "lse", dev);
    p.lse = static_cast<float*>(lse->data());
  }
#ifdef SCREE_WITH_CUDA
  if (dev.cuda()) {
    attention::validate_cuda(p);
    nb::gil_scoped_release release;
    DeviceGuard guard(dev.id);
    attention::varlen_fwd_cuda(p, stream_ptr(stream));
    return;
  }
#endif
  (void)stream;  // host kernels run synchronously on the calling thread
  attention::validate(p);
  nb::gil_scoped_release release;
  attention::varlen_fwd_cpu(p);
}

// Bytes of device workspace varlen_bwd needs for these arguments: 0 on the CPU (the host kernels
// allocate their own scratch), else the CUDA kernels' own formula (include/scree/attention/cuda.h),
// so that the size is written once, in C++, whichever framework allocates the buffer.
size_t varlen_bwd_workspace_bytes(const InArray& q, const InArray& k, const InArray& v, const InArray& cu_q,
                                  const InArray& cu_k, int64_t max_q, int64_t max_k, double scale, bool causal,
                                  int64_t window_left, int64_t window_right, double softcap, bool deterministic) {
  VarlenBackwardParams p;
  const CallDevice dev =
      fill_common(p, q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, window_left, window_right, softcap);
#ifdef SCREE_WITH_CUDA
  if (dev.cuda()) return attention::varlen_bwd_cuda_workspace_bytes(p, deterministic);
#endif
  (void)dev, (void)deterministic;
  return 0;
}

// The CUDA backward's workspace size from sizes alone, for callers that size the buffer before
// they hold arrays (JAX declares it as an extra output of the FFI call); 0 without CUDA.
size_t cuda_bwd_workspace_bytes(int64_t total_q, int64_t heads_q, int64_t head_dim, bool deterministic) {
  scree::require(total_q >= 0 && heads_q >= 0 && head_dim >= 0, ErrorKind::InvalidArgument,
                 [] { return std::string("sizes must be >= 0"); });
#ifdef SCREE_WITH_CUDA
  return attention::varlen_bwd_cuda_workspace_bytes(total_q, heads_q, head_dim, deterministic);
#else
  (void)deterministic;
  return 0;
#endif
}

void varlen_bwd(const InArray& dout, const InArray& q, const InArray& k, const InArray& v, const InArray& out,
                const InArray& lse, const InArray& cu_q, const InArray& cu_k, OutArray dq, OutArray dk, OutArray dv,
                int64_t max_q, int64_t max_k, double scale, bool causal, int64_t window_left, int64_t window_right,
                double softcap, bool deterministic, std::optional<OutArray> workspace, uintptr_t stream) {
  VarlenBackwardParams p;
  const CallDevice dev =
      fill_common(p, q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, window_left, window_right, softcap);
  require_output(out, "out", q, dev, p.total_q, p.heads_q, p.head_dim_v);
  require_output(dout, "dout", q, dev, p.total_q, p.heads_q, p.head_dim_v);
  require_output(dq, "dq", q, dev, p.total_q, p.heads_q, p.head_dim);
  require_output(dk, "dk", q, dev, p.total_k, p.heads_k, p.head_dim);
  require_output(dv, "dv", q, dev, p.total_k, p.heads_k, p.head_dim_v);
  require_lse(lse, p.heads_q, p.total_q, "lse", dev);
  p.out = const_cast<void*>(out.data());  // read only in the backward
  p.out_row_stride = out.stride(0), p.out_head_stride = out.stride(1);
  p.dout = dout.data(), p.dout_row_stride = dout.stride(0), p.dout_head_stride = dout.stride(1);
  p.lse_in = static_cast<const float*>(lse.data());
  p.dq = dq.data(), p.dq_row_stride = dq.stride(0), p.dq_head_stride = dq.stride(1);
  p.dk = dk.data(), p.dk_row_stride = dk.stride(0), p.dk_head_stride = dk.stride(1);
  p.dv = dv.data(), p.dv_row_stride = dv.stride(0), p.dv_head_stride = dv.stride(1);
  void* ws = nullptr;
  size_t ws_bytes = 0;
  if (workspace) {
    // Any dtype: only its bytes count (the kernels check the alignment they need).
    require_on(*workspace, "workspace", dev, "q");
    require_contiguous(*workspace, "workspace");
    ws = workspace->data(), ws_bytes = workspace->nbytes();
  }
#ifdef SCREE_WITH_CUDA
  if (dev.cuda()) {
    attention::validate_cuda(p);
    const size_t need = attention::varlen_bwd_cuda_workspace_bytes(p, deterministic);
    scree::require(!workspace || ws_bytes >= need, ErrorKind::InvalidArgument, [&] {
      return "workspace holds " + std::to_string(ws_bytes) + " bytes but this backward needs " + std::to_string(need) +
             " (scree._C.varlen_bwd_workspace_bytes with the same arguments)";
    });
    nb::gil_scoped_release release;
    DeviceGuard guard(dev.id);
    std::optional<StreamScratch> scratch;
    if (!workspace) {
      scratch.emplace(need, stream_ptr(stream));
      ws = scratch->get(), ws_bytes = need;
    }
    attention::varlen_bwd_cuda(p, ws, ws_bytes, deterministic, stream_ptr(stream));
    return;
  }
#endif
  // The host backward is deterministic whatever is asked, and allocates its own scratch.
  (void)deterministic, (void)ws, (void)stream;
  attention::validate(p);
  nb::gil_scoped_release release;
  attention::varlen_bwd_cpu(p);
}

// Head dims the CUDA kernels were compiled for; none in a CPU-only build.
std::vector<int> cuda_head_dims() {
#ifdef SCREE_WITH_CUDA
  return attention::cuda_head_dims();
#else
  return {};
#endif
}

}  // namespace

void register_attention(nb::module_& m) {
  m.def("cpu_isa", &attention::cpu_isa, "Instruction-set variant of the CPU attention kernels in use.");
  m.def("cuda_head_dims", &cuda_head_dims,
        "Head dims (D == Dv) the CUDA attention kernels were compiled for, ascending; [] without CUDA.");
  m.def("varlen_fwd", &varlen_fwd, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("cu_seqlens_q"),
        nb::arg("cu_seqlens_k"), nb::arg("out"), nb::arg("lse").none(), nb::arg("max_seqlen_q"),
        nb::arg("max_seqlen_k"), nb::arg("scale"), nb::arg("causal"), nb::arg("window_left"),
        nb::arg("window_right"), nb::arg("softcap"), nb::arg("stream") = 0,
        "Varlen attention forward into out (Tq, Hq, Dv) and lse (Hq, Tq) float32 (optional).\n"
        "All arrays on one device: the CPU, or one CUDA GPU (float16/bfloat16; launched on `stream`,\n"
        "a cudaStream_t as an int, 0 = legacy default stream). cu_seqlens are int32/int64 (n+1) on\n"
        "that device; window sides -1 = unbounded; softcap 0 = off; max_seqlen may be upper bounds.");
  m.def("varlen_bwd_workspace_bytes", &varlen_bwd_workspace_bytes, nb::arg("q"), nb::arg("k"), nb::arg("v"),
        nb::arg("cu_seqlens_q"), nb::arg("cu_seqlens_k"), nb::arg("max_seqlen_q"), nb::arg("max_seqlen_k"),
        nb::arg("scale"), nb::arg("causal"), nb::arg("window_left"), nb::arg("window_right"), nb::arg("softcap"),
        nb::arg("deterministic") = false,
        "Bytes of device workspace varlen_bwd needs for these arguments (0 on the CPU).");
  m.def("cuda_bwd_workspace_bytes", &cuda_bwd_workspace_bytes, nb::arg("total_q"), nb::arg("heads_q"),
        nb::arg("head_dim"), nb::arg("deterministic") = false,
        "Bytes of workspace the CUDA backward needs for these sizes (0 in builds without CUDA).");
  m.def("varlen_bwd", &varlen_bwd, nb::arg("dout"), nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"),
        nb::arg("lse"), nb::arg("cu_seqlens_q"), nb::arg("cu_seqlens_k"), nb::arg("dq"), nb::arg("dk"),
        nb::arg("dv"), nb::arg("max_seqlen_q"), nb::arg("max_seqlen_k"), nb::arg("scale"), nb::arg("causal"),
        nb::arg("window_left"), nb::arg("window_right"), nb::arg("softcap"), nb::arg("deterministic") = false,
        nb::arg("workspace").none() = nb::none(), nb::arg("stream") = 0,
        "Varlen attention backward: dq, dk, dv from dout, the forward's out and lse.\n"
        "On CUDA, `workspace` (contiguous, on the same GPU, 16-byte aligned) must hold at least\n"
        "varlen_bwd_workspace_bytes(...) bytes (None: allocated stream-ordered with cudaMallocAsync);\n"
        "deterministic=True makes dq bit-reproducible there (the CPU backward always is).");
}

}  // namespace scree::bindings
