"""Every installed backend namespace meets the written contract, scree._backends.protocol.Backend:
each name is there, and each function the backend module defines takes the Protocol's parameters
(names, kinds and defaults) so that code above the backends can call any of them the same way.
Framework functions bound directly (np.exp, torch.einsum, jnp.where, ...) need only be callable. The
Readback objects they hand out poll without blocking."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest

from scree import _backends
from scree._backends.protocol import Backend, Readback

MEMBERS = sorted(n for n in dir(Backend) if not n.startswith("_"))
ATTRIBUTES = set(Backend.__annotations__)  # name, Array


def _installed() -> list:
    out = []
    for name in _backends.names():
        try:
            out.append(pytest.param(name, id=name))
            importlib.import_module({"mlx": "mlx.core"}.get(name, name))
        except ImportError as e:
            out[-1] = pytest.param(name, id=name, marks=pytest.mark.skip(reason=f"{name} is not installed: {e}"))
    return out


def _params(fn) -> list[tuple[str, object, object]]:
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default) for p in sig.parameters.values() if p.name != "self"]


@pytest.mark.parametrize("name", _installed())
def test_backend_meets_the_protocol(name):
    ns = _backends.get(name)
    assert isinstance(ns, Backend), f"{name} is missing members of Backend"
    assert ns.name == name and isinstance(ns.Array, type)
    for member in MEMBERS + sorted(ATTRIBUTES):
        assert hasattr(ns, member), f"scree._backends.{name} lacks {member}"
    for member in MEMBERS:
        impl = getattr(ns, member)
        assert callable(impl), f"scree._backends.{name}.{member} is not callable"
        if inspect.isfunction(impl) and impl.__module__ == ns.__name__:  # scree's own: the Protocol's parameters
            assert _params(impl) == _params(getattr(Backend, member)), (
                f"scree._backends.{name}.{member}{inspect.signature(impl)} does not match the Protocol's "
                f"{inspect.signature(getattr(Backend, member))}")


@pytest.mark.parametrize("name", _installed())
def test_offsets_summary_and_readback(name):
    """The four numbers the device check of a layout reads, already on their way to the host
    (offsets_summary is a Readback), for int32 and int64 offsets; and readback of any array."""
    ns = _backends.get(name)
    for host, want in (([0, 3, 3, 7], [0, 7, 0, 4]), ([5], [5, 5, 0, 0]), ([0, 4, 2, 9], [0, 9, -2, 7])):
        for dtype in (np.int64, np.int32):
            off = ns.from_numpy(np.array(host, dtype=dtype))
            rb = ns.offsets_summary(off)
            assert isinstance(rb, Readback)
            assert isinstance(rb.ready(), bool)
            assert np.asarray(rb.value()).astype(np.int64).tolist() == want
            assert rb.ready()  # once the value has been read, it has landed
    rb = ns.readback(ns.from_numpy(np.array([4, -1, 7], dtype=np.int64)))
    assert isinstance(rb, Readback) and isinstance(rb.ready(), bool)
    assert np.asarray(rb.value()).astype(np.int64).tolist() == [4, -1, 7] and rb.ready()
