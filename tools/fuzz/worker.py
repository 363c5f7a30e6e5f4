"""The child process: runs cases one after another and sends back one small record per case.
Before each case and each step of it, it writes (case position, step) into memory shared with the
runner, so that when it dies or stalls the runner knows which case, and in which call, without a
message per step."""

from __future__ import annotations

import os
import re
import resource
import time
import traceback
from typing import Any

# Small arrays run fastest single-threaded, and two workers share two cores.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "SCREE_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from tools.fuzz import generate, oracle, prelude  # noqa: E402
from tools.fuzz.oracle_layout import Snap  # noqa: E402
from tools.fuzz.render import render  # noqa: E402

STEP_SETUP, STEP_BUILD, STEP_OP = 0, 1, 2
_CALL = re.compile(r"scree\.(?:bridges\.)?(\w+)\(")


def warm() -> dict:
    """Import every framework once (the forkserver does this before forking workers)."""
    ns = prelude.modules()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    return ns


def _snap(value: Any) -> Snap:
    fw = prelude.fw_of(value)
    if fw in prelude.FRAMEWORKS and getattr(value, "is_nested", False):
        return Snap(fw, "nested", (), None)  # a torch nested tensor: the recipe describes it
    if fw in prelude.FRAMEWORKS:
        return Snap(fw, prelude.dtype_of(value), tuple(value.shape), prelude.host(value))
    return Snap(fw, type(value).__name__, (), value)


def label(recipe: dict, step: int, line: str) -> str:
    """The entry point a record is counted under: the entry, or the constructor that failed while
    building its inputs."""
    if step == STEP_BUILD:
        m = _CALL.search(line)
        if m:
            return m.group(1)
    return recipe["entry"]


def run_case(recipe: dict, shared: Any = None, base_ns: dict | None = None) -> dict:
    """Run one recipe here and classify it."""
    rec: dict[str, Any] = {"entry": recipe["entry"], "fw": recipe.get("fw"), "exc": "", "msg": "", "detail": ""}
    try:
        code = render(recipe)
    except Exception as e:
        return dict(rec, outcome="harness", detail=f"render: {type(e).__name__}: {e}")
    ns = dict(base_ns or prelude.modules())
    before = set(ns)
    if shared is not None:
        shared[1] = STEP_SETUP
    try:
        exec("\n".join(code["setup"]), ns)
    except Exception as e:  # the inputs could not be made (e.g. torch refuses such a nested tensor)
        return dict(rec, outcome="skip", detail=f"setup: {type(e).__name__}: {str(e)[:120]}")
    inputs = {k: v for k, v in ns.items() if k not in before}
    try:
        snap = {k: _snap(v) for k, v in inputs.items()}
        exp = oracle.expect(recipe, snap)
    except Exception as e:
        return dict(rec, outcome="harness", detail=f"oracle: {type(e).__name__}: {e}",
                    msg=traceback.format_exc(limit=-3)[-600:])
    exc, step, line = None, STEP_BUILD, ""
    try:
        for step, lines in ((STEP_BUILD, code["build"]), (STEP_OP, code["op"])):
            for line in lines:
                if shared is not None:
                    shared[1], shared[2] = step, (code["build"] + code["op"]).index(line)
                exec(line, ns)
    except BaseException as e:  # noqa: BLE001 - every exception is an outcome here
        if isinstance(e, KeyboardInterrupt):
            raise
        exc = e
    rec["entry"] = label(recipe, step, line) if exc is not None else recipe["entry"]
    try:
        outcome, detail, refused = oracle.classify(exp, exc, ns.get("out") if exc is None else None)
        if outcome == "ok":
            detail = _mutated(inputs, snap) or ""
            outcome = "wrong" if detail else "ok"
    except Exception as e:
        return dict(rec, outcome="harness", detail=f"compare: {type(e).__name__}: {e}",
                    msg=traceback.format_exc(limit=-3)[-600:])
    if exc is not None:
        rec["exc"] = f"{type(exc).__module__}.{type(exc).__qualname__}".replace("builtins.", "")
        rec["msg"] = (str(exc).strip().splitlines() or [""])[0][:200]
        if outcome == "untyped":
            tb = traceback.extract_tb(exc.__traceback__)
            rec["where"] = next((f"{os.path.basename(f.filename)}:{f.lineno}" for f in reversed(tb)
                                 if "scree" in f.filename), "")
    rec.update(outcome=outcome, detail=detail[:300], refused=refused, why=exp.why[:160])
    return rec


def _mutated(inputs: dict, snap: dict) -> str | None:
    """A NumPy or torch input the call wrote to (JAX and MLX arrays are immutable)."""
    import numpy as np

    for k, v in inputs.items():
        s = snap[k]
        if s.fw in ("numpy", "torch") and hasattr(s.h, "shape"):
            now = prelude.host(v)
            if now.shape == s.h.shape and not np.array_equal(now, s.h, equal_nan=now.dtype.kind in "fc"):
                return f"input {k} was modified by the call"
    return None


def main(conn: Any, shared: Any, mem_limit: int) -> None:
    """Worker loop: receive a job (seed, [(position, case index or recipe)], select), answer one
    (position, record) per case."""
    if mem_limit:
        # A huge *claimed* size must fail as an allocation, not take the machine's memory.
        resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
    base = warm()
    while True:
        job = conn.recv()
        if job is None:
            return
        seed, items, select = job
        for pos, item in items:
            shared[0], shared[1], shared[2] = pos, STEP_SETUP, 0
            try:
                recipe = item if isinstance(item, dict) else generate.case(seed, item, select)
            except Exception as e:  # a generator bug must not look like a crash of scree
                conn.send((pos, dict(entry="generate", fw=None, outcome="harness", exc="", msg="",
                                     detail=f"generate: {type(e).__name__}: {e}")))
                continue
            t0 = time.perf_counter()
            try:
                rec = run_case(recipe, shared, base)
            except MemoryError as e:
                rec = dict(entry=recipe["entry"], fw=recipe.get("fw"), outcome="untyped", exc="MemoryError",
                           msg=str(e)[:200], detail="")
            rec["ms"] = round(1000 * (time.perf_counter() - t0), 2)  # the whole case: setup, oracle, call
            conn.send((pos, rec))

