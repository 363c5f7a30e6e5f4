"""No device synchronisation by default, and what stands in for it:

* Arrays over offsets on a device are checked on the device (scree._layout): the verdict arrives
  later and a bad layout raises the typed error at the next scree call (RaggedError, or
  ArgumentError for a max_seqlen below the longest sequence); the same check delivers the exact
  max_length. On the CPU the mechanism runs by treating host tensors as device memory (the
  backend's host_readable says False): offsets_summary (with its readback) and the verdict are the
  real code, only the copy has nothing to wait for. JAX's asynchronous copy runs for real, and on a
  GPU torch's one-kernel check (scree._C.offsets_summary_cuda).
* jax.jit forward and backward make no implicit transfer (jax.transfer_guard("disallow")).
* On a GPU (marked cuda): torch.cuda.set_sync_debug_mode("error") around construction (default
  validation), forward and backward; bad device offsets raise at the next call after the device
  check ran; forward and backward captured in a CUDA graph replay correctly with new values in the
  same buffers."""

from __future__ import annotations

import gc
import os
import time
import weakref

import numpy as np
import pytest

import scree
from scree import _backends
from scree._layout import poll
from scree.kernels.reference import varlen_attention as reference

torch = pytest.importorskip("torch", reason="torch is not installed")


@pytest.fixture
def device_offsets(monkeypatch):
    """torch CPU tensors taken as device memory: construction goes through the device check."""
    ns = _backends.get("torch")
    monkeypatch.setattr(ns, "host_readable", lambda x: False)
    poll()  # nothing from an earlier test in flight
    yield ns


def _values(total: int) -> "torch.Tensor":
    return torch.randn(total, 2, 8)


def test_device_offsets_are_checked_later_and_give_max_length(device_offsets):
    arr = scree.from_cu_seqlens(_values(9), torch.tensor([0, 2, 2, 9], dtype=torch.int32))
    lay = arr._layout
    assert lay.host is None and lay.max_length is None and lay.check is not None  # nothing read yet
    poll()
    assert lay.check is None and lay.max_length == 7 and lay.host is None  # the summary, not the offsets
    assert arr.max_length == 7


@pytest.mark.parametrize("offsets, match", [([1, 2, 9], "offsets\\[0\\] must be 0"),
                                            ([0, 5, 3, 9], "non-decreasing"),
                                            ([0, 2, 8], "must equal values.shape\\[0\\] = 9")],
                         ids=["first", "decreasing", "last"])
def test_bad_device_offsets_raise_at_the_next_call(device_offsets, offsets, match):
    bad = scree.Array(_values(9), torch.tensor(offsets))  # no error yet: nothing was read
    with pytest.raises(scree.RaggedError, match=match):
        scree.from_lengths(_values(3), [3])  # the next scree call learns of it
    poll()  # reported once
    assert bad._layout.check is None


def test_max_seqlen_below_the_longest_raises_later(device_offsets):
    scree.from_cu_seqlens(_values(9), torch.tensor([0, 2, 9], dtype=torch.int32), max_seqlen=4)
    with pytest.raises(scree.ArgumentError, match="max_seqlen=4 is smaller than the longest sequence \\(7\\)"):
        poll()
    ok = scree.from_cu_seqlens(_values(9), torch.tensor([0, 2, 9], dtype=torch.int32), max_seqlen=100)
    poll()
    assert ok.max_length == 100  # an upper bound is kept, as FlashAttention takes it


def test_reading_host_offsets_settles_the_check_at_once(device_offsets):
    bad = scree.Array(_values(9), torch.tensor([0, 5, 3, 9]))
    with pytest.raises(scree.RaggedError):
        bad.host_offsets  # the documented synchronisation checks on the host
    poll()  # and the device check is no longer in flight


def test_attention_polls_and_plans_with_the_exact_max(device_offsets):
    """A call while a check is in flight learns of it first (the poll at its start), and the plan
    of the layout uses the exact maximum the check delivered."""
    from scree.kernels.attention import plan
    cu = torch.tensor([0, 3, 3, 10], dtype=torch.int32)
    q = scree.from_cu_seqlens(_values(10), cu)
    k = scree.from_cu_seqlens(_values(10), cu.clone())
    v = k.with_values(_values(10))
    assert q._layout.max_length == 7 and k._layout.max_length is None  # building k settled q's check
    out = scree.varlen_attention(q, k, v, causal=True)
    assert k._layout.check is None and plan(k).max_seqlen == 7
    host = [scree.from_offsets(a.values, cu.long()) for a in (q, k, v)]
    torch.testing.assert_close(out.values, reference(*host, causal=True).values, rtol=1e-4, atol=1e-5)


