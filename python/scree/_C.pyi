"""
scree's compiled core: ragged-layout validation and CPU layout kernels.
"""

from collections.abc import Sequence
from typing import Annotated

import numpy
from numpy.typing import NDArray


def cuda_compiled() -> bool:
    """Whether this build of scree compiled its CUDA sources."""

def cuda_device_count() -> int:
    """Visible CUDA devices (0 without a driver or in a CPU-only build)."""

def share_openmp_runtime(library: str) -> bool:
    """
    Run scree's CPU kernels on the workers of an OpenMP runtime the process has already loaded
    (its path, e.g. torch's libgomp; scree's torch glue shares torch's) instead of scree's own
    pool, so a kernel right after a framework op does not compete with that op's spinning workers.
    False (nothing changed) where that library is not loaded or is no OpenMP runtime.
    """

def stop_sharing_openmp_runtime() -> None:
    """Back to scree's own worker pool."""

def shared_openmp_runtime() -> str:
    """
    The OpenMP runtime's library that runs scree's CPU kernels, or '' for scree's own pool.
    """

def validate_offsets(offsets: Annotated[NDArray, dict(writable=False)], total: int) -> tuple[int, int, int]:
    """
    Check the ragged invariants of 1-D int32/int64 host `offsets` against `total` rows.
    Returns (num_sequences, total, max_length); raises scree.RaggedError naming the first bad index.
    """

def validate_paged(page_table: Annotated[NDArray, dict(writable=False)], kv_lens: Annotated[NDArray, dict(writable=False)], num_pages: int, page_size: int) -> tuple[int, int]:
    """
    Check a paged KV cache's host page_table (n, width) and kv_lens (n,) (int32/int64) against
    num_pages pages of page_size tokens. Returns (max_kv_len, max_pages); raises
    scree.RaggedError naming the first sequence whose length is negative or past its row,
    or whose page id is outside the cache.
    """

def offsets_from_lengths(lengths: Annotated[NDArray, dict(writable=False)], out: NDArray) -> int:
    """
    Write offsets (int64, n+1) from host lengths into `out`; returns max_length.
    """

def pack(sources: Sequence[Annotated[NDArray, dict(writable=False)]], offsets: Annotated[NDArray, dict(writable=False)], out: NDArray) -> None:
    """Copy each source array into out[offsets[i]:offsets[i+1]]."""

def pack_addresses(addresses: Annotated[NDArray, dict(writable=False)], offsets: Annotated[NDArray, dict(writable=False)], out: NDArray) -> None:
    """
    pack from raw addresses (int64, one per sequence): the rows of sequence i lie contiguously
    from addresses[i] in out's dtype and row size, which the caller guarantees (scree.pack does,
    from the arrays it checked). Offsets, sizes and null addresses are checked here.
    """

def pad(values: Annotated[NDArray, dict(writable=False)], offsets: Annotated[NDArray, dict(writable=False)], padded: NDArray, mask: NDArray | None, pad_value: Annotated[NDArray, dict(writable=False)], left: bool) -> None:
    """
    Scatter values (total, *f) into padded (n, max_len, *f), filling gaps with pad_value; fill mask.
    """

def unpad(padded: Annotated[NDArray, dict(writable=False)], offsets: Annotated[NDArray, dict(writable=False)], values: NDArray, left: bool) -> None:
    """Inverse of pad given the offsets of the result."""

def mask_offsets(mask: Annotated[NDArray, dict(writable=False)], out: NDArray) -> None:
    """Offsets (int64, n+1) from a (n, max_len) mask."""

def unpad_mask(padded: Annotated[NDArray, dict(writable=False)], mask: Annotated[NDArray, dict(writable=False)], offsets: Annotated[NDArray, dict(writable=False)], values: NDArray) -> None:
    """values = padded[mask], row order, with offsets from mask_offsets."""

def gather_offsets(offsets: Annotated[NDArray, dict(writable=False)], indices: Annotated[NDArray, dict(writable=False)], out: NDArray) -> None:
    """Offsets of the sequences `indices` (int64) of a layout."""

def gather(values: Annotated[NDArray, dict(writable=False)], offsets: Annotated[NDArray, dict(writable=False)], indices: Annotated[NDArray, dict(writable=False)], out_offsets: Annotated[NDArray, dict(writable=False)], out: NDArray) -> None:
    """Copy the sequences `indices` into out."""

