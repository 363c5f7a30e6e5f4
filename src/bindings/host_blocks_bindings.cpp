// Bindings of the host block cache (include/scree/host_blocks.h): `host_block(nbytes)` hands out a
// cached block as a 1-D uint8 NumPy array whose owner returns it to the cache when the last array
// over it (views, or torch tensors made with torch.from_numpy) is freed; the cache's info and
// emptying. NumPy, a dependency of scree, is the one host array type both backends take zero-copy.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "scree/error.h"
#include "scree/host_blocks.h"

namespace nb = nanobind;

namespace scree::bindings {

void register_host_blocks(nb::module_& m) {
  m.def(
      "host_block",
      [](int64_t nbytes) {
        require(nbytes >= 0, ErrorKind::InvalidArgument,
                [&] { return "host_block: nbytes must be >= 0, got " + std::to_string(nbytes); });
        void* p = acquire_host_block(size_t(nbytes));
        nb::capsule owner(p, [](void* q) noexcept { release_host_block(q); });
        return nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>(p, {size_t(nbytes)}, owner);
      },
      nb::arg("nbytes"),
      "A host block of nbytes (page-aligned, contents undefined) from scree's cache, as a 1-D uint8\n"
      "NumPy array; freed blocks go back to the cache (at most SCREE_CPU_CACHE_MB MiB, default 1024).");
  m.def(
      "host_cache_info",
      [] {
        const HostCacheInfo i = host_cache_info();
        nb::dict d;
        d["cached_bytes"] = i.cached_bytes;
        d["cached_blocks"] = i.cached_blocks;
        d["live_bytes"] = i.live_bytes;
        d["hits"] = i.hits;
        d["misses"] = i.misses;
        return d;
      },
      "The host block cache: bytes and blocks kept for reuse, bytes handed out, hits and misses.");
  m.def("empty_host_cache", &empty_host_cache, "Returns the cached host blocks to the system; the bytes freed.");
}

}  // namespace scree::bindings