def test_arrays_over_one_offsets_tensor_share_one_layout(device_offsets):
    """q, k and v (or every layer) built from the same cu_seqlens tensor: one Layout, one check,
    one plan; written in place, the tensor gets a new Layout (torch counts the writes)."""
    cu = torch.tensor([0, 3, 3, 10], dtype=torch.int32)
    q, k, v = (scree.from_cu_seqlens(_values(10), cu) for _ in range(3))
    assert q._layout is k._layout is v._layout
    assert len([c for c in scree._layout._PENDING if c.layout() is q._layout]) == 1
    assert scree.from_cu_seqlens(_values(10), cu, max_seqlen=8)._layout is not q._layout  # another claim
    cu[2] = 4  # lengths 3, 1, 6
    moved = scree.from_cu_seqlens(_values(10), cu)
    assert moved._layout is not q._layout and moved.max_length == 6


def test_a_kept_layout_still_checks_what_the_new_values_bring(device_offsets):
    """The later Arrays over a kept Layout skip the offsets' checks, not the values' or the
    arguments': each wrong one raises what the full path raises, and other row counts or bounds get
    a Layout of their own."""
    cu = torch.tensor([0, 3, 3, 10], dtype=torch.int32)
    q = scree.from_cu_seqlens(_values(10), cu, max_seqlen=7)
    assert scree.from_cu_seqlens(_values(10), cu, max_seqlen=7)._layout is q._layout
    assert scree.Array(_values(10), cu, max_length=7)._layout is q._layout
    with pytest.raises(scree.DTypeError, match="values"):
        scree.from_cu_seqlens(torch.zeros(10, 2, dtype=torch.float8_e4m3fn), cu, max_seqlen=7)
    with pytest.raises(scree.ShapeError, match="0-D"):
        scree.from_cu_seqlens(torch.tensor(1.0), cu, max_seqlen=7)
    for bad in (7.0, True, np.int64(7)):
        if isinstance(bad, np.integer):  # a NumPy int is a valid bound: the full path takes it
            assert scree.from_cu_seqlens(_values(10), cu, max_seqlen=bad).max_length == 7
            continue
        with pytest.raises(scree.ArgumentError, match="max_seqlen"):
            scree.from_cu_seqlens(_values(10), cu, max_seqlen=bad)
    assert scree.from_cu_seqlens(_values(11), cu, max_seqlen=7)._layout is not q._layout
    with pytest.raises(scree.RaggedError, match="must equal values.shape"):
        poll()  # that Layout's own check: offsets[-1] = 10 against 11 rows
    assert scree.from_cu_seqlens(_values(10), cu.clone(), max_seqlen=7)._layout is not q._layout
    with pytest.raises(scree.BackendError):
        scree.from_cu_seqlens(np.zeros((10, 2)), cu, max_seqlen=7)


def test_a_layout_outlives_the_arrays_of_one_call(device_offsets):
    """FlashAttention-style code builds its Arrays from cu_seqlens in every layer and drops them after
    the call: the next layer still finds the Layout (one device check a batch, not one a layer),
    until newer Layouts have pushed it out."""
    cu = torch.tensor([0, 3, 3, 10], dtype=torch.int32)
    first = weakref.ref(scree.from_cu_seqlens(_values(10), cu)._layout)  # the Arrays dropped at once
    checks = len(scree._layout._PENDING)
    assert scree.from_cu_seqlens(_values(10), cu)._layout is first()
    assert len(scree._layout._PENDING) == checks  # no second check
    for _ in range(scree._layout._RECENT.maxlen):  # as many later batches, each over its own cu_seqlens
        scree.from_cu_seqlens(_values(10), cu.clone())
    poll()
    gc.collect()
    assert first() is None


@pytest.mark.parametrize("cu, max_seqlen, error", [([0, 5, 3, 9], None, scree.RaggedError),
                                                   ([0, 2, 9], 4, scree.ArgumentError)])
def test_a_failed_check_raises_again_for_every_later_array(device_offsets, cu, max_seqlen, error):
    """A Layout whose check failed is not kept: FlashAttention-style code that builds its Arrays
    from the same bad offsets again gets the typed error again, not a Layout taken as checked."""
    cu = torch.tensor(cu, dtype=torch.int32)
    for _ in range(3):
        scree.from_cu_seqlens(_values(9), cu, max_seqlen=max_seqlen)  # dropped at once
        with pytest.raises(error):
            poll()


