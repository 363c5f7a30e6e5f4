"""The CUDA wiring of varlen attention, checked without a GPU: the scree._C arguments (the
AttentionArgs record, stream, workspace) and bindings (cuda_head_dims, varlen_bwd_workspace_bytes),
the typed errors for arrays on the wrong device or offsets the CUDA kernels cannot take, and the
Python dispatch helpers (which kernel serves what, deterministic mode, max_seqlen without a device
sync).

Arrays "on a CUDA device" are hand-made DLPack capsules whose data pointer is bogus: every call
below must be refused before a pointer is used, so they are safe on any machine, GPU or not. The
GPU tests proper (numbers, streams, workspaces in use) are in test_attention_cuda.py."""

from __future__ import annotations

import ctypes
import importlib

import numpy as np
import pytest

import scree
from scree import _C
from scree.kernels import attention
from scree.kernels.attention import plan, resolve_deterministic

# ---- DLPack capsules of arrays that claim to live on a CUDA device ------------------------------
_CPU, _CUDA = 1, 2                       # DLDeviceType
_CODES = {"int": 0, "float": 2, "bfloat": 4}  # DLDataTypeCode


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_KEEP: list = []  # the structs a capsule points to must outlive the call that consumes it


def device_array(shape, dtype="bfloat16", device_id=0, strides=None):
    """A DLPack capsule (consumed once) of an array on cuda:<device_id> at a bogus address."""
    kind = dtype.rstrip("0123456789")
    bits = int(dtype[len(kind):])
    if strides is None:
        strides, acc = [], 1
        for n in reversed(shape):
            strides.insert(0, acc)
            acc *= n
    shp = (ctypes.c_int64 * len(shape))(*shape)
    st = (ctypes.c_int64 * len(shape))(*strides)
    mt = _DLManagedTensor()
    mt.dl_tensor = _DLTensor(ctypes.c_void_p(1 << 20), _DLDevice(_CUDA, device_id), len(shape),
                             _DLDataType(_CODES[kind], bits, 1), shp, st, 0)
    _KEEP.extend((mt, shp, st))
    return _capsule_new(ctypes.addressof(mt), b"dltensor", None)


HQ, HK, D, T = 4, 2, 64, 7
ARGS = _C.AttentionArgs(4, 4, 0.125)  # max_seqlen_q/k 4, scale 0.125; no causal, window or softcap


def host_problem(dtype=np.float32):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((T, HQ, D)).astype(dtype)
    k = rng.standard_normal((T, HK, D)).astype(dtype)
    v = rng.standard_normal((T, HK, D)).astype(dtype)
    cu = np.array([0, 3, 7], dtype=np.int64)
    return q, k, v, cu


def device_problem(dtype="bfloat16", device_id=0):
    """Keyword arguments of a forward call with every array 'on' cuda:<device_id>."""
    return dict(q=device_array((T, HQ, D), dtype, device_id), k=device_array((T, HK, D), dtype, device_id),
                v=device_array((T, HK, D), dtype, device_id), cu_seqlens_q=device_array((3,), "int32", device_id),
                cu_seqlens_k=device_array((3,), "int32", device_id), out=device_array((T, HQ, D), dtype, device_id),
                lse=device_array((HQ, T), "float32", device_id))


def fwd(**kw):
    _C.varlen_fwd(kw["q"], kw["k"], kw["v"], kw["cu_seqlens_q"], kw["cu_seqlens_k"], kw["out"], kw["lse"], ARGS)


needs_cpu_only_build = pytest.mark.skipif(_C.cuda_compiled(), reason="this build has CUDA kernels")
needs_cuda_build = pytest.mark.skipif(not _C.cuda_compiled(), reason="this build has no CUDA kernels")


# ---- the new bindings and arguments on the CPU --------------------------------------------------
def test_cuda_head_dims():
    dims = _C.cuda_head_dims()
    assert isinstance(dims, list) and all(isinstance(d, int) and d > 0 for d in dims)
    assert dims == sorted(dims)
    if not _C.cuda_compiled():
        assert dims == []