def positions(offsets: Annotated[NDArray, dict(writable=False)], out: NDArray) -> None:
    """Index of each token within its sequence."""

def segment_ids(offsets: Annotated[NDArray, dict(writable=False)], out: NDArray) -> None:
    """Sequence index of each token."""

def segment_reduce(values: Annotated[NDArray, dict(writable=False)], offsets: Annotated[NDArray, dict(writable=False)], out: NDArray, op: str) -> None:
    """
    Per-sequence 'sum', 'mean', 'max', 'min', 'prod' or 'logsumexp' over tokens into out (n, *f).
    """

def segment_var(values: Annotated[NDArray, dict(writable=False)], offsets: Annotated[NDArray, dict(writable=False)], out: NDArray, ddof: int, sqrt: bool) -> None:
    """
    Per-sequence variance (standard deviation when sqrt) over tokens into out (n, *f).
    """

def segment_cumsum(values: Annotated[NDArray, dict(writable=False)], offsets: Annotated[NDArray, dict(writable=False)], out: NDArray) -> None:
    """
    Per-sequence running sum over tokens into out (total, *f); integers into int64.
    """

def segment_softmax(values: Annotated[NDArray, dict(writable=False)], offsets: Annotated[NDArray, dict(writable=False)], out: NDArray, log: bool) -> None:
    """
    Per-sequence softmax (log_softmax when log) over tokens into out (total, *f).
    """

class OffsetsSummary:
    """
    The device check of offsets in flight (offsets_summary_cuda): [offsets[0], offsets[-1], smallest step,
    largest step] written by one kernel into pinned host memory, an event behind it.
    """

    def ready(self) -> bool:
        """Whether the four numbers have reached the host (never blocks)."""

    def value(self) -> Annotated[NDArray[numpy.int64], dict(shape=(4))]:
        """
        The four numbers as a new int64 NumPy array; waits for the device only when not ready().
        """

def offsets_summary_cuda(offsets: Annotated[NDArray, dict(writable=False)], stream: int, device_copy: NDArray | None = None) -> OffsetsSummary:
    """
    Start the device check of 1-D contiguous int32/int64 `offsets` on a CUDA GPU on `stream` (an int
    cudaStream_t): one kernel and one event, no synchronisation. Returns an OffsetsSummary to poll.
    `device_copy` (optional, int64 (4,) on the same device) receives the four numbers too.
    """

class AttentionArgs:
    """
    The scalar arguments of one varlen attention call, as the kernels take them (immutable).
    max_seqlen_q/k: longest sequence lengths (upper bounds are accepted); scale; causal (bottom-right
    aligned); window_left/right (-1 = unbounded); softcap (0 = off); deterministic (CUDA backward).
    XLA FFI calls pass the same fields as attributes of the same names (fields()).
    """

    def __init__(self, max_seqlen_q: int, max_seqlen_k: int, scale: float, causal: bool = False, window_left: int = -1, window_right: int = -1, softcap: float = 0.0, deterministic: bool = False) -> None: ...

    @property
    def max_seqlen_q(self) -> int: ...

    @property
    def max_seqlen_k(self) -> int: ...

    @property
    def scale(self) -> float: ...

    @property
    def causal(self) -> bool: ...

    @property
    def window_left(self) -> int: ...

    @property
    def window_right(self) -> int: ...

    @property
    def softcap(self) -> float: ...

    @property
    def deterministic(self) -> bool: ...

    def with_deterministic(self, deterministic: bool) -> AttentionArgs:
        """A copy with `deterministic` replaced (the backward's choice)."""

    def fields(self) -> dict:
        """
        The fields by name, in declaration order (the attributes of the XLA FFI calls).
        """

    def __repr__(self) -> str: ...

    def __eq__(self, arg: object, /) -> bool: ...

    def __hash__(self) -> int: ...

def cpu_isa() -> str:
    """Instruction-set variant of the CPU attention kernels in use."""

def cuda_head_dims() -> list[int]:
    """
    Head dims (D == Dv) the CUDA attention kernels were compiled for, ascending; [] without CUDA.
    """

