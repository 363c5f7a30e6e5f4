"""The runner: feeds cases to worker child processes and turns what happens to them into records.
A worker runs a chunk of cases and answers one record per case. When a worker dies, the case it was
on is recorded as a crash (its signal or exit code) and a fresh worker takes the rest of the chunk;
when a case makes no progress for `timeout` seconds, the worker is killed and the case recorded as
a hang. Workers come from a forkserver that imported the frameworks once, so replacing one costs
milliseconds instead of the ~3.5 s of a fresh interpreter importing torch and JAX ('spawn' remains
available)."""

from __future__ import annotations

import multiprocessing as mp
import os
import multiprocessing.connection
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from tools.fuzz import generate, worker
from tools.fuzz.render import render

PRELOAD = ["numpy", "ml_dtypes", "torch", "jax", "jax.numpy", "mlx.core", "scree", "scree.bridges",
           "scree.kernels.reference", "tools.fuzz.worker"]


@dataclass
class _Slot:
    proc: Any = None
    conn: Any = None
    shared: Any = None
    chunk: list = field(default_factory=list)  # [(position, item)] not yet answered
    last: float = 0.0                          # when it last made progress


class Runner:
    """A pool of `workers` child processes running cases with a per-case `timeout` (seconds) and
    an address-space limit of `mem_limit` bytes each (0: none)."""

    def __init__(self, workers: int = 2, timeout: float = 20.0, mem_limit: int = 8 << 30,
                 start_method: str = "forkserver", chunk: int = 32, jax_cache: str | None = None):
        if jax_cache:
            # JAX compiles every op for every new shape; a compile cache on disk shared by the
            # workers (and by replacements of crashed ones) cuts a JAX case from ~200 to ~70 ms.
            os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(jax_cache)
            os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
            os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
        self.ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            self.ctx.set_forkserver_preload(PRELOAD)
        self.timeout, self.mem_limit, self.chunk = timeout, mem_limit, chunk
        self.slots = [_Slot() for _ in range(workers)]
        self.restarts = 0

    def _start(self, slot: _Slot) -> None:
        parent, child = self.ctx.Pipe()
        slot.shared = self.ctx.Array("q", 3, lock=False)  # (position, step, line) of the case running
        slot.proc = self.ctx.Process(target=worker.main, args=(child, slot.shared, self.mem_limit), daemon=True)
        slot.proc.start()
        child.close()
        slot.conn = parent

    def _stop(self, slot: _Slot, kill: bool) -> int | None:
        if slot.proc is None:
            return None
        if kill and slot.proc.is_alive():
            slot.proc.kill()
        slot.proc.join(5)
        code = slot.proc.exitcode
        slot.conn.close()
        slot.proc = slot.conn = None
        self.restarts += 1
        return code

    def close(self) -> None:
        for s in self.slots:
            if s.proc is not None:
                try:
                    s.conn.send(None)
                except OSError:
                    pass
                s.proc.join(2)
                if s.proc.is_alive():
                    s.proc.kill()
                s.proc = None

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def run(self, seed: int, items: list, select: dict | None = None) -> Iterator[tuple[Any, dict]]:
        """Yield (item, record) for every item (a case index of run `seed` drawn with `select`, see
        generate.case, or a recipe), in the order they finish."""
        todo = list(enumerate(items))
        queue = [todo[i:i + self.chunk] for i in range(0, len(todo), self.chunk)]
        queue.reverse()

        def assign(slot: _Slot, chunk: list) -> None:
            if slot.proc is None:
                self._start(slot)
            slot.chunk = list(chunk)
            slot.last = time.monotonic()
            slot.conn.send((seed, chunk, select))

        def lost(slot: _Slot, outcome: str) -> tuple[Any, dict]:
            """The case `slot` was on, as a crash or hang record; the rest of its chunk re-queued."""
            pos, item = slot.chunk[0]
            step, line = int(slot.shared[1]), int(slot.shared[2])
            code = self._stop(slot, kill=True)
            rest, slot.chunk = slot.chunk[1:], []
            if rest:
                queue.append(rest)
            recipe = item if isinstance(item, dict) else generate.case(seed, item, select)
            rec = {"entry": recipe["entry"], "fw": recipe.get("fw"), "outcome": outcome, "exc": "", "msg": "",
                   "detail": ""}
            try:
                r = render(recipe)
                calls = r["build"] + r["op"]
                rec["entry"] = worker.label(recipe, step, calls[line] if line < len(calls) else "")
            except Exception:
                pass
            if outcome == "crash":
                rec["exc"] = _describe(code)
                rec["msg"] = f"worker died: {rec['exc']}"
            else:
                rec["msg"] = f"no answer after {self.timeout:g} s"
            return item, rec

        while queue or any(s.chunk for s in self.slots):
            for s in self.slots:
                if not s.chunk and queue:
                    assign(s, queue.pop())
            busy = [s for s in self.slots if s.chunk]
            waits = {s.conn: s for s in busy}
            waits.update({s.proc.sentinel: s for s in busy})
            deadline = min(s.last for s in busy) + self.timeout
            ready = mp.connection.wait(list(waits), timeout=max(0.0, deadline - time.monotonic()) + 0.05)
            seen = set()
            for r in ready:
                s = waits[r]
                if id(s) in seen or not s.chunk:
                    continue
                seen.add(id(s))
                died = False
                try:
                    while s.chunk and s.conn.poll():  # drain: a worker may have answered before dying
                        pos, rec = s.conn.recv()
                        item = s.chunk.pop(0)[1]
                        s.last = time.monotonic()
                        yield item, rec
                except (EOFError, OSError):
                    died = True
                if s.chunk and (died or not s.proc.is_alive()):
                    yield lost(s, "crash")
            now = time.monotonic()
            for s in self.slots:
                if s.chunk and now - s.last > self.timeout:
                    yield lost(s, "hang")


def _describe(code: int | None) -> str:
    if code is None:
        return "unknown exit"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"
