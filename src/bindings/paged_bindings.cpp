// Binding of the CUDA paged decode (include/scree/attention/paged.h), CUDA builds only:
// scree._C.paged_decode_plan (key splits and workspace bytes for a batch) and scree._C.paged_decode
// (out and lse from q, the pages and the tables, on the caller's stream). Every array is checked
// here (device, type, rank, shapes against each other); the tables' values were checked where
// they entered scree (scree.PagedKV), and the kernel clamps them into the cache regardless.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/tuple.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

#include "ndarray_checks.h"
#include "scree/attention/paged.h"

namespace scree::bindings {
namespace {

#ifdef SCREE_WITH_CUDA
scree::DType half_type(dl::dtype t, const char* name) {
  if (is(t, dl::dtype_code::Bfloat, 16)) return scree::DType::BFloat16;
  if (is(t, dl::dtype_code::Float, 16)) return scree::DType::Float16;
  throw Error(ErrorKind::Unsupported, std::string(name) + " must be bfloat16 or float16 for the CUDA paged decode, got " +
                                          dtype_name(t));
}

template <class A>
void require_rank(const A& a, size_t rank, const char* name, const char* dims) {
  scree::require(a.ndim() == rank, ErrorKind::ShapeMismatch, [&] {
    return std::string(name) + " must have shape " + dims + ", got " + std::to_string(a.ndim()) + " dimensions";
  });
}

void require_equal(int64_t a, int64_t b, const std::string& what) {
  scree::require(a == b, ErrorKind::ShapeMismatch, [&] { return what + ": " + std::to_string(a) + " vs " + std::to_string(b); });
}

// q (n, Hq, D); pages (num_pages, page_size, Hk, D) with any strides (HND pages as a transposed
// view); page_table (n, width) int32 with rows contiguous; kv_lens (n,) int32.
attention::PagedDecodeParams params(const InArray& q, const InArray& k_pages, const InArray& v_pages,
                                    const InArray& page_table, const InArray& kv_lens, double scale, double softcap,
                                    int64_t window_left) {
  require_rank(q, 3, "q", "(n, heads_q, head_dim)");
  require_rank(k_pages, 4, "k_pages", "(num_pages, page_size, heads_k, head_dim)");
  require_rank(v_pages, 4, "v_pages", "(num_pages, page_size, heads_k, head_dim)");
  require_rank(page_table, 2, "page_table", "(n, width)");
  require_rank(kv_lens, 1, "kv_lens", "(n,)");
  CallDevice dev{q.device_type(), q.device_id()};
  scree::require(dev.cuda(), ErrorKind::Unsupported, [&] { return "paged_decode runs on CUDA arrays, q is on " + dev.str(); });
  require_on(k_pages, "k_pages", dev, "q");
  require_on(v_pages, "v_pages", dev, "q");
  require_on(page_table, "page_table", dev, "q");
  require_on(kv_lens, "kv_lens", dev, "q");
  attention::PagedDecodeParams p;
  p.dtype = half_type(q.dtype(), "q");
  scree::require(half_type(k_pages.dtype(), "k_pages") == p.dtype && half_type(v_pages.dtype(), "v_pages") == p.dtype,
                 ErrorKind::DTypeMismatch, [] { return std::string("q, k_pages and v_pages must share one dtype"); });
  scree::require(is(page_table.dtype(), dl::dtype_code::Int, 32) && is(kv_lens.dtype(), dl::dtype_code::Int, 32),
                 ErrorKind::DTypeMismatch, [] { return std::string("page_table and kv_lens must be int32"); });
  p.num_sequences = static_cast<int64_t>(q.shape(0));
  p.heads_q = static_cast<int64_t>(q.shape(1));
  p.head_dim = static_cast<int64_t>(q.shape(2));
  p.num_pages = static_cast<int64_t>(k_pages.shape(0));
  p.page_size = static_cast<int64_t>(k_pages.shape(1));
  p.heads_k = static_cast<int64_t>(k_pages.shape(2));
  for (size_t i = 0; i < 4; ++i) {
    require_equal(static_cast<int64_t>(v_pages.shape(i)), static_cast<int64_t>(k_pages.shape(i)), "k_pages and v_pages shapes");
    require_equal(v_pages.stride(i), k_pages.stride(i), "k_pages and v_pages strides");
  }
  require_equal(static_cast<int64_t>(k_pages.shape(3)), p.head_dim, "head dims of q and the pages");
  require_equal(static_cast<int64_t>(page_table.shape(0)), p.num_sequences, "page_table rows and q's sequences");
  require_equal(static_cast<int64_t>(kv_lens.shape(0)), p.num_sequences, "kv_lens entries and q's sequences");
  scree::require(q.stride(2) == 1 && k_pages.stride(3) == 1 && page_table.stride(1) == 1, ErrorKind::InvalidArgument,
                 [] { return std::string("q and the pages need a contiguous head dim, page_table contiguous rows"); });
  p.q = q.data();
  p.q_row_stride = q.stride(0);
  p.q_head_stride = q.stride(1);
  p.k_pages = k_pages.data();
  p.v_pages = v_pages.data();
  p.page_stride = k_pages.stride(0);
  p.page_row_stride = k_pages.stride(1);
  p.page_head_stride = k_pages.stride(2);
  p.page_table = static_cast<const int32_t*>(page_table.data());
  p.table_stride = page_table.shape(1) > 0 ? page_table.stride(0) : 0;
  p.table_width = static_cast<int64_t>(page_table.shape(1));
  p.kv_lens = static_cast<const int32_t*>(kv_lens.data());
  p.scale = scale;
  p.softcap = softcap;
  p.window_left = window_left;
  return p;
}

std::tuple<int, size_t> paged_decode_plan(const InArray& q, const InArray& k_pages, const InArray& v_pages,
                                          const InArray& page_table, const InArray& kv_lens, int64_t max_kv_len) {
  const attention::PagedDecodeParams p = params(q, k_pages, v_pages, page_table, kv_lens, 1.0, 0.0, -1);
  attention::validate_paged_decode(p);
  const int splits = attention::paged_decode_splits(p, max_kv_len);
  return {splits, attention::paged_decode_workspace_bytes(p, splits)};
}

void paged_decode(const InArray& q, const InArray& k_pages, const InArray& v_pages, const InArray& page_table,
                  const InArray& kv_lens, OutArray out, std::optional<OutArray> lse, double scale, double softcap,
                  int64_t window_left, int splits, std::optional<OutArray> workspace, uintptr_t stream) {
  attention::PagedDecodeParams p = params(q, k_pages, v_pages, page_table, kv_lens, scale, softcap, window_left);
  CallDevice dev{q.device_type(), q.device_id()};
  require_on(out, "out", dev, "q");
  require_rank(out, 3, "out", "(n, heads_q, head_dim)");
  for (size_t i = 0; i < 3; ++i) require_equal(static_cast<int64_t>(out.shape(i)), static_cast<int64_t>(q.shape(i)), "out and q shapes");
  scree::require(half_type(out.dtype(), "out") == p.dtype && out.stride(2) == 1, ErrorKind::DTypeMismatch,
                 [] { return std::string("out must have q's dtype and a contiguous head dim"); });
  p.out = out.data();
  p.out_row_stride = out.stride(0);
  p.out_head_stride = out.stride(1);
  if (lse) {
    require_on(*lse, "lse", dev, "q");
    scree::require(is(lse->dtype(), dl::dtype_code::Float, 32) && lse->ndim() == 2 &&
                       static_cast<int64_t>(lse->shape(0)) == p.heads_q &&
                       static_cast<int64_t>(lse->shape(1)) == p.num_sequences && lse->stride(1) == 1 &&
                       (p.num_sequences == 0 || lse->stride(0) == p.num_sequences),
                   ErrorKind::ShapeMismatch, [] { return std::string("lse must be contiguous float32 (heads_q, n)"); });
    p.lse = static_cast<float*>(lse->data());
  }
  void* ws = nullptr;
  size_t ws_bytes = 0;
  if (workspace) {
    require_on(*workspace, "workspace", dev, "q");
    ws = workspace->data();
    ws_bytes = workspace->nbytes();
  }
  nb::gil_scoped_release release;
  attention::paged_decode_cuda(p, splits, ws, ws_bytes, reinterpret_cast<void*>(stream));
}
#endif

}  // namespace

void register_paged(nb::module_& m) {
#ifdef SCREE_WITH_CUDA
  m.def("paged_decode_plan", &paged_decode_plan, nb::arg("q"), nb::arg("k_pages"), nb::arg("v_pages"),
        nb::arg("page_table"), nb::arg("kv_lens"), nb::arg("max_kv_len"),
        "(splits, workspace_bytes) of the CUDA paged decode for these arrays and a bound on the longest\n"
        "cached sequence; raises scree.UnsupportedError where the kernel does not serve them.");
  m.def("paged_decode", &paged_decode, nb::arg("q"), nb::arg("k_pages"), nb::arg("v_pages"), nb::arg("page_table"),
        nb::arg("kv_lens"), nb::arg("out"), nb::arg("lse").none(), nb::arg("scale"), nb::arg("softcap"),
        nb::arg("window_left"), nb::arg("splits"), nb::arg("workspace").none(), nb::arg("stream"),
        "One query per sequence over a paged KV cache on CUDA, into out (n, heads_q, head_dim) and\n"
        "lse (heads_q, n) float32 (optional): pages (num_pages, page_size, heads_k, head_dim), any\n"
        "strides; page_table (n, width) and kv_lens (n,) int32; splits and the workspace from\n"
        "paged_decode_plan; on the given stream.");
#else
  (void)m;
#endif
}

}  // namespace scree::bindings
