"""pytest configuration for scree's Python tests: hypothesis profiles and shared fixtures.

Hypothesis profiles (pick one with HYPOTHESIS_PROFILE=<name>; "ci" is the default):
  ci   - modest example counts so the whole layout suite stays well under a minute on 2 cores
  dev  - more examples, for local runs hunting edge cases
  deep - many examples, for a nightly job
All profiles set deadline=None: tests never assert timings, and a shared CI box's hiccups must not
turn into flaky failures.

Fixtures: `backend` (each backend importable here), `rng` (a NumPy Generator seeded per test),
`torch_one_thread` (module scope: torch intra-op threads set to 1 while a module runs, restored
after; scree's own C++ kernels use their own threads and are unaffected)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from cases import BACKENDS, stable_seed, torch

settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("dev", max_examples=200, deadline=None, print_blob=True)
settings.register_profile(
    "deep", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend available here: 'numpy' always, 'torch' when it imports."""
    return request.param


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A NumPy random Generator seeded from the test's node id (reproducible, distinct per test)."""
    return np.random.default_rng(stable_seed(request.node.nodeid))


@pytest.fixture(scope="module")
def torch_one_thread():
    """torch ops on tiny arrays (the reference kernels, test oracles) run fastest on one thread;
    on a busy 2-core machine each parallel region otherwise waits on the scheduler. scree's C++
    kernels use their own worker pool (SCREE_NUM_THREADS), which this does not touch."""
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def jax_x64():
    """JAX with 64-bit types for the test (float64 references), switched back off after it."""
    jax = pytest.importorskip("jax", reason="jax is not installed")
    jax.config.update("jax_enable_x64", True)
    try:
        yield jax
    finally:
        jax.config.update("jax_enable_x64", False)