def paged_fwd_cpu(q: Annotated[NDArray, dict(writable=False)], k_rows: Annotated[NDArray, dict(writable=False)], v_rows: Annotated[NDArray, dict(writable=False)], cu_seqlens_q: Annotated[NDArray, dict(writable=False)], cu_seqlens_k: Annotated[NDArray, dict(writable=False)], page_table: Annotated[NDArray, dict(writable=False)], page_size: int, out: NDArray, lse: NDArray | None, args: AttentionArgs) -> None:
    """
    Varlen attention forward on the CPU over a paged KV cache: k_rows / v_rows (num_pages *
    page_size, Hk, D) the pages as rows, cu_seqlens_k the cached tokens of each sequence,
    page_table (n, width) int32/int64 (sequence i's key t is row page_table[i][t // page_size] *
    page_size + t % page_size); q, out, lse and args as varlen_fwd. The table is checked first.
    """

def paged_fwd_cuda(q: Annotated[NDArray, dict(writable=False)], k_pages: Annotated[NDArray, dict(writable=False)], v_pages: Annotated[NDArray, dict(writable=False)], cu_seqlens_q: Annotated[NDArray, dict(writable=False)], cu_seqlens_k: Annotated[NDArray, dict(writable=False)], page_table: Annotated[NDArray, dict(writable=False)], out: NDArray, lse: NDArray | None, args: AttentionArgs, workspace: NDArray | None = None, q_summary: Annotated[NDArray, dict(writable=False)] | None = None, stream: int = 0) -> None:
    """
    Varlen attention forward on CUDA (Hopper) over a paged KV cache read in place: k_pages / v_pages
    (num_pages, page_size, Hk, D), any strides (HND pages as a transposed view), page sizes 16, 32,
    64, 128 or multiples of 128; cu_seqlens_k device offsets of the cached lengths; page_table (n,
    width) int32/int64 on the device (values checked by scree.PagedKV, clamped by the kernel); the
    rest as varlen_fwd. Slots past a sequence's end in its last page may hold anything.
    """

def varlen_fwd(q: Annotated[NDArray, dict(writable=False)], k: Annotated[NDArray, dict(writable=False)], v: Annotated[NDArray, dict(writable=False)], cu_seqlens_q: Annotated[NDArray, dict(writable=False)], cu_seqlens_k: Annotated[NDArray, dict(writable=False)], out: NDArray, lse: NDArray | None, args: AttentionArgs, workspace: NDArray | None = None, q_summary: Annotated[NDArray, dict(writable=False)] | None = None, stream: int = 0, schedule: NDArray | None = None, schedule_ready: bool = False, workspace_zeroed: bool = False) -> bool:
    """
    Varlen attention forward into out (Tq, Hq, Dv) and lse (Hq, Tq) float32 (optional; float64
    inputs take a float64 lse, or a float32 one that rounds it). All arrays on one device: the
    CPU, or one CUDA GPU (float16/bfloat16; launched on `stream`, a cudaStream_t as an int,
    0 = legacy default stream). cu_seqlens are int32/int64 (n+1) on
    that device; `args` (AttentionArgs) holds the scalars. On CUDA, `workspace` (contiguous, on
    the same GPU, 16-byte aligned) holds cuda_fwd_workspace_bytes(Tq, n) bytes (None: allocated
    stream-ordered with cudaMallocAsync, slower). `q_summary` (CUDA, optional): the device check's
    int64 [first, last, smallest step, largest step] of cu_seqlens_q (offsets_summary_cuda's
    device copy), whose largest step bounds the query lengths when max_seqlen_q is only a bound.
    `schedule` (CUDA, optional; contiguous, on the same GPU, 16-byte aligned, at least
    cuda_tile_schedule_bytes(Tq, n) bytes): the packed-tile schedule kept between calls over the
    same offsets; `schedule_ready` says an earlier call that returned True wrote it, in this
    stream's order. `workspace_zeroed`: the workspace's first 16 bytes are zero in this stream's
    order (zeroed once by the caller; every CUDA forward leaves them zero), so no memset runs
    before the kernel. Returns True when the call's tiles came from `schedule` (False on the CPU).
    """

def cuda_tile_schedule_bytes(rows: int, num_sequences: int) -> int:
    """
    Bytes of a kept packed-tile schedule over `rows` packed rows (the forward's query tokens, the
    backward's key tokens) in n sequences (0 in builds without CUDA).
    """

def cuda_fwd_workspace_bytes(total_q: int, num_sequences: int) -> int:
    """
    Bytes of workspace the CUDA forward needs for Tq query tokens in n sequences (the tile counter
    and room for the packed-tile schedule of short sequences; 0 in builds without CUDA).
    """

