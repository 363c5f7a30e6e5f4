"""scree.PagedKV: a paged KV cache (serving), the second raggedness of a serving batch. Keys and
values live in pages of `page_size` tokens, `k_pages` / `v_pages` of shape
`(num_pages, page_size, Hk, D)` ("NHD", vLLM's and FlashInfer's default) or
`(num_pages, Hk, page_size, D)` ("HND"); sequence i holds its first `kv_lens[i]` tokens in the
pages `page_table[i, 0], page_table[i, 1], ...` (a row of the (n, width) table; entries past its
last page are padding, never read). The engines' metadata converts to it in scree.bridges.serving.

The bookkeeping is validated once, like an Array's offsets (C++ PagedLayout): tables the host can
read at once, with scree.RaggedError naming the sequence; tables on a GPU on the GPU, the verdict
raised at the next scree call (the same polling as device offsets), no synchronisation."""

from __future__ import annotations

import weakref
from types import ModuleType
from typing import Any

import numpy as np

from scree import _backends, _C
from scree._errors import ArgumentError, DTypeError, ShapeError
from scree._layout import defer_check, host_index

__all__ = ["PagedKV"]

LAYOUTS = ("NHD", "HND")


class PagedKV:
    """A paged KV cache and the pages each sequence uses (module doc). `validate=False` trusts
    the tables (the gathers that read them index within the cache: a framework IndexError or
    device assert for a bad one, never a read outside it). The tables are read when the PagedKV is
    built and at its first attention call, and what derives from them is kept: build one per step,
    as the engines rebuild their metadata (writing new tokens with `append` keeps it valid)."""

    __slots__ = ("k_pages", "v_pages", "page_table", "kv_lens", "layout", "max_kv_len", "_ns", "_host_lens",
                 "_rows", "_cu_kv", "__weakref__")

    def __init__(self, k_pages: Any, v_pages: Any, page_table: Any, kv_lens: Any, layout: str = "NHD",
                 validate: bool = True):
        ns = _backends.common(k_pages=k_pages, v_pages=v_pages, page_table=page_table, kv_lens=kv_lens)
        if layout not in LAYOUTS:
            raise ArgumentError(f"layout must be 'NHD' (num_pages, page_size, heads, head_dim) or 'HND', got {layout!r}")
        ks, vs = tuple(ns.shape(k_pages)), tuple(ns.shape(v_pages))
        dims = "(num_pages, page_size, heads, head_dim)" if layout == "NHD" else "(num_pages, heads, page_size, head_dim)"
        for name, s in (("k_pages", ks), ("v_pages", vs)):
            if len(s) != 4:
                raise ShapeError(f"{name} must have shape {dims} ({layout}), got {s}")
        if ks[:3] != vs[:3]:
            raise ShapeError(f"k_pages {ks} and v_pages {vs} must agree in pages, page size and heads")
        if ns.dtype_name(k_pages) != ns.dtype_name(v_pages) or not ns.is_floating(k_pages):
            raise DTypeError(f"k_pages and v_pages must share one floating dtype, got {ns.dtype_name(k_pages)} and "
                             f"{ns.dtype_name(v_pages)}")
        pt, lens = tuple(ns.shape(page_table)), tuple(ns.shape(kv_lens))
        for name, x, rank in (("page_table", page_table, 2), ("kv_lens", kv_lens, 1)):
            if ns.dtype_name(x) not in ("int32", "int64"):
                raise DTypeError(f"{name} must be int32 or int64, got {ns.dtype_name(x)}")
            if len(ns.shape(x)) != rank:
                raise ShapeError(f"{name} must be {rank}-D, got shape {tuple(ns.shape(x))}")
        if lens[0] != pt[0]:
            raise ShapeError(f"kv_lens has {lens[0]} entries but page_table has {pt[0]} rows (one per sequence)")
        self.k_pages, self.v_pages, self.page_table, self.kv_lens = k_pages, v_pages, page_table, kv_lens
        self.layout = layout
        self._ns = ns
        self._host_lens: np.ndarray | None = None
        self._rows: tuple[Any, np.ndarray] | None = None
        self._cu_kv: Any = None  # device offsets of the cached lengths (device_kv_offsets)
        self.max_kv_len: int | None = None  # known once the tables were checked (or read) on the host
        if not validate:
            return
        if ns.host_readable(page_table) and ns.host_readable(kv_lens):
            self.max_kv_len = self._check_on_host()
        else:
            defer_check(_PagedCheck(self))

    # ---- shape -----------------------------------------------------------------------------------
    @property
    def num_sequences(self) -> int:
        return self._ns.shape(self.page_table)[0]

    @property
    def num_pages(self) -> int:
        return self._ns.shape(self.k_pages)[0]

    @property
    def page_size(self) -> int:
        return self._ns.shape(self.k_pages)[1 if self.layout == "NHD" else 2]

    @property
    def heads(self) -> int:
        return self._ns.shape(self.k_pages)[2 if self.layout == "NHD" else 1]

    @property
    def head_dim(self) -> int:
        return self._ns.shape(self.k_pages)[3]

    def __repr__(self) -> str:
        return (f"scree.PagedKV({self.num_sequences} sequences, {self.num_pages} pages of {self.page_size} tokens, "
                f"{self.heads} heads x {self.head_dim}, {self.layout}, {self._ns.name})")

    # ---- validation ------------------------------------------------------------------------------
    def _check_on_host(self) -> int:
        """The C++ check over host copies of the tables (a sync for device tables); max_kv_len."""
        ns = self._ns
        table = np.ascontiguousarray(ns.to_numpy(self.page_table))
        lens = host_index(ns, self.kv_lens)
        longest, _ = _C.validate_paged(table, lens, self.num_pages, self.page_size)
        self._host_lens = lens
        return int(longest)

    def host_kv_lens(self) -> np.ndarray:
        """kv_lens as host int64 (copied once: a sync for device tables)."""
        if self._host_lens is None:
            self._host_lens = host_index(self._ns, self.kv_lens)
        return self._host_lens

    # ---- writing new tokens ----------------------------------------------------------------------
    def append(self, k: Any, v: Any, slot_mapping: Any) -> "PagedKV":
        """Write new tokens' keys and values, k and v `(T, Hk, D)`, into their cache slots
        (slot = page * page_size + position in the page, vLLM's slot_mapping; a negative slot is a
        padding token and is skipped). In place for NumPy, torch and MLX (returns self); JAX arrays
        are immutable, so a new PagedKV over the written pages is returned."""
        ns = self._ns
        _backends.common(k_pages=self.k_pages, k=k, v=v, slot_mapping=slot_mapping)
        for name, x, dim in (("k", k, self.head_dim), ("v", v, ns.shape(self.v_pages)[3])):
            s = tuple(ns.shape(x))
            if len(s) != 3 or s[1:] != (self.heads, dim) or s[0] != ns.shape(slot_mapping)[0]:
                raise ShapeError(f"{name} must have shape (len(slot_mapping), {self.heads}, {dim}), got {s}")
        if ns.dtype_name(slot_mapping) not in ("int32", "int64") or len(ns.shape(slot_mapping)) != 1:
            raise DTypeError(f"slot_mapping must be 1-D int32 or int64, got {ns.dtype_name(slot_mapping)} of shape "
                             f"{tuple(ns.shape(slot_mapping))}")
        slots = ns.astype(slot_mapping, "int64")
        keep = ns.true_rows(slots >= 0)  # padding tokens (slot -1) are skipped
        slots = slots[keep]
        capacity = self.num_pages * self.page_size
        # Device slots too: past the cache, torch's CUDA write is a device-side assert (the context
        # is lost) and JAX's on a GPU drops the token silently. Reading their maximum costs one
        # scalar copy after the padding mask above, which already waited for the device.
        if ns.host_readable(slots):
            host = ns.to_numpy(slots)
            bad = host[host >= capacity]
            top = int(bad[0]) if bad.size else -1
        else:
            top = int(ns.to_numpy(ns.amax(slots, axis=0))) if ns.shape(slots)[0] else -1
        if top >= capacity:
            raise ArgumentError(f"slot_mapping holds slot {top}, past the cache's {capacity} slots "
                                f"({self.num_pages} pages of {self.page_size})")
        page, pos = slots // self.page_size, slots % self.page_size
        k_pages = _write(ns, self.k_pages, page, pos, k[keep], self.layout)
        v_pages = _write(ns, self.v_pages, page, pos, v[keep], self.layout)
        if k_pages is self.k_pages and v_pages is self.v_pages:
            return self
        return PagedKV(k_pages, v_pages, self.page_table, self.kv_lens, self.layout, validate=False)._known(self)

    def _known(self, other: "PagedKV") -> "PagedKV":
        self.max_kv_len, self._host_lens, self._rows = other.max_kv_len, other._host_lens, other._rows
        self._cu_kv = other._cu_kv
        return self

    def device_kv_offsets(self) -> Any:
        """int64 offsets (n + 1) of the cached lengths on the tables' device (a cumulative sum there,
        no sync), made once and kept: the paged kernels take cu_seqlens_k from it."""
        if self._cu_kv is None:
            ns = self._ns
            lens = ns.astype(self.kv_lens, "int64")
            self._cu_kv = ns.concat([ns.zeros((1,), "int64", like=lens), ns.cumsum(lens)])
        return self._cu_kv

    # ---- reading the cached tokens ---------------------------------------------------------------
    def token_rows(self) -> tuple[Any, np.ndarray]:
        """(rows, offsets): for every cached token of every sequence in order, its row in the pages
        flattened to (num_pages * page_size, Hk, D) (NHD order), computed on the tables' device;
        offsets the host int64 offsets of the sequences' tokens. Reads kv_lens on the host once (a
        sync for device tables, until the paged kernels read the pages in place); kept with the
        PagedKV, which every layer of a step shares when it shares the tables."""
        if self._rows is None:
            ns = self._ns
            if self.max_kv_len is None:  # built with validate=False, or its device check is in flight:
                self.max_kv_len = self._check_on_host()  # the tables are read here anyway (a sync on a GPU)
            lens = self.host_kv_lens()
            offsets = np.zeros(len(lens) + 1, dtype=np.int64)
            np.cumsum(lens, out=offsets[1:])
            total, like = int(offsets[-1]), self.page_table
            seg = ns.repeat(ns.arange(len(lens), "int64", like=like), ns.astype(self.kv_lens, "int64"), total)
            pos = ns.arange(total, "int64", like=like) - ns.from_numpy(offsets, like=like)[seg]
            pages = ns.astype(self.page_table, "int64")[seg, pos // self.page_size]
            self._rows = (pages * self.page_size + pos % self.page_size, offsets)
        return self._rows

    def flat_pages(self, which: str) -> Any:
        """k_pages or v_pages as (num_pages * page_size, Hk, D or Dv) rows (a view for NHD, a copy
        for HND)."""
        x = self.k_pages if which == "k" else self.v_pages
        ns = self._ns
        if self.layout == "HND":
            x = ns.swapaxes(x, 1, 2)
        return ns.reshape(ns.contiguous(x), (self.num_pages * self.page_size, self.heads, ns.shape(x)[3]))


def _write(ns: ModuleType, pages: Any, page: Any, pos: Any, rows: Any, layout: str) -> Any:
    """pages with rows written at (page, pos): a new array for JAX (immutable), else in place (MLX's
    index assignment updates the array object too)."""
    if ns.name == "jax":
        return pages.at[page, pos].set(rows) if layout == "NHD" else pages.at[page, :, pos].set(rows)
    if layout == "NHD":
        pages[page, pos] = rows
    else:
        pages[page, :, pos] = rows
    return pages


class _PagedCheck:
    """The check of a PagedKV's device tables, in flight: four numbers computed on the device
    (bad page ids among the pages in use, rows too short, negative lengths, the longest length)
    and copied back behind an event; polled like the device check of offsets (scree._layout)."""

    __slots__ = ("paged", "ns", "readback")

    def __init__(self, paged: PagedKV):
        ns = paged._ns
        self.paged = weakref.ref(paged)
        self.ns = ns
        lens = ns.astype(paged.kv_lens, "int64")
        n, width = ns.shape(paged.page_table)
        size = paged.page_size
        need = (lens + (size - 1)) // size
        used = ns.reshape(ns.arange(width, "int64", like=lens), (1, width)) < ns.reshape(need, (n, 1))
        ids = ns.astype(paged.page_table, "int64")
        bad_ids = ns.astype(used & ((ids < 0) | (ids >= paged.num_pages)), "int64")
        zero = ns.zeros((1,), "int64", like=lens)
        summary = ns.stack([ns.sum(ns.reshape(bad_ids, (-1,)), axis=0),
                            ns.sum(ns.astype(need > width, "int64"), axis=0),
                            ns.sum(ns.astype(lens < 0, "int64"), axis=0),
                            ns.amax(ns.concat([lens, zero]), axis=0)])
        self.readback = None if ns.is_capturing(lens) else ns.readback(summary)

    def verdict(self, summary: np.ndarray) -> None:
        paged = self.paged()
        if paged is None:
            return
        if int(summary[0]) or int(summary[1]) or int(summary[2]):
            paged._check_on_host()  # the error path: read the tables, raise naming the sequence
        paged.max_kv_len = int(summary[3])