def test_cpu_calls_take_the_new_arguments_and_ignore_them():
    q, k, v, cu = host_problem()
    outs = []
    for kw in ({}, {"stream": 0}, {"stream": 12345}):  # no stream on the host: any handle is ignored
        out, lse = np.empty((T, HQ, D), np.float32), np.empty((HQ, T), np.float32)
        _C.varlen_fwd(q, k, v, cu, cu, out, lse, ARGS, **kw)
        outs.append((out, lse))
    for out, lse in outs[1:]:
        assert np.array_equal(out, outs[0][0]) and np.array_equal(lse, outs[0][1])
    out, lse = outs[0]
    dout = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    grads = []
    for det, kw in ((False, {}), (True, {}), (False, {"workspace": None, "stream": 0}),
                    (False, {"workspace": np.empty(64, np.uint8)})):
        g = [np.empty_like(x) for x in (q, k, v)]
        _C.varlen_bwd(dout, q, k, v, out, lse, cu, cu, *g, ARGS.with_deterministic(det), **kw)
        grads.append(g)
    for g in grads[1:]:  # the CPU backward is deterministic whatever is asked
        assert all(np.array_equal(a, b) for a, b in zip(g, grads[0]))


@pytest.mark.parametrize("det", [False, True])
def test_workspace_bytes_is_zero_on_the_cpu(det):
    q, k, v, cu = host_problem()
    assert _C.varlen_bwd_workspace_bytes(q, k, v, cu, cu, ARGS.with_deterministic(det)) == 0


def test_workspace_bytes_checks_its_arguments():
    q, k, v, cu = host_problem()
    with pytest.raises(scree.ShapeError):
        _C.varlen_bwd_workspace_bytes(q[:, :, :32], k, v, cu, cu, ARGS)
    with pytest.raises(scree.DTypeError, match="cu_seqlens_q"):
        _C.varlen_bwd_workspace_bytes(q, k, v, cu.astype(np.float32), cu, ARGS)


def test_stream_must_be_a_nonnegative_int():
    q, k, v, cu = host_problem()
    out, lse = np.empty((T, HQ, D), np.float32), np.empty((HQ, T), np.float32)
    with pytest.raises(TypeError):
        _C.varlen_fwd(q, k, v, cu, cu, out, lse, ARGS, stream=-1)
    with pytest.raises(TypeError):
        _C.varlen_fwd(q, k, v, cu, cu, out, lse, ARGS, stream="default")


def test_negative_max_seqlen_is_an_argument_error():
    q, k, v, cu = host_problem()
    out, lse = np.empty((T, HQ, D), np.float32), np.empty((HQ, T), np.float32)
    with pytest.raises(scree.ArgumentError, match="max_seqlen"):
        _C.varlen_fwd(q, k, v, cu, cu, out, lse, _C.AttentionArgs(-1, 4, 0.125))


def test_empty_offsets_are_a_ragged_error():
    q, k, v, _ = host_problem()
    out, lse = np.empty((T, HQ, D), np.float32), np.empty((HQ, T), np.float32)
    empty = np.empty(0, np.int64)
    with pytest.raises(scree.RaggedError, match="cu_seqlens_q"):
        _C.varlen_fwd(q, k, v, empty, empty, out, lse, ARGS)


# ---- devices: every array of a call on q's device, the culprit named ----------------------------
@pytest.mark.parametrize("culprit", ["k", "v", "cu_seqlens_q", "cu_seqlens_k", "out", "lse"])
def test_host_call_with_one_device_array_names_it(culprit):
    q, k, v, cu = host_problem()
    kw = dict(q=q, k=k, v=v, cu_seqlens_q=cu, cu_seqlens_k=cu, out=np.empty((T, HQ, D), np.float32),
              lse=np.empty((HQ, T), np.float32))
    shapes = {"k": (T, HK, D), "v": (T, HK, D), "cu_seqlens_q": (3,), "cu_seqlens_k": (3,), "out": (T, HQ, D),
              "lse": (HQ, T)}
    kw[culprit] = device_array(shapes[culprit], "int64" if culprit.startswith("cu") else "float32")
    with pytest.raises(scree.ArgumentError, match=rf"^{culprit} is on cuda:0 but q is on cpu"):
        fwd(**kw)