def test_a_failed_check_drops_even_a_layout_that_is_not_held(device_offsets):
    """Over a view (not held) whose check failed, a new Array still alive beside the first gets a
    check of its own, and the error again."""
    cu = torch.tensor([0, 5, 3, 9, 9], dtype=torch.int32)[:4]
    first = scree.from_cu_seqlens(_values(9), cu)
    with pytest.raises(scree.RaggedError):
        poll()
    assert scree.from_cu_seqlens(_values(9), cu)._layout is not first._layout
    with pytest.raises(scree.RaggedError):
        poll()


def test_offsets_made_in_inference_mode_build_arrays(device_offsets):
    """Inference tensors keep no write counter: their Layouts are not cached (asking for the
    counter raised RuntimeError before)."""
    with torch.inference_mode():
        cu = torch.tensor([0, 3, 10], dtype=torch.int32)
        values = _values(10)
    a = scree.from_cu_seqlens(values, cu, max_seqlen=7)
    b = scree.from_cu_seqlens(values, cu, max_seqlen=7)
    assert a._layout is not b._layout and a.max_length == 7
    poll()


def test_layouts_over_views_are_not_held(device_offsets):
    """A view made anew for each call (cu[: n + 1]) is never found again: its Layout is not held
    (it would keep the view's base alive)."""
    base = torch.tensor([0, 3, 10, 10, 10], dtype=torch.int32)
    layout = weakref.ref(scree.from_cu_seqlens(_values(10), base[:3])._layout)
    poll()
    gc.collect()
    assert layout() is None


def test_jax_device_check_with_its_asynchronous_copy(monkeypatch):
    jax = pytest.importorskip("jax", reason="jax is not installed")
    jnp = jax.numpy
    ns = _backends.get("jax")
    monkeypatch.setattr(ns, "host_readable", lambda x: False)
    poll()
    good = scree.Array(jnp.zeros((5, 2)), jnp.asarray([0, 1, 5], dtype=jnp.int32))
    scree.Array(jnp.zeros((5, 2)), jnp.asarray([0, 3, 1, 5], dtype=jnp.int32))
    with pytest.raises(scree.RaggedError, match="non-decreasing"):
        for _ in range(5000):  # JAX dispatches asynchronously: poll until both copies have landed
            poll()
            time.sleep(1e-3)
    assert good._layout.check is None and good.max_length == 4


def test_jax_jit_forward_and_backward_make_no_transfer():
    jax = pytest.importorskip("jax", reason="jax is not installed")
    jnp = jax.numpy
    rng = np.random.default_rng(0)
    lens = [3, 0, 6]
    q, k, v = (scree.from_lengths(jnp.asarray(rng.standard_normal((9, 2, 16)), jnp.float32), lens)
               for _ in range(3))

    @jax.jit
    def loss(qv, kv, vv):
        out = scree.varlen_attention(q.with_values(qv), k.with_values(kv), v.with_values(vv), causal=True)
        return jnp.sum(out.values ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    args = (q.values, k.values, v.values)
    want = loss(*args), grad(*args)  # compiled (and any constant placed) outside the guard
    with jax.transfer_guard("disallow"):
        got = loss(*args), grad(*args)
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=1e-6)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6)


# ---- on a GPU --------------------------------------------------------------------------------------
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")


def _cuda_kernel_dims() -> list[int]:
    dims = scree._C.cuda_head_dims()
    if not dims:
        pytest.skip("this build has no CUDA attention kernels")
    return dims


