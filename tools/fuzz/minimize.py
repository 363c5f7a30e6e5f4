"""Minimisation: shrink a failing recipe (fewer sequences, shorter ones, smaller feature dims,
plainer dtypes, fills and layouts, fewer options) while its failure signature stays the same.
Greedy: try the candidate edits of the current best in order, keep the first that still fails the
same way and is smaller, repeat until none does or the evaluation budget is spent. Candidates run
in the runner's workers, so a crash while shrinking a crash is just another record."""

from __future__ import annotations

import copy
import json
import re
from typing import Any, Iterator

import numpy as np

from tools.fuzz.runner import Runner


def signature(rec: dict) -> tuple[str, str, str]:
    """(entry, outcome, kind): what must stay the same while shrinking, and what groups distinct
    failures in reports (the exception type, or the kind of wrong answer)."""
    outcome = rec["outcome"]
    if outcome == "wrong" and "where only a typed error is right (" in rec.get("detail", ""):
        reason = rec["detail"].split("is right (", 1)[1].rstrip(")")
        kind = "answered: " + re.sub(r"-?\d+(\.\d+)?", "#", reason)[:50]  # the rule, not its numbers
    elif outcome == "wrong":
        d = rec.get("detail", "").split(" [")[0]
        kind = next((k for k, words in (("answered", ["where only a typed error"]), ("mutated", ["modified"]),
                                        ("dtype", ["dtype"]), ("shape", ["shape"]), ("framework", ["framework"]),
                                        ("offsets", [".offsets"]), ("type", ["expected a"]),
                                        ("non-finite", ["non-finite"]), ("precision", ["precision"]),
                                        ("values", ["values differ", "max error"]))
                     if any(w in d for w in words)), d[:30])
    elif outcome in ("untyped", "typed", "crash"):
        kind = rec.get("exc", "")
        if outcome == "untyped":  # the same exception type from another place is another bug
            kind += "@" + rec.get("where", "")
    else:
        kind = ""
    return rec["entry"], outcome, kind


def size(recipe: dict) -> tuple[int, int]:
    """(elements of every values buffer, length of the recipe's JSON): smaller is simpler."""
    elems = 0
    for spec in _specs(recipe):
        elems += int(np.prod(spec["values"][2], dtype=np.int64)) if spec["values"][2] else 1
    return elems, len(json.dumps(recipe, default=str))


def _specs(node: Any) -> Iterator[dict]:
    """Every Array spec (a dict with values and layout) in a recipe."""
    if isinstance(node, dict):
        if "values" in node and "layout" in node:
            yield node
        for v in node.values():
            yield from _specs(v)


def _drop(spec: dict, i: int, n: int) -> None:
    """Remove n rows of sequence i from an Array spec (offsets after it move down)."""
    off = spec["layout"]
    if i + 1 >= len(off):
        return
    n = min(n, max(off[i + 1] - off[i], 0))
    spec["layout"] = off[:i + 1] + [o - n for o in off[i + 1:]]
    if spec["values"][2]:
        spec["values"][2][0] = max(spec["values"][2][0] - n, 0)


def candidates(recipe: dict) -> Iterator[dict]:
    """Smaller variants of `recipe`, the boldest first."""
    specs = list(_specs(recipe))
    att = recipe["entry"].startswith("varlen_attention")
    groups = [specs] if att else [[s] for s in specs]  # q, k, v shrink together
    for group in groups:
        n = max(len(s["layout"]) for s in group) - 1
        for i in range(n):  # drop a whole sequence, then the last row of one
            for mode in ("seq", "row"):
                c = copy.deepcopy(recipe)
                cs = list(_specs(c))
                for s in cs if att else [cs[specs.index(group[0])]]:
                    if mode == "seq":
                        _drop(s, i, 1 << 62)
                        if i + 1 < len(s["layout"]) and len(s["layout"]) > 1:
                            del s["layout"][i + 1]
                    else:
                        _drop(s, i, 1)
                yield c
        if att:  # the feature dims of q, k, v together
            for axis in (-1, -2):
                c = copy.deepcopy(recipe)
                for s in _specs(c):
                    shape = s["values"][2]
                    if len(shape) >= -axis + 1 and shape[axis] > 1:
                        shape[axis] = 1 if axis == -2 else max(1, shape[axis] // 2)
                yield c
    for k, spec in enumerate(specs):
        shape = spec["values"][2]
        for d in range(1, len(shape)):
            for new in ([] if shape[d] <= 1 else [1, shape[d] - 1]):
                c = copy.deepcopy(recipe)
                list(_specs(c))[k]["values"][2][d] = new
                yield c
            c = copy.deepcopy(recipe)
            del list(_specs(c))[k]["values"][2][d]
            yield c
        plain = {"fill": (3, "arange"), "seed": (4, 0), "view": (5, None)}
        for field, (pos, val) in plain.items():
            if spec["values"][pos] != val:
                c = copy.deepcopy(recipe)
                list(_specs(c))[k]["values"][pos] = val
                yield c
        for field, val in (("oform", "1d"), ("odtype", "int64"), ("ofw", spec["values"][0]), ("validate", True),
                           ("how", "from_offsets")):
            if spec.get(field) != val:
                c = copy.deepcopy(recipe)
                list(_specs(c))[k][field] = val
                yield c
        for field in ("max_length", "odd"):
            if field in spec:
                c = copy.deepcopy(recipe)
                del list(_specs(c))[k][field]
                yield c
    for key in list(recipe.get("args", {})):
        c = copy.deepcopy(recipe)
        del c["args"][key]
        yield c
    if recipe.get("dout") and recipe["dout"][0] != "randn":
        c = copy.deepcopy(recipe)
        c["dout"][0] = "randn"
        yield c


def minimize(runner: Runner, recipe: dict, target: tuple, budget: int = 60) -> tuple[dict, int]:
    """The smallest recipe found with signature `target`, and the evaluations spent."""
    best, spent = recipe, 0
    if target[1] == "hang":
        budget = min(budget, 6)  # each try of a hang costs the whole timeout
    width = 2 * len(runner.slots)
    improved = True
    while improved and spent < budget:
        improved = False
        base = size(best)
        cands = [c for c in candidates(best) if size(c) < base]
        for at in range(0, len(cands), width):
            batch = cands[at:at + width][: max(budget - spent, 0)]
            if not batch:
                break
            spent += len(batch)
            keep = {}
            for item, rec in runner.run(0, batch):
                if signature(rec) == target:
                    keep[batch.index(item)] = item
            if keep:
                best = batch[min(keep)]
                improved = True
                break
    return best, spent