def test_host_backward_with_a_device_workspace_names_it():
    q, k, v, cu = host_problem()
    out, lse = np.empty((T, HQ, D), np.float32), np.empty((HQ, T), np.float32)
    _C.varlen_fwd(q, k, v, cu, cu, out, lse, ARGS)
    g = [np.empty_like(x) for x in (q, k, v)]
    with pytest.raises(scree.ArgumentError, match="^workspace is on cuda:0"):
        _C.varlen_bwd(out, q, k, v, out, lse, cu, cu, *g, ARGS, workspace=device_array((1024,), "int8"))


@needs_cpu_only_build
def test_cuda_arrays_in_a_cpu_build_are_unsupported():
    with pytest.raises(scree.UnsupportedError, match="no CUDA kernels"):
        fwd(**device_problem())
    p = device_problem()
    with pytest.raises(scree.UnsupportedError, match="no CUDA kernels"):
        _C.varlen_bwd_workspace_bytes(p["q"], p["k"], p["v"], p["cu_seqlens_q"], p["cu_seqlens_k"], ARGS)
    p = device_problem()
    with pytest.raises(scree.UnsupportedError, match="no CUDA kernels"):
        _C.varlen_bwd(p["out"], p["q"], p["k"], p["v"], device_array((T, HQ, D)), p["lse"], p["cu_seqlens_q"],
                      p["cu_seqlens_k"], device_array((T, HQ, D)), device_array((T, HK, D)),
                      device_array((T, HK, D)), ARGS)


@needs_cuda_build
@pytest.mark.parametrize("culprit", ["k", "v", "cu_seqlens_q", "cu_seqlens_k", "out", "lse"])
def test_device_call_with_an_array_on_another_gpu_names_it(culprit):
    kw = device_problem()
    other = device_problem(device_id=1)
    kw[culprit] = other[culprit]
    with pytest.raises(scree.ArgumentError, match=rf"^{culprit} is on cuda:1 but q is on cuda:0"):
        fwd(**kw)


@needs_cuda_build
def test_device_call_with_host_offsets_names_them():
    kw = device_problem()
    kw["cu_seqlens_k"] = np.array([0, 3, 7], np.int64)
    with pytest.raises(scree.ArgumentError, match="^cu_seqlens_k is on cpu but q is on cuda:0"):
        fwd(**kw)


@needs_cuda_build
@pytest.mark.parametrize("bad, error", [
    (lambda: device_array((3,), "float32"), scree.DTypeError),
    (lambda: device_array((3, 1), "int32"), scree.ShapeError),
    (lambda: device_array((3,), "int32", strides=[2]), scree.ArgumentError),
    (lambda: device_array((0,), "int32"), scree.RaggedError),
], ids=["float", "2d", "strided", "empty"])
def test_device_offsets_must_be_contiguous_int_vectors(bad, error):
    kw = device_problem()
    kw["cu_seqlens_q"] = bad()
    with pytest.raises(error, match="cu_seqlens_q"):
        fwd(**kw)


