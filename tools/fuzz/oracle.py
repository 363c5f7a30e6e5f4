"""Outcome classification: the oracle's Expect for a recipe (oracle_layout.py,
oracle_attention.py, or a hook's own) and the verdict on what the call did:

  ok       the right answer (or any answer where the spec leaves it open)
  typed    a scree.ScreeError (the documented IndexError of arr[i] out of range counts too)
  untyped  any other Python exception
  wrong    an answer that disagrees with the oracle (values, dtype, shape, framework), an answer
           where only a typed error is right, or an input the call wrote to
  crash    the worker died (a signal, or an exit without a Python exception)   [runner.py]
  hang     the case ran past its timeout                                          [runner.py]"""

from __future__ import annotations

from typing import Any

from tools.fuzz import oracle_attention, oracle_layout
from tools.fuzz.expect import Expect, Int, mismatch

OUTCOMES = ("ok", "typed", "untyped", "wrong", "crash", "hang")


def expect(recipe: dict, snap: dict) -> Expect:
    entry = recipe["entry"]
    if entry == "hook":
        kind, value = recipe.get("expect", ["any", None])
        return Expect(kind, None if value is None else Int(value, value), "hook")
    if entry.startswith("varlen_attention"):
        return oracle_attention.expect(recipe, snap)
    return oracle_layout.expect(recipe, snap)


def _documented_untyped(exc: BaseException, exp: Expect) -> bool:
    """Python's sequence protocol needs IndexError from arr[i] (tests/python/test_bad_input.py)."""
    return isinstance(exc, IndexError) and "sequence index" in str(exc) and exp.kind != "answer"


def classify(exp: Expect, exc: BaseException | None, out: Any) -> tuple[str, str, bool]:
    """(outcome, detail, refused): refused marks a typed error on an input the oracle answers."""
    import scree

    if exc is not None:
        if isinstance(exc, scree.ScreeError) or _documented_untyped(exc, exp):
            return "typed", "", exp.kind == "answer"
        return "untyped", "", False
    if exp.kind == "raise":
        return "wrong", f"returned {type(out).__name__} where only a typed error is right ({exp.why})", False
    if exp.kind == "any":
        return "ok", "", False
    if exp.kind == "answer" and exp.value is None:
        return "ok", "", False
    bad = mismatch(exp.value, out)
    return ("wrong", f"{bad} [{exp.why}]", False) if bad else ("ok", "", False)