class _sync_errors:
    """torch.cuda.set_sync_debug_mode("error") while inside: any synchronising CUDA call raises."""

    def __enter__(self):
        self.old = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode(self.old)
        return False


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("build", ["from_cu_seqlens", "from_cu_seqlens max_seqlen", "from_offsets", "from_lengths"])
def test_cuda_construction_forward_backward_without_sync(build):
    d = _cuda_kernel_dims()[-1]
    lens = [33, 0, 130, 7]
    cu_host = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    dev = "cuda"
    cu = torch.from_numpy(cu_host).to(dev)  # on the device before the checked region, as a loader leaves it
    values = [torch.randn(int(cu_host[-1]), 4, d, device=dev, dtype=torch.bfloat16) for _ in range(3)]
    leaves = [x.clone().requires_grad_(True) for x in values]
    dout = torch.randn_like(values[0])
    torch.cuda.synchronize()

    def arrays():
        if build == "from_cu_seqlens":
            return [scree.from_cu_seqlens(x, cu) for x in leaves]
        if build == "from_cu_seqlens max_seqlen":
            return [scree.from_cu_seqlens(x, cu, max_seqlen=max(lens)) for x in leaves]
        if build == "from_offsets":
            return [scree.from_offsets(x, cu.long()) for x in leaves]
        return [scree.from_lengths(x, lens) for x in leaves]

    warm = scree.varlen_attention(*arrays(), causal=True)  # module loading and first-call set-up outside
    torch.autograd.grad(warm.values, leaves, dout)
    torch.cuda.synchronize()
    with _sync_errors():
        q, k, v = arrays()
        out = scree.varlen_attention(q, k, v.with_values(leaves[2]), causal=True)
        grads = torch.autograd.grad(out.values, leaves, dout)
    torch.cuda.synchronize()
    poll()  # the device checks of these valid offsets raise nothing
    host = [scree.from_lengths(x.detach().float().cpu(), lens) for x in values]
    ref = reference(*host, causal=True).values
    assert (out.values.float().cpu() - ref).abs().max() < 3e-2
    assert all(g.shape == x.shape and torch.isfinite(g).all() for g, x in zip(grads, leaves))


@pytest.mark.cuda
@needs_gpu
def test_cuda_bad_offsets_raise_at_the_next_call_after_the_check():
    poll()
    values = torch.randn(9, 2, 64, device="cuda", dtype=torch.bfloat16)
    # made before the guard: a tensor from a Python list is a host-to-device copy, which syncs
    bad = torch.tensor([0, 5, 3, 9], dtype=torch.int32, device="cuda")
    with _sync_errors():
        scree.from_cu_seqlens(values, bad)
    torch.cuda.synchronize()  # the check has certainly run now
    with pytest.raises(scree.RaggedError, match="non-decreasing"):
        scree.from_lengths(values, [9])


@pytest.mark.cuda
@needs_gpu
def test_cuda_graph_capture_and_replay_forward_backward():
    d = _cuda_kernel_dims()[-1]
    lens = [100, 1, 0, 37, 64]
    total = sum(lens)
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(int.from_bytes(os.urandom(4), "little"))

    def fresh():
        return torch.randn(total, 8, d, device=dev, dtype=torch.bfloat16, generator=gen)

    static = [fresh().requires_grad_(True) for _ in range(3)]
    dout = fresh()
    arrays = [scree.from_lengths(x, lens) for x in static]  # host bookkeeping: nothing to check on the device

    def step():
        out = scree.varlen_attention(*arrays, causal=True)
        return (out.values,) + torch.autograd.grad(out.values, static, dout)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs asks
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for _ in range(2):  # new values in the same buffers, then replay
        with torch.no_grad():
            for x in static:
                x.copy_(fresh())
            dout.copy_(fresh())
        graph.replay()
        torch.cuda.synchronize()
        want = step()
        for name, got, ref in zip(("out", "dq", "dk", "dv"), captured, want):
            assert torch.isfinite(got).all(), name
            torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2, msg=lambda m: f"{name}: {m}")


@pytest.mark.cuda
@needs_gpu
def test_jax_gpu_jit_makes_no_transfer():
    jax = pytest.importorskip("jax", reason="jax is not installed")
    try:
        gpu = jax.devices("gpu")[0]
    except RuntimeError:
        pytest.skip("JAX sees no GPU")
    jnp = jax.numpy
    d = _cuda_kernel_dims()[-1]
    lens = [17, 0, 64]
    rng = np.random.default_rng(1)
    q, k, v = (scree.from_lengths(jax.device_put(jnp.asarray(rng.standard_normal((81, 4, d)), jnp.bfloat16), gpu),
                                  lens) for _ in range(3))

    def loss(qv, kv, vv):
        out = scree.varlen_attention(q.with_values(qv), k.with_values(kv), v.with_values(vv), causal=True)
        return jnp.sum(out.values.astype(jnp.float32) ** 2)

    fwd, grad = jax.jit(loss), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    args = (q.values, k.values, v.values)
    jax.block_until_ready((fwd(*args), grad(*args)))
    with jax.transfer_guard("disallow"):
        jax.block_until_ready((fwd(*args), grad(*args)))