@needs_cuda_build
def test_device_workspace_size_and_check():
    if D not in _C.cuda_head_dims():
        pytest.skip(f"head dim {D} not compiled")
    def size(args):
        p = device_problem()
        return _C.varlen_bwd_workspace_bytes(p["q"], p["k"], p["v"], p["cu_seqlens_q"], p["cu_seqlens_k"], args)

    # Keys bounded past one 128-key tile: both modes accumulate dQ in float32; deterministic mode
    # adds a counter per (head, token) row (bwd_workspace.h's dq_sem, rounded to 256 bytes).
    big = {det: size(_C.AttentionArgs(4, 200, 0.125, deterministic=det)) for det in (False, True)}
    extra = -(-T * HQ * 4 // 256) * 256
    assert big[True] == big[False] + extra and big[False] > 0
    # Keys within one tile (ARGS: max_seqlen_k 4): on sm_90 the Hopper kernel writes dq itself, so
    # neither the accumulator nor the counters are in the workspace; elsewhere the sizes above.
    small = {det: size(ARGS.with_deterministic(det)) for det in (False, True)}
    accum = -(-T * HQ * D * 4 // 256) * 256
    try:
        import torch
        hopper = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
    except ImportError:
        hopper = small[False] == small[True]
    assert small == ({False: big[False] - accum, True: big[False] - accum} if hopper else big)
    p = device_problem()
    with pytest.raises(scree.ArgumentError, match="workspace holds 16 bytes"):
        _C.varlen_bwd(p["out"], p["q"], p["k"], p["v"], device_array((T, HQ, D)), p["lse"], p["cu_seqlens_q"],
                      p["cu_seqlens_k"], device_array((T, HQ, D)), device_array((T, HK, D)),
                      device_array((T, HK, D)), ARGS, workspace=device_array((16,), "int8"))


# ---- Python dispatch helpers ----------------------------------------------------------------
def test_cuda_kernel_serves(monkeypatch):
    if not _C.cuda_compiled():
        assert not attention.cuda_kernel_serves("bfloat16", 64, 64)
    monkeypatch.setattr(attention, "_CUDA_COMPILED", True)
    monkeypatch.setattr(attention, "_CUDA_HEAD_DIMS", frozenset({64, 128}))
    assert attention.cuda_kernel_serves("bfloat16", 64, 64)
    assert attention.cuda_kernel_serves("float16", 128, 128)
    assert not attention.cuda_kernel_serves("float32", 64, 64)    # float32: the reference
    assert not attention.cuda_kernel_serves("float16", 96, 96)    # head dim not compiled
    assert not attention.cuda_kernel_serves("bfloat16", 64, 32)   # D != Dv
    monkeypatch.setattr(attention, "_CUDA_COMPILED", False)
    assert not attention.cuda_kernel_serves("bfloat16", 64, 64)


def _namespaces():
    from scree import _backends
    out = []
    for name in _backends.names():
        try:
            out.append(_backends.get(name))
        except Exception:  # noqa: BLE001 - that framework is not installed here
            continue
    return out


def test_every_backend_has_glue_with_the_attention_entry_points():
    from scree import _connect
    for ns in _namespaces():
        glue = _connect.glue(ns)
        for fn in ("serves", "varlen_attention"):
            assert callable(getattr(glue, fn, None)), f"scree._connect.{ns.name} lacks {fn}"
        assert isinstance(ns.deterministic_algorithms(), bool)


def test_deterministic_reads_the_environment_at_call_time(monkeypatch):
    ns = importlib.import_module("scree._backends.numpy")
    monkeypatch.delenv("SCREE_DETERMINISTIC", raising=False)
    assert resolve_deterministic(None, ns) is False
    monkeypatch.setenv("SCREE_DETERMINISTIC", "1")
    assert resolve_deterministic(None, ns) is True
    assert resolve_deterministic(False, ns) is False  # the caller's choice wins over the rule
    monkeypatch.setenv("SCREE_DETERMINISTIC", "0")
    assert resolve_deterministic(None, ns) is False
    assert resolve_deterministic(True, ns) is True


def test_torch_glue_on_the_cpu():
    torch = pytest.importorskip("torch")
    from scree._backends import torch as tb
    from scree._connect import torch as glue
    x = torch.zeros((3, 2, 64))
    assert glue.serves(x, x) and glue.serves(x, x[..., :32])
    assert tb.stream(x) == 0
    meta = torch.zeros((3, 2, 64), device="meta")
    assert not glue.serves(meta, meta)
    was = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert resolve_deterministic(None, tb) is True
    finally:
        torch.use_deterministic_algorithms(was)


def test_max_seqlen_never_reads_device_offsets():
    """Device offsets without a cached host copy: the token count stands in for max_seqlen (reading
    the offsets would sync the GPU). torch's meta device has no data at all, so any read fails."""
    torch = pytest.importorskip("torch")
    values = torch.empty((10, 2, 8), device="meta")
    offsets = torch.empty((4,), dtype=torch.int32, device="meta")
    arr = scree.Array(values, offsets, validate=False)
    assert plan(arr).max_seqlen == 10 and plan(arr).offsets is offsets
    assert plan(scree.Array(values, offsets, validate=False, max_length=6)).max_seqlen == 6
    host = scree.from_lengths(np.zeros((10, 2, 8), np.float32), [2, 5, 3])
    assert plan(host).max_seqlen == 5


def test_jax_registrations_name_their_platform():
    keys = set(_C.registrations())
    assert all(k.rsplit("_", 1)[1] in ("cpu", "cuda") for k in keys)
    if keys and _C.cuda_compiled():
        assert {"scree_varlen_fwd_cuda", "scree_varlen_bwd_cuda"} <= keys
    if not _C.cuda_compiled():
        assert not any(k.endswith("_cuda") for k in keys)
