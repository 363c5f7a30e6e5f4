"""The host memory scree keeps for reuse (include/scree/host_blocks.h): NumPy and torch CPU outputs of
256 KiB or more (attention outputs and gradients, layout results) and the CPU backward's large
operand buffers come from freed blocks, already written, instead of fresh pages that fault on first
write (a 16k-token torch CPU forward+backward on a 2-core VM: 123 -> 74 ms). Freed blocks stay with
scree up to SCREE_CPU_CACHE_MB MiB (default 1024; 0 keeps none), as a framework's GPU caching
allocator keeps device memory."""

from __future__ import annotations

from scree import _C


def host_cache_info() -> dict[str, int]:
    """The cache now: ``cached_bytes`` / ``cached_blocks`` kept for reuse, ``live_bytes`` handed out
    and not yet freed, ``hits`` / ``misses`` (requests served from the cache / by new memory)."""
    return dict(_C.host_cache_info())


def empty_host_cache() -> int:
    """Returns every cached block to the system (blocks in use are untouched); the bytes freed."""
    return int(_C.empty_host_cache())
