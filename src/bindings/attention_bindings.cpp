// Bindings of varlen attention (include/scree/attention): scree._C.AttentionArgs (the typed record
// of a call's scalars), and varlen_fwd / varlen_bwd, which turn their nb::ndarrays into ArrayArgs,
// let attention_call.h check them and fill VarlenParams (the one place for that, shared with the XLA
// FFI handlers), and run the kernel for the arrays' device (CPU, or CUDA in builds with
// SCREE_WITH_CUDA) with the GIL released. Outputs and the CUDA backward's workspace are allocated
// by the Python caller with its framework; nothing here names a framework.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "attention_call.h"
#include "ndarray_checks.h"
#include "scree/attention/cpu.h"
#include "scree/attention/params.h"
#ifdef SCREE_WITH_CUDA
#include <cuda_runtime_api.h>

#include "scree/attention/cuda.h"
#include "scree/cuda_device_guard.h"
#endif

namespace scree::bindings {
namespace {

using attention::VarlenBackwardParams;
using attention::VarlenParams;

ElemType elem_type(dl::dtype t) {
  if (is(t, dl::dtype_code::Float, 32)) return ElemType::Float32;
  if (is(t, dl::dtype_code::Float, 64)) return ElemType::Float64;
  if (is(t, dl::dtype_code::Float, 16)) return ElemType::Float16;
  if (is(t, dl::dtype_code::Bfloat, 16)) return ElemType::BFloat16;
  if (is(t, dl::dtype_code::Int, 32)) return ElemType::Int32;
  if (is(t, dl::dtype_code::Int, 64)) return ElemType::Int64;
  return ElemType::Other;
}

// An nb::ndarray (NumPy, torch, anything with DLPack or the buffer protocol) as an ArrayArg.
template <class A>
ArrayArg arg(const A& a, const char* name) {
  ArrayArg r;
  r.name = name;
  r.data = const_cast<void*>(static_cast<const void*>(a.data()));
  r.ndim = int(a.ndim());
  for (int i = 0; i < r.ndim && i < 3; ++i) r.shape[i] = int64_t(a.shape(size_t(i))), r.stride[i] = a.stride(size_t(i));
  const dl::dtype t = a.dtype();
  r.type = elem_type(t), r.code = t.code, r.bits = t.bits;
  r.device_type = a.device_type(), r.device_id = a.device_id();
  r.nbytes = int64_t(a.nbytes());
  return r;
}

// The call runs where q lives: the CPU, or (in CUDA builds) a CUDA GPU. A CUDA array reaching a
// CPU-only build is a valid request this build cannot serve, hence Unsupported rather than a crash.
bool on_cuda(const ArrayArg& q) {
  if (q.device_type == kCpuDevice) return false;
  if (q.device_type == kCudaDevice) {
#ifdef SCREE_WITH_CUDA
    return true;
#else
    throw Error(ErrorKind::Unsupported,
                "q is on " + device_name(q.device_type, q.device_id) +
                    " but this build of scree has no CUDA kernels (built without nvcc or with SCREE_CUDA=OFF): "
                    "move the arrays to the CPU or install a CUDA build");
#endif
  }
  throw Error(ErrorKind::Unsupported, "q is on " + device_name(q.device_type, q.device_id) +
                                          ": varlen attention runs on the CPU or on CUDA GPUs");
}

#ifdef SCREE_WITH_CUDA

// Workspace for callers that pass none (direct scree._C calls): allocated with cudaMallocAsync on
// the launch stream and freed on it after the kernels, so neither costs a device sync. The
// framework glue passes a buffer from its own caching allocator instead, which is cheaper (on an
// H200 host cudaMallocAsync cost ~12 us a call, ~100 us after a device sync).
class StreamScratch {
 public:
  StreamScratch(size_t bytes, void* stream) : stream_(static_cast<cudaStream_t>(stream)) {
    if (bytes == 0) return;
    const cudaError_t e = cudaMallocAsync(&ptr_, bytes, stream_);
    if (e != cudaSuccess) {
      ptr_ = nullptr;
      cudaGetLastError();  // not sticky, but leave no error behind for the caller's next check
      throw Error(ErrorKind::DeviceFailure, "cannot allocate " + std::to_string(bytes) +
                                                " bytes of attention workspace: " + cudaGetErrorString(e));
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

// The caller's workspace (any dtype: only its bytes count; contiguous, with q), or none.
struct Workspace {
  void* data = nullptr;
  size_t bytes = 0;
  bool given = false;
};

Workspace workspace_arg(const std::optional<OutArray>& w, const ArrayArg& q) {
  if (!w) return {};
  const ArrayArg a = arg(*w, "workspace");
  require_with_q(a, q);
  require_contiguous(*w, "workspace");
  return {a.data, size_t(a.nbytes), true};
}

// The caller's kept packed-tile schedule (CUDA; VarlenParams::tile_schedule), on q's device.
void schedule_arg(VarlenParams& p, const std::optional<OutArray>& s, bool ready, const ArrayArg& q) {
  p.tile_schedule_ready = ready;
  if (!s) return;
  const ArrayArg a = arg(*s, "schedule");
  require_with_q(a, q);
  require_contiguous(*s, "schedule");
  p.tile_schedule = a.data;
  p.tile_schedule_bytes = size_t(a.nbytes);
}

#ifdef SCREE_WITH_CUDA
// The caller's workspace, else `need` bytes stream-ordered in `scratch` (freed when it goes).
Workspace or_scratch(const Workspace& ws, size_t need, void* stream, std::optional<StreamScratch>& scratch) {
  if (ws.given) return ws;
  scratch.emplace(need, stream);
  return {scratch->get(), need, true};
}
#endif

// `need` bytes of workspace are required: the caller's must hold them (`what` names the size query).
void require_workspace(const Workspace& ws, size_t need, const char* what) {
  scree::require(!ws.given || ws.bytes >= need, ErrorKind::InvalidArgument, [&] {
    return "workspace holds " + std::to_string(ws.bytes) + " bytes but this call needs " + std::to_string(need) +
           " (" + what + ")";
  });
}


// The stream argument is an integer handle (torch's current stream as an int); 0 is the legacy
// default stream. Host kernels run synchronously on the calling thread and ignore it.
void* stream_ptr(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

// The device check's four numbers for cu_seqlens_q ([first, last, smallest step, largest step],
// int64, on q's device; scree._C.offsets_summary_cuda's device copy): its largest step bounds the
// query lengths where the host only knows the token count.
const int64_t* q_summary_arg(const std::optional<InArray>& s, const ArrayArg& q) {
  if (!s) return nullptr;
  const ArrayArg a = arg(*s, "q_summary");
  require_with_q(a, q);
  require(a.ndim == 1 && a.shape[0] == 4 && a.type == ElemType::Int64 && a.stride[0] == 1, ErrorKind::InvalidArgument,
          [&] { return "q_summary must be a contiguous int64 array of 4, got " + type_name(a) + " " + shape_text(a); });
  return static_cast<const int64_t*>(a.data) + 3;
}

#ifdef SCREE_WITH_CUDA
// The CUDA forward of a filled p on q's device and the caller's stream, in the caller's workspace
// (or a stream-ordered scratch one); varlen_fwd_cuda validates p for the kernels first.
bool run_cuda_forward(const VarlenParams& p, const ArrayArg& q, Workspace ws, uintptr_t stream) {
  const size_t need = attention::varlen_fwd_cuda_workspace_bytes(p.total_q, p.num_sequences);
  require_workspace(ws, need, "scree._C.cuda_fwd_workspace_bytes(total_q, num_sequences)");
  nb::gil_scoped_release release;
  cuda::DeviceGuard guard(q.device_id);
  std::optional<StreamScratch> scratch;
  ws = or_scratch(ws, need, stream_ptr(stream), scratch);
  return attention::varlen_fwd_cuda(p, ws.data, ws.bytes, stream_ptr(stream));
}
#endif

bool varlen_fwd(const InArray& q_, const InArray& k_, const InArray& v_, const InArray& cu_q_, const InArray& cu_k_,
                OutArray out_, std::optional<OutArray> lse_, const AttentionArgs& args,
                const std::optional<OutArray>& workspace_, const std::optional<InArray>& q_summary_,
                uintptr_t stream, const std::optional<OutArray>& schedule_, bool schedule_ready,
                bool workspace_zeroed) {
  const ArrayArg q = arg(q_, "q");
  const bool cuda = on_cuda(q);
  VarlenParams p;
  fill_inputs(p, q, arg(k_, "k"), arg(v_, "v"), arg(cu_q_, "cu_seqlens_q"), arg(cu_k_, "cu_seqlens_k"), args);
  ArrayArg lse;
  if (lse_) lse = arg(*lse_, "lse");
  fill_forward_outputs(p, q, arg(out_, "out"), lse_ ? &lse : nullptr);
  Workspace ws = workspace_arg(workspace_, q);
  p.max_seqlen_q_device = q_summary_arg(q_summary_, q);
  schedule_arg(p, schedule_, schedule_ready, q);
  p.workspace_counter_zero = workspace_zeroed && ws.given;
#ifdef SCREE_WITH_CUDA
  if (cuda) return run_cuda_forward(p, q, ws, stream);
#endif
  (void)cuda, (void)stream, (void)ws;
  nb::gil_scoped_release release;
  attention::varlen_fwd_cpu(p);  // validates p, the host offsets included, once
  return false;  // the host kernels keep no schedule
}

// The forward over paged keys and values on the CPU (decode and chunked prefill alike): q, out,
// lse and args as varlen_fwd; k_rows / v_rows the cache's pages as rows (num_pages * page_size,
// Hk, D); cu_seqlens_k the cached tokens of each sequence (host); page_table (n, width) host
// int32/int64. The table is checked against the lengths (PagedLayout) before anything is read.
void paged_fwd_cpu(const InArray& q_, const InArray& k_, const InArray& v_, const InArray& cu_q_, const InArray& cu_k_,
                   const InArray& page_table, int64_t page_size, OutArray out_, std::optional<OutArray> lse_,
                   const AttentionArgs& args) {
  const ArrayArg q = arg(q_, "q");
  require(q.device_type == kCpuDevice, ErrorKind::Unsupported,
          [] { return std::string("paged_fwd_cpu runs on host arrays (CUDA: paged_decode)"); });
  VarlenParams p;
  fill_inputs(p, q, arg(k_, "k_rows"), arg(v_, "v_rows"), arg(cu_q_, "cu_seqlens_q"), arg(cu_k_, "cu_seqlens_k"), args);
  ArrayArg lse;
  if (lse_) lse = arg(*lse_, "lse");
  fill_forward_outputs(p, q, arg(out_, "out"), lse_ ? &lse : nullptr);
  require_cpu(page_table, "page_table");
  require_ndim(page_table, 2, "page_table");
  require_dtype_index(page_table, "page_table");
  require(static_cast<int64_t>(page_table.shape(0)) == p.num_sequences, ErrorKind::ShapeMismatch, [&] {
    return "page_table has " + std::to_string(page_table.shape(0)) + " rows for " + std::to_string(p.num_sequences) +
           " sequences";
  });
  require(page_table.shape(1) == 0 || page_table.stride(1) == 1, ErrorKind::InvalidArgument,
          [] { return std::string("page_table rows must be contiguous"); });
  require(p.num_sequences >= 0, ErrorKind::ShapeMismatch, [] { return std::string("cu_seqlens_k is empty"); });
  p.kv_rows = p.total_k;
  p.total_k = p.cu_seqlens_k[p.num_sequences];  // (host offsets: validate() checks them against it)
  p.paged = true;
  p.page_table = page_table.data();
  p.page_table_int64 = is(page_table.dtype(), dl::dtype_code::Int, 64);
  p.page_table_width = static_cast<int64_t>(page_table.shape(1));
  p.page_table_stride = page_table.shape(1) > 0 ? page_table.stride(0) : 0;
  p.page_size = page_size;
  nb::gil_scoped_release release;
  attention::varlen_fwd_cpu(p);
}

#ifdef SCREE_WITH_CUDA
// (num_pages, page_size, H, D) pages as the (num_pages * page_size, H, D) rows fill_inputs checks:
// row stride = the slot stride; the page stride travels apart (VarlenParams::kv_page_stride).
ArrayArg page_rows(const InArray& a, const char* name) {
  require(a.ndim() == 4, ErrorKind::ShapeMismatch, [&] {
    return std::string(name) + " must have shape (num_pages, page_size, heads, head_dim), got " +
           std::to_string(a.ndim()) + " dimensions";
  });
  ArrayArg r = arg(a, name);
  r.ndim = 3;
  r.shape[0] = int64_t(a.shape(0)) * int64_t(a.shape(1)), r.shape[1] = int64_t(a.shape(2)), r.shape[2] = int64_t(a.shape(3));
  r.stride[0] = a.stride(1), r.stride[1] = a.stride(2), r.stride[2] = a.stride(3);
  return r;
}

// The forward over a paged KV cache on CUDA (chunked prefill, decode, both; Hopper kernels): q,
// out, lse, args, workspace and q_summary as varlen_fwd; k_pages / v_pages (num_pages, page_size,
// Hk, D) with any strides, the same for both (NHD pages, or HND ones as a transposed view);
// cu_seqlens_k (n + 1) device offsets of the cached lengths; page_table (n, width) device int32 /
// int64, its values checked where they entered scree (scree.PagedKV) and clamped into the cache
// by the kernel.
void paged_fwd_cuda(const InArray& q_, const InArray& k_, const InArray& v_, const InArray& cu_q_, const InArray& cu_k_,
                    const InArray& page_table, OutArray out_, std::optional<OutArray> lse_, const AttentionArgs& args,
                    const std::optional<OutArray>& workspace_, const std::optional<InArray>& q_summary_,
                    uintptr_t stream) {
  const ArrayArg q = arg(q_, "q");
  require(on_cuda(q), ErrorKind::Unsupported,
          [] { return std::string("paged_fwd_cuda runs on CUDA arrays (host arrays: paged_fwd_cpu)"); });
  const ArrayArg k = page_rows(k_, "k_pages"), v = page_rows(v_, "v_pages");
  for (size_t i = 0; i < 4; ++i) {
    require(k_.shape(i) == v_.shape(i) && k_.stride(i) == v_.stride(i), ErrorKind::ShapeMismatch,
            [] { return std::string("k_pages and v_pages must have one shape and one layout"); });
  }
  VarlenParams p;
  fill_inputs(p, q, k, v, arg(cu_q_, "cu_seqlens_q"), arg(cu_k_, "cu_seqlens_k"), args);
  ArrayArg lse;
  if (lse_) lse = arg(*lse_, "lse");
  fill_forward_outputs(p, q, arg(out_, "out"), lse_ ? &lse : nullptr);
  const ArrayArg table = arg(page_table, "page_table");
  require_with_q(table, q);
  require(table.ndim == 2 && (table.type == ElemType::Int32 || table.type == ElemType::Int64), ErrorKind::DTypeMismatch,
          [] { return std::string("page_table must be a 2-d int32 or int64 array"); });
  require(table.shape[0] == p.num_sequences && (table.shape[1] == 0 || table.stride[1] == 1), ErrorKind::ShapeMismatch,
          [&] { return "page_table must have one contiguous row per sequence (" + std::to_string(p.num_sequences) + ")"; });
  p.paged = true;
  p.page_size = int64_t(k_.shape(1));
  p.kv_rows = k.shape[0];
  p.kv_page_stride = k_.stride(0);
  p.page_table = table.data;
  p.page_table_int64 = table.type == ElemType::Int64;
  p.page_table_width = table.shape[1];
  p.page_table_stride = table.shape[1] > 0 ? table.stride[0] : 0;
  // The cached lengths sit on the device: the tables' capacity bounds their sum (pages may be shared
  // between sequences, so the cache's own size does not).
  p.total_k = std::min<int64_t>(p.num_sequences * p.page_table_width * p.page_size, (int64_t(1) << 31) - 1);
  p.max_seqlen_q_device = q_summary_arg(q_summary_, q);
  run_cuda_forward(p, q, workspace_arg(workspace_, q), stream);
}
#endif

// The CUDA forward's workspace size for these totals; 0 without CUDA.
size_t cuda_fwd_workspace_bytes(int64_t total_q, int64_t num_sequences) {
#ifdef SCREE_WITH_CUDA
  return attention::varlen_fwd_cuda_workspace_bytes(total_q, num_sequences);
#else
  (void)total_q, (void)num_sequences;
  return 0;
#endif
}

size_t cuda_tile_schedule_bytes(int64_t rows, int64_t num_sequences) {
  scree::require(rows >= 0 && num_sequences >= 0, ErrorKind::InvalidArgument,
                 [] { return std::string("sizes must be >= 0"); });
#ifdef SCREE_WITH_CUDA
  return attention::cuda_tile_schedule_bytes(rows, num_sequences);
#else
  return 0;
#endif
}

// Bytes of device workspace varlen_bwd needs for these arguments: 0 on the CPU (the host kernels
// allocate their own scratch), else the CUDA kernels' own formula (include/scree/attention/cuda.h).
size_t varlen_bwd_workspace_bytes(const InArray& q_, const InArray& k_, const InArray& v_, const InArray& cu_q_,
                                  const InArray& cu_k_, const AttentionArgs& args) {
  const ArrayArg q = arg(q_, "q");
  const bool cuda = on_cuda(q);
  VarlenBackwardParams p;
  fill_inputs(p, q, arg(k_, "k"), arg(v_, "v"), arg(cu_q_, "cu_seqlens_q"), arg(cu_k_, "cu_seqlens_k"), args);
#ifdef SCREE_WITH_CUDA
  if (cuda) return attention::varlen_bwd_cuda_workspace_bytes(p, args.deterministic);
#endif
  (void)cuda;
  return 0;
}

// The CUDA backward's workspace size from sizes alone, for callers that size the buffer before
// they hold arrays (JAX declares it as an extra output of the FFI call); 0 without CUDA.
// dtype and max_seqlen_k (the call's AttentionArgs bound) let a call whose keys fit one packed
// tile per sequence leave the dq accumulator out; without them (max_seqlen_k < 0) it is counted.
size_t cuda_bwd_workspace_bytes(int64_t total_q, int64_t total_k, int64_t num_sequences, int64_t heads_q,
                                int64_t head_dim, bool deterministic, const std::string& dtype, int64_t max_seqlen_k) {
  scree::require(total_q >= 0 && total_k >= 0 && num_sequences >= 0 && heads_q >= 0 && head_dim >= 0,
                 ErrorKind::InvalidArgument, [] { return std::string("sizes must be >= 0"); });
  DType dt = DType::Float32;
  if (max_seqlen_k >= 0) {
    if (dtype == "bfloat16") dt = DType::BFloat16;
    else if (dtype == "float16") dt = DType::Float16;
    else if (dtype == "float64") dt = DType::Float64;
    else
      scree::require(dtype == "float32", ErrorKind::DTypeMismatch, [&] {
        return "cuda_bwd_workspace_bytes: dtype '" + dtype + "' is not one attention serves (bfloat16, float16, "
               "float32, float64)";
      });
  }
#ifdef SCREE_WITH_CUDA
  return attention::varlen_bwd_cuda_workspace_bytes(total_q, total_k, num_sequences, heads_q, head_dim, deterministic,
                                                    dt, max_seqlen_k);
#else
  (void)deterministic, (void)dt;
  return 0;
#endif
}

bool varlen_bwd(const InArray& dout_, const InArray& q_, const InArray& k_, const InArray& v_, const InArray& out_,
                const InArray& lse_, const InArray& cu_q_, const InArray& cu_k_, OutArray dq_, OutArray dk_,
                OutArray dv_, const AttentionArgs& args, const std::optional<OutArray>& workspace_, uintptr_t stream,
                const std::optional<OutArray>& schedule_, bool schedule_ready) {
  const ArrayArg q = arg(q_, "q");
  const bool cuda = on_cuda(q);
  VarlenBackwardParams p;
  fill_inputs(p, q, arg(k_, "k"), arg(v_, "v"), arg(cu_q_, "cu_seqlens_q"), arg(cu_k_, "cu_seqlens_k"), args);
  fill_backward(p, q, arg(dout_, "dout"), arg(out_, "out"), arg(lse_, "lse"), arg(dq_, "dq"), arg(dk_, "dk"),
                arg(dv_, "dv"));
  Workspace ws = workspace_arg(workspace_, q);
  schedule_arg(p, schedule_, schedule_ready, q);
#ifdef SCREE_WITH_CUDA
  if (cuda) {
    const size_t need = attention::varlen_bwd_cuda_workspace_bytes(p, args.deterministic);
    require_workspace(ws, need, "scree._C.varlen_bwd_workspace_bytes with the same arguments");
    nb::gil_scoped_release release;
    cuda::DeviceGuard guard(q.device_id);
    std::optional<StreamScratch> scratch;
    ws = or_scratch(ws, need, stream_ptr(stream), scratch);
    // varlen_bwd_cuda validates p for the CUDA kernels before anything runs.
    return attention::varlen_bwd_cuda(p, ws.data, ws.bytes, args.deterministic, stream_ptr(stream));
  }
#endif
  // The host backward is deterministic whatever is asked, and allocates its own scratch.
  (void)cuda, (void)ws, (void)stream;
  nb::gil_scoped_release release;
  attention::varlen_bwd_cpu(p);  // validates p, the host offsets included, once
  return false;
}

// Head dims the CUDA kernels were compiled for; none in a CPU-only build.
std::vector<int> cuda_head_dims() {
#ifdef SCREE_WITH_CUDA
  return attention::cuda_head_dims();
#else
  return {};
#endif
}

std::string args_repr(const AttentionArgs& a) {
  auto f = [](double x) { return std::string(nb::repr(nb::float_(x)).c_str()); };
  return "AttentionArgs(max_seqlen_q=" + std::to_string(a.max_seqlen_q) + ", max_seqlen_k=" +
         std::to_string(a.max_seqlen_k) + ", scale=" + f(a.scale) + ", causal=" +
         (a.causal ? "True" : "False") + ", window_left=" + std::to_string(a.window_left) + ", window_right=" +
         std::to_string(a.window_right) + ", softcap=" + f(a.softcap) + ", deterministic=" +
         (a.deterministic ? "True" : "False") + ")";
}

nb::tuple args_tuple(const AttentionArgs& a) {
  return nb::make_tuple(a.max_seqlen_q, a.max_seqlen_k, a.scale, a.causal, a.window_left, a.window_right, a.softcap,
                        a.deterministic);
}

}  // namespace

void register_attention(nb::module_& m) {
  nb::class_<AttentionArgs>(
      m, "AttentionArgs",
      "The scalar arguments of one varlen attention call, as the kernels take them (immutable).\n"
      "max_seqlen_q/k: longest sequence lengths (upper bounds are accepted); scale; causal (bottom-right\n"
      "aligned); window_left/right (-1 = unbounded); softcap (0 = off); deterministic (CUDA backward).\n"
      "XLA FFI calls pass the same fields as attributes of the same names (fields()).")
      .def(
          "__init__",
          [](AttentionArgs* self, int64_t max_q, int64_t max_k, double scale, bool causal, int64_t left,
             int64_t right, double softcap, bool deterministic) {
            new (self) AttentionArgs{max_q, max_k, scale, causal, left, right, softcap, deterministic};
          },
          nb::arg("max_seqlen_q"), nb::arg("max_seqlen_k"), nb::arg("scale"), nb::arg("causal") = false,
          nb::arg("window_left") = attention::kUnbounded, nb::arg("window_right") = attention::kUnbounded,
          nb::arg("softcap") = 0.0, nb::arg("deterministic") = false)
      .def_ro("max_seqlen_q", &AttentionArgs::max_seqlen_q)
      .def_ro("max_seqlen_k", &AttentionArgs::max_seqlen_k)
      .def_ro("scale", &AttentionArgs::scale)
      .def_ro("causal", &AttentionArgs::causal)
      .def_ro("window_left", &AttentionArgs::window_left)
      .def_ro("window_right", &AttentionArgs::window_right)
      .def_ro("softcap", &AttentionArgs::softcap)
      .def_ro("deterministic", &AttentionArgs::deterministic)
      .def(
          "with_deterministic",
          [](const AttentionArgs& a, bool deterministic) {
            AttentionArgs b = a;
            b.deterministic = deterministic;
            return b;
          },
          nb::arg("deterministic"), "A copy with `deterministic` replaced (the backward's choice).")
      .def(
          "fields",
          [](const AttentionArgs& a) {
            nb::dict d;
            d["max_seqlen_q"] = a.max_seqlen_q, d["max_seqlen_k"] = a.max_seqlen_k, d["scale"] = a.scale;
            d["causal"] = a.causal, d["window_left"] = a.window_left, d["window_right"] = a.window_right;
            d["softcap"] = a.softcap, d["deterministic"] = a.deterministic;
            return d;
          },
          "The fields by name, in declaration order (the attributes of the XLA FFI calls).")
      .def("__repr__", &args_repr)
      .def("__eq__", [](const AttentionArgs& a, nb::handle b) {
        return nb::isinstance<AttentionArgs>(b) && args_tuple(a).equal(args_tuple(nb::cast<const AttentionArgs&>(b)));
      })
      .def("__hash__", [](const AttentionArgs& a) { return nb::hash(args_tuple(a)); });

  m.def("cpu_isa", &attention::cpu_isa, "Instruction-set variant of the CPU attention kernels in use.");
  m.def("cuda_head_dims", &cuda_head_dims,
        "Head dims (D == Dv) the CUDA attention kernels were compiled for, ascending; [] without CUDA.");
  m.def("paged_fwd_cpu", &paged_fwd_cpu, nb::arg("q"), nb::arg("k_rows"), nb::arg("v_rows"), nb::arg("cu_seqlens_q"),
        nb::arg("cu_seqlens_k"), nb::arg("page_table"), nb::arg("page_size"), nb::arg("out"), nb::arg("lse").none(),
        nb::arg("args"),
        "Varlen attention forward on the CPU over a paged KV cache: k_rows / v_rows (num_pages *\n"
        "page_size, Hk, D) the pages as rows, cu_seqlens_k the cached tokens of each sequence,\n"
        "page_table (n, width) int32/int64 (sequence i's key t is row page_table[i][t // page_size] *\n"
        "page_size + t % page_size); q, out, lse and args as varlen_fwd. The table is checked first.");
#ifdef SCREE_WITH_CUDA
  m.def("paged_fwd_cuda", &paged_fwd_cuda, nb::arg("q"), nb::arg("k_pages"), nb::arg("v_pages"), nb::arg("cu_seqlens_q"),
        nb::arg("cu_seqlens_k"), nb::arg("page_table"), nb::arg("out"), nb::arg("lse").none(), nb::arg("args"),
        nb::arg("workspace").none() = nb::none(), nb::arg("q_summary").none() = nb::none(), nb::arg("stream") = 0,
        "Varlen attention forward on CUDA (Hopper) over a paged KV cache read in place: k_pages / v_pages\n"
        "(num_pages, page_size, Hk, D), any strides (HND pages as a transposed view), page sizes 16, 32,\n"
        "64, 128 or multiples of 128; cu_seqlens_k device offsets of the cached lengths; page_table (n,\n"
        "width) int32/int64 on the device (values checked by scree.PagedKV, clamped by the kernel); the\n"
        "rest as varlen_fwd. Slots past a sequence's end in its last page may hold anything.");
#endif
  m.def("varlen_fwd", &varlen_fwd, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("cu_seqlens_q"),
        nb::arg("cu_seqlens_k"), nb::arg("out"), nb::arg("lse").none(), nb::arg("args"),
        nb::arg("workspace").none() = nb::none(), nb::arg("q_summary").none() = nb::none(), nb::arg("stream") = 0,
        nb::arg("schedule").none() = nb::none(), nb::arg("schedule_ready") = false,
        nb::arg("workspace_zeroed") = false,
        "Varlen attention forward into out (Tq, Hq, Dv) and lse (Hq, Tq) float32 (optional; float64\n"
        "inputs take a float64 lse, or a float32 one that rounds it). All arrays on one device: the\n"
        "CPU, or one CUDA GPU (float16/bfloat16; launched on `stream`, a cudaStream_t as an int,\n"
        "0 = legacy default stream). cu_seqlens are int32/int64 (n+1) on\n"
        "that device; `args` (AttentionArgs) holds the scalars. On CUDA, `workspace` (contiguous, on\n"
        "the same GPU, 16-byte aligned) holds cuda_fwd_workspace_bytes(Tq, n) bytes (None: allocated\n"
        "stream-ordered with cudaMallocAsync, slower). `q_summary` (CUDA, optional): the device check's\n"
        "int64 [first, last, smallest step, largest step] of cu_seqlens_q (offsets_summary_cuda's\n"
        "device copy), whose largest step bounds the query lengths when max_seqlen_q is only a bound.\n"
        "`schedule` (CUDA, optional; contiguous, on the same GPU, 16-byte aligned, at least\n"
        "cuda_tile_schedule_bytes(Tq, n) bytes): the packed-tile schedule kept between calls over the\n"
        "same offsets; `schedule_ready` says an earlier call that returned True wrote it, in this\n"
        "stream's order. `workspace_zeroed`: the workspace's first 16 bytes are zero in this stream's\n"
        "order (zeroed once by the caller; every CUDA forward leaves them zero), so no memset runs\n"
        "before the kernel. Returns True when the call's tiles came from `schedule` (False on the CPU).");
  m.def("cuda_tile_schedule_bytes", &cuda_tile_schedule_bytes, nb::arg("rows"), nb::arg("num_sequences"),
        "Bytes of a kept packed-tile schedule over `rows` packed rows (the forward's query tokens, the\n"
        "backward's key tokens) in n sequences (0 in builds without CUDA).");
  m.def("cuda_fwd_workspace_bytes", &cuda_fwd_workspace_bytes, nb::arg("total_q"), nb::arg("num_sequences"),
        "Bytes of workspace the CUDA forward needs for Tq query tokens in n sequences (the tile counter\n"
        "and room for the packed-tile schedule of short sequences; 0 in builds without CUDA).");
  m.def("varlen_bwd_workspace_bytes", &varlen_bwd_workspace_bytes, nb::arg("q"), nb::arg("k"), nb::arg("v"),
        nb::arg("cu_seqlens_q"), nb::arg("cu_seqlens_k"), nb::arg("args"),
        "Bytes of device workspace varlen_bwd needs for these arguments (0 on the CPU).");
  m.def("cuda_bwd_workspace_bytes", &cuda_bwd_workspace_bytes, nb::arg("total_q"), nb::arg("total_k"),
        nb::arg("num_sequences"), nb::arg("heads_q"), nb::arg("head_dim"), nb::arg("deterministic") = false,
        nb::arg("dtype") = "", nb::arg("max_seqlen_k") = -1,
        "Bytes of workspace the CUDA backward needs for these sizes (0 in builds without CUDA): Tq query\n"
        "and Tk key tokens in n sequences (the packed key-tile schedule of short sequences grows with them).\n"
        "With the inputs' dtype name and the call's max_seqlen_k bound, a call whose keys fit one packed\n"
        "tile per sequence gets no float32 dq accumulator (Tq x Hq x D x 4 bytes less); max_seqlen_k < 0\n"
        "counts it (enough for any call of these sizes).");
  m.def("varlen_bwd", &varlen_bwd, nb::arg("dout"), nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"),
        nb::arg("lse"), nb::arg("cu_seqlens_q"), nb::arg("cu_seqlens_k"), nb::arg("dq"), nb::arg("dk"),
        nb::arg("dv"), nb::arg("args"), nb::arg("workspace").none() = nb::none(), nb::arg("stream") = 0,
        nb::arg("schedule").none() = nb::none(), nb::arg("schedule_ready") = false,
        "Varlen attention backward: dq, dk, dv from dout, the forward's out and lse (float32, or\n"
        "float64 for float64 inputs).\n"
        "On CUDA, `workspace` (contiguous, on the same GPU, 16-byte aligned) must hold at least\n"
        "varlen_bwd_workspace_bytes(...) bytes (None: allocated stream-ordered with cudaMallocAsync);\n"
        "args.deterministic makes dq bit-reproducible there (the CPU backward always is).\n"
        "`schedule` / `schedule_ready` and the result as varlen_fwd's, over key tiles: rows Tk.");
}

}  // namespace scree::bindings
