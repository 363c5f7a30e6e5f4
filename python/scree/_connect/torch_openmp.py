"""scree's CPU kernels on torch's OpenMP workers, shared when scree first meets torch.

torch runs its CPU ops on an OpenMP runtime whose workers spin for a while after each op before
they sleep; scree's own pool then ran its second thread on a core such a worker held (on a 2-core
Xeon, attention right after a torch matmul took 1.06-1.44x as long as back to back; NOTES.md,
issue 20 step 6). Sharing the runtime puts scree's parallel regions on those same workers, with
torch's thread count (torch.set_num_threads). SCREE_SHARE_OPENMP=0 keeps scree's own pool.

The runtime is the OpenMP library torch loaded: its wheels bundle one under torch/lib (or a
manylinux torch.libs folder); other builds link the environment's (conda's libgomp / libiomp5),
found among the libraries the process has mapped. scree only looks it up (dlopen RTLD_NOLOAD):
it never loads a second runtime."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from scree import _C

_OPENMP = re.compile(r"lib(gomp|iomp5|omp)\b[^/]*\.(so|dylib)")


def _candidates() -> list[str]:
    """OpenMP runtimes that may be torch's: those shipped with torch first, then any mapped one."""
    root = Path(torch.__file__).resolve().parent
    found = [str(p) for d in (root / "lib", root.parent / "torch.libs") if d.is_dir()
             for p in sorted(d.iterdir()) if _OPENMP.match(p.name)]
    try:
        with open("/proc/self/maps") as maps:  # address perms offset device inode [path]
            mapped = {f[5].strip() for f in (line.split(None, 5) for line in maps) if len(f) == 6}
    except OSError:  # no procfs (macOS): the bundled ones only
        mapped = set()
    found += sorted(p for p in mapped if _OPENMP.match(os.path.basename(p)) and p not in found)
    return found


def share() -> str:
    """Share torch's OpenMP runtime with scree's CPU kernels; the library shared, or '' (torch
    without OpenMP, no loaded runtime found, or SCREE_SHARE_OPENMP=0)."""
    if os.environ.get("SCREE_SHARE_OPENMP", "1") == "0" or not torch.backends.openmp.is_available():
        return ""
    for path in _candidates():
        if _C.share_openmp_runtime(path):
            return path
    return ""


share()