def varlen_bwd_workspace_bytes(q: Annotated[NDArray, dict(writable=False)], k: Annotated[NDArray, dict(writable=False)], v: Annotated[NDArray, dict(writable=False)], cu_seqlens_q: Annotated[NDArray, dict(writable=False)], cu_seqlens_k: Annotated[NDArray, dict(writable=False)], args: AttentionArgs) -> int:
    """
    Bytes of device workspace varlen_bwd needs for these arguments (0 on the CPU).
    """

def cuda_bwd_workspace_bytes(total_q: int, total_k: int, num_sequences: int, heads_q: int, head_dim: int, deterministic: bool = False, dtype: str = '', max_seqlen_k: int = -1) -> int:
    """
    Bytes of workspace the CUDA backward needs for these sizes (0 in builds without CUDA): Tq query
    and Tk key tokens in n sequences (the packed key-tile schedule of short sequences grows with them).
    With the inputs' dtype name and the call's max_seqlen_k bound, a call whose keys fit one packed
    tile per sequence gets no float32 dq accumulator (Tq x Hq x D x 4 bytes less); max_seqlen_k < 0
    counts it (enough for any call of these sizes).
    """

def varlen_bwd(dout: Annotated[NDArray, dict(writable=False)], q: Annotated[NDArray, dict(writable=False)], k: Annotated[NDArray, dict(writable=False)], v: Annotated[NDArray, dict(writable=False)], out: Annotated[NDArray, dict(writable=False)], lse: Annotated[NDArray, dict(writable=False)], cu_seqlens_q: Annotated[NDArray, dict(writable=False)], cu_seqlens_k: Annotated[NDArray, dict(writable=False)], dq: NDArray, dk: NDArray, dv: NDArray, args: AttentionArgs, workspace: NDArray | None = None, stream: int = 0, schedule: NDArray | None = None, schedule_ready: bool = False) -> bool:
    """
    Varlen attention backward: dq, dk, dv from dout, the forward's out and lse (float32, or
    float64 for float64 inputs).
    On CUDA, `workspace` (contiguous, on the same GPU, 16-byte aligned) must hold at least
    varlen_bwd_workspace_bytes(...) bytes (None: allocated stream-ordered with cudaMallocAsync);
    args.deterministic makes dq bit-reproducible there (the CPU backward always is).
    `schedule` / `schedule_ready` and the result as varlen_fwd's, over key tiles: rows Tk.
    """

def paged_decode_plan(q: Annotated[NDArray, dict(writable=False)], k_pages: Annotated[NDArray, dict(writable=False)], v_pages: Annotated[NDArray, dict(writable=False)], page_table: Annotated[NDArray, dict(writable=False)], kv_lens: Annotated[NDArray, dict(writable=False)], max_kv_len: int) -> tuple[int, int]:
    """
    (splits, workspace_bytes) of the CUDA paged decode for these arrays and a bound on the longest
    cached sequence; raises scree.UnsupportedError where the kernel does not serve them.
    """

def paged_decode(q: Annotated[NDArray, dict(writable=False)], k_pages: Annotated[NDArray, dict(writable=False)], v_pages: Annotated[NDArray, dict(writable=False)], page_table: Annotated[NDArray, dict(writable=False)], kv_lens: Annotated[NDArray, dict(writable=False)], out: NDArray, lse: NDArray | None, scale: float, softcap: float, window_left: int, splits: int, workspace: NDArray | None, stream: int) -> None:
    """
    One query per sequence over a paged KV cache on CUDA, into out (n, heads_q, head_dim) and
    lse (heads_q, n) float32 (optional): pages (num_pages, page_size, heads_k, head_dim), any
    strides; page_table (n, width) and kv_lens (n,) int32; splits and the workspace from
    paged_decode_plan; on the given stream.
    """

def host_block(nbytes: int) -> Annotated[NDArray[numpy.uint8], dict(shape=(None,))]:
    """
    A host block of nbytes (page-aligned, contents undefined) from scree's cache, as a 1-D uint8
    NumPy array; freed blocks go back to the cache (at most SCREE_CPU_CACHE_MB MiB, default 1024).
    """

def host_cache_info() -> dict:
    """
    The host block cache: bytes and blocks kept for reuse, bytes handed out, hits and misses.
    """

def empty_host_cache() -> int:
    """Returns the cached host blocks to the system; the bytes freed."""

def registrations() -> dict:
    """
    XLA FFI handlers (name -> capsule) for jax.ffi.register_ffi_target; empty when built without jax.
    """
