// nanobind module `scree._C`: the exception translator (scree::Error kinds -> the Python classes of
// scree/_errors.py) and the registration of every binding group. NumPy arrays and torch tensors
// arrive zero-copy through DLPack / the buffer protocol; this file never names a framework.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <exception>
#include <string>

#ifdef SCREE_WITH_CUDA
#include "scree/cuda_runtime.h"
#endif
#include "error_names.h"
#include "scree/error.h"
#include "scree/parallel.h"

namespace nb = nanobind;
using scree::Error;
using scree::ErrorKind;

namespace scree::bindings {
void register_layout(nb::module_& m);
void register_attention(nb::module_& m);
void register_paged(nb::module_& m);
void register_host_blocks(nb::module_& m);
#ifdef SCREE_WITH_XLA_FFI
void register_xla(nb::module_& m);
#endif
}  // namespace scree::bindings

namespace {

// Maps scree::Error kinds onto the Python classes defined in scree/_errors.py.
void translate(const std::exception_ptr& p, void*) {
  try {
    std::rethrow_exception(p);
  } catch (const Error& e) {
    const char* cls_name = scree::bindings::error_class_name(e.kind());
    try {
      nb::object cls = nb::module_::import_("scree._errors").attr(cls_name);
      PyErr_SetString(cls.ptr(), e.what());
    } catch (const nb::python_error&) {
      PyErr_SetString(PyExc_ValueError, e.what());  // scree._errors unavailable: still no crash
    }
  }
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "scree's compiled core: ragged-layout validation and CPU layout kernels.";
  nb::register_exception_translator(translate);
  // AttentionArgs live in other frameworks' objects (a torch autograd graph's saved context, JAX's
  // traces), which Python may tear down after this module at exit: nanobind would report those
  // as leaks although nothing leaks while the process runs.
  nb::set_leak_warnings(false);

#ifdef SCREE_WITH_CUDA
  constexpr bool with_cuda = true;
  auto device_count = [] { return scree::cuda::device_count(); };
#else
  constexpr bool with_cuda = false;
  auto device_count = [] { return 0; };
#endif
  m.def("cuda_compiled", [] { return with_cuda; }, "Whether this build of scree compiled its CUDA sources.");
  m.def("cuda_device_count", device_count, "Visible CUDA devices (0 without a driver or in a CPU-only build).");
  m.def(
      "share_openmp_runtime", [](const std::string& library) { return scree::share_openmp_runtime(library.c_str()); },
      nb::arg("library"),
      "Run scree's CPU kernels on the workers of an OpenMP runtime the process has already loaded\n"
      "(its path, e.g. torch's libgomp; scree's torch glue shares torch's) instead of scree's own\n"
      "pool, so a kernel right after a framework op does not compete with that op's spinning workers.\n"
      "False (nothing changed) where that library is not loaded or is no OpenMP runtime.");
  m.def("stop_sharing_openmp_runtime", &scree::stop_sharing_openmp_runtime, "Back to scree's own worker pool.");
  m.def("shared_openmp_runtime", &scree::shared_openmp_runtime,
        "The OpenMP runtime's library that runs scree's CPU kernels, or '' for scree's own pool.");
  scree::bindings::register_layout(m);
  scree::bindings::register_attention(m);
  scree::bindings::register_paged(m);
  scree::bindings::register_host_blocks(m);
#ifdef SCREE_WITH_XLA_FFI
  scree::bindings::register_xla(m);
#else
  m.def("registrations", [] { return nb::dict(); },
        "XLA FFI handlers (name -> capsule) for jax.ffi.register_ffi_target; empty when built without jax.");
#endif
}
