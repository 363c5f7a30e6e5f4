"""CI smoke test of the fuzzing harness (tools/fuzz, issue 14).

What it ASSERTS (the harness itself works):
  * cases are generated deterministically: case(seed, i) is the same recipe every time, and it
    renders to runnable Python;
  * a few hundred generated cases (fixed seed) all come back through the worker processes, each
    with one of the outcome classes (ok, typed, untyped, wrong, crash, hang, or skip when the
    inputs could not be made), and none with 'harness' (a bug of the harness's own oracle);
  * deliberate failures injected through the test hook (tools/fuzz/hooks.py) are classified as
    such and never take the runner down: a segfault, an abort, a SIGFPE and a quiet exit are 'crash' (and the
    cases queued behind them in the same worker still run), a sleep past the timeout is 'hang', a
    wrong return value is 'wrong', a KeyError is 'untyped', a scree.ArgumentError is 'typed';
  * the minimiser shrinks a crashing recipe while it keeps crashing.

What it only REPORTS (printed, and attached as the 'library_outcomes' property): the library's
current outcome counts on those generated cases. scree still has known crashes and wrong answers
(issue 14) that are being fixed, so asserting "no crash / no wrong answer" on library cases would
fail for reasons this test is not about; nothing here is marked xfail.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: tools.fuzz

from tools.fuzz import generate  # noqa: E402
from tools.fuzz.minimize import minimize, signature, size  # noqa: E402
from tools.fuzz.oracle import OUTCOMES  # noqa: E402
from tools.fuzz.render import source  # noqa: E402
from tools.fuzz.runner import Runner  # noqa: E402

SEED, CASES = 20250614, 300


def hook(name: str, expect: list | None = None, **extra) -> dict:
    return {"entry": "hook", "fw": "numpy", "hook": name, "expect": expect or ["any", None], **extra}


@pytest.fixture(scope="module")
def runner():
    with Runner(workers=2, timeout=3.0, chunk=8) as r:
        yield r


def test_cases_are_reproducible_and_render():
    for i in range(200):
        a, b = generate.case(SEED, i), generate.case(SEED, i)
        assert generate.to_json(a) == generate.to_json(b)  # (NaN options: compare as text)
        compile(source(a), f"<case {i}>", "exec")
    entries = {generate.case(SEED, i)["entry"] for i in range(CASES)}
    assert len(entries) >= 20, sorted(entries)  # the draw reaches most entry points


def test_generated_cases_are_classified(runner, record_property):
    recs = dict(runner.run(SEED, list(range(CASES))))
    assert sorted(recs) == list(range(CASES))
    outcomes = Counter(r["outcome"] for r in recs.values())
    assert set(outcomes) <= set(OUTCOMES) | {"skip"}, outcomes
    assert outcomes["skip"] <= CASES // 20, outcomes
    counts = Counter((r["entry"], r["outcome"]) for r in recs.values() if r["outcome"] not in ("ok", "typed"))
    report = f"library outcomes on {CASES} cases (seed {SEED}): {dict(outcomes)}; not ok/typed: {dict(counts)}"
    print(report)
    record_property("library_outcomes", report)


def test_injected_failures_are_classified(runner):
    hooks = [
        (hook("ok", ["answer", 2]), "ok"),
        (hook("segfault"), "crash"),
        (hook("ok", ["answer", 2]), "ok"),  # behind a crash in the same chunk: still runs
        (hook("wrong", ["answer", 2]), "wrong"),
        (hook("abort"), "crash"),
        (hook("untyped"), "untyped"),
        (hook("exit_quietly"), "crash"),
        (hook("fpe"), "crash"),
        (hook("typed"), "typed"),
        (hook("hang"), "hang"),
        (hook("ok", ["answer", 2]), "ok"),
    ]
    items = [h for h, _ in hooks]
    got = {next(i for i, x in enumerate(items) if x is item): rec for item, rec in runner.run(0, items)}  # (finish order)
    assert sorted(got) == list(range(len(hooks)))  # one record for each, nobody lost
    for i, (h, want) in enumerate(hooks):
        assert got[i]["outcome"] == want, (h["hook"], got[i])
    assert [got[i]["exc"] for i in (1, 4, 6, 7)] == ["SIGSEGV", "SIGABRT", "exit 3", "SIGFPE"]
    assert runner.restarts >= 5  # four crashes and a hang, each replaced by a fresh worker


def test_minimiser_shrinks_a_crash(runner):
    spec = {"values": ["numpy", "float32", [9, 3, 2], "randn", 5, "step"], "layout": [0, 2, 4, 9],
            "how": "from_lengths", "ofw": "numpy", "odtype": "int32", "oform": "1d", "validate": True}
    recipe = hook("segfault_if_two", a=spec)
    (_, rec), = runner.run(0, [recipe])
    assert rec["outcome"] == "crash"
    small, spent = minimize(runner, recipe, signature(rec), budget=40)
    assert 0 < spent <= 40
    assert size(small) < size(recipe)
    assert len(small["a"]["layout"]) == 3  # two sequences: the least that still crashes
    (_, again), = runner.run(0, [small])
    assert signature(again) == signature(rec)
