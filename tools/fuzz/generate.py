"""Case generation: `case(seed, index)` is a plain-data recipe (JSON-able dict) of one call to
scree's public API, the same on every machine and process (a case is reproducible from
(seed, index) alone). Roughly half the recipes are valid random inputs; the rest carry one or two
deliberate defects from the menus below (dtypes, strides, zero-size dims, huge or negative claimed
sizes, bad offsets with validate=False, NaN/inf, mixed frameworks, bad option values).

A recipe names its entry point and describes its inputs semantically (an Array = values +
offsets + how it was built), so that render.py can write it as Python, oracle.py can predict the
right outcome, and minimize.py can shrink it. Buffers stay tiny: sizes come from small pools;
the "huge" numbers only ever appear as claimed offsets, lengths and option values."""

from __future__ import annotations

import random
import re
from typing import Any

# JAX compiles every op for every new shape (~100 ms a case against ~1 ms elsewhere): it is drawn
# less often and from smaller size pools (below), so its per-process compile cache warms up.
FRAMEWORKS = {"numpy": 38, "torch": 34, "jax": 4, "mlx": 24}

# Element types per framework: the usual ones often, the odd ones (unsigned, bool, complex,
# NumPy's foreign bfloat16) less often. JAX without x64 narrows 64-bit types itself.
COMMON = {"float32": 6, "float64": 4, "int64": 3, "int32": 2, "float16": 2, "bfloat16": 2}
ODD = {
    "numpy": ["bool", "int8", "uint8", "int16", "uint16", "uint32", "uint64", "complex64", "complex128", "bfloat16"],
    "torch": ["bool", "int8", "uint8", "int16", "uint16", "uint32", "uint64", "complex64", "complex128"],
    "jax": ["bool", "int8", "uint8", "int16", "uint32", "complex64"],
    "mlx": ["bool", "int8", "uint8", "int16", "uint16", "uint32", "uint64", "complex64"],
}
FLOATS = {"float32": 6, "float64": 3, "float16": 1, "bfloat16": 1}
FEATURES = {(): 3, (3,): 4, (2, 3): 2, (1,): 1, (4, 1, 2): 1, (0,): 1, (3, 0): 1}
LENGTHS = {0: 2, 1: 2, 2: 2, 3: 2, 4: 1, 5: 1, 7: 1, 12: 1}
COUNTS = {0: 1, 1: 3, 2: 3, 3: 3, 4: 2, 6: 1}
SMALL = {"features": {(): 3, (3,): 3, (2, 3): 1, (0,): 1}, "lengths": {0: 1, 1: 2, 2: 2, 3: 2, 5: 1},
         "counts": {0: 1, 1: 2, 2: 3, 3: 2}}
HUGE = [2**31 - 1, 2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1, -(2**63), -(2**31)]
VIEWS = ["flip", "step", "offset", "T", "bcast", "fortran"]
FILLS = ["nan", "inf", "big", "mixed", "zeros", "arange"]
# Values a claimed size (max_length, max_seqlen) may take besides good ones.
BAD_SIZES = [-1, -5, 0, 2.0, 2.5, True, "3", None] + HUGE


class Gen:
    """random.Random plus the weighted picks the generators use."""

    def __init__(self, seed: int, index: int):
        self.r = random.Random(f"scree-fuzz:{seed}:{index}")  # str seeds hash with SHA-512: stable
        self.small = False  # draw sizes from SMALL (JAX)

    def pick(self, pool: Any) -> Any:
        if self.small:
            pool = {id(FEATURES): SMALL["features"], id(LENGTHS): SMALL["lengths"],
                    id(COUNTS): SMALL["counts"]}.get(id(pool), pool)
        if isinstance(pool, dict):
            keys = list(pool)
            return keys[self.r.choices(range(len(keys)), weights=list(pool.values()))[0]]
        return pool[self.r.randrange(len(pool))]

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def seed(self) -> int:
        return self.r.randrange(1 << 30)


# ---- inputs -------------------------------------------------------------------------------------

def dtype(g: Gen, fw: str, odd: float = 0.25) -> str:
    return g.pick(ODD[fw]) if g.chance(odd) else g.pick(COMMON)


def lengths(g: Gen) -> list[int]:
    return [g.pick(LENGTHS) for _ in range(g.pick(COUNTS))]


def offsets_of(lens: list[int]) -> list[int]:
    out = [0]
    for n in lens:
        out.append(out[-1] + n)
    return out


def values(g: Gen, fw: str, rows: int, dt: str, feature: tuple | None = None, defects: bool = True) -> list:
    """[fw, dtype, shape, fill, seed, view]: the arguments of prelude.V."""
    feature = g.pick(FEATURES) if feature is None else feature
    fill = g.pick(FILLS) if defects and g.chance(0.2) else "randn"
    view = g.pick(VIEWS) if defects and g.chance(0.2) else None
    return [fw, dt, [rows, *feature], fill, g.seed(), view]


def bad_layout(g: Gen, off: list[int]) -> list[int]:
    """Offsets broken one way: non-zero start, a decrease, a wrong end, a huge or negative entry."""
    off = list(off)
    kind = g.pick(["start", "decrease", "end", "huge", "negative", "empty", "huge_end"])
    if kind == "start":
        off[0] = g.pick([1, -1, 2**31])
    elif kind == "decrease" and len(off) >= 3:
        i = g.r.randrange(1, len(off) - 1)
        off[i] = off[i + 1] + g.pick([1, 3])
    elif kind == "end":
        off[-1] += g.pick([1, -1, 5])
    elif kind == "huge":
        off[g.r.randrange(len(off))] = g.pick(HUGE)
    elif kind == "negative":
        off[g.r.randrange(len(off))] = -g.pick([1, 2])
    elif kind == "empty":
        off = []
    else:
        off.append(g.pick(HUGE))
    return off


def array(g: Gen, fw: str, defects: bool = True, dt: str | None = None, feature: tuple | None = None,
          lens: list[int] | None = None, hows: Any = None) -> dict:
    """An Array spec: values, layout (the offsets the builder is handed, maybe broken) and builder."""
    lens = lengths(g) if lens is None else lens
    dt = dtype(g, fw, 0.25 if defects else 0.0) if dt is None else dt
    off = offsets_of(lens)
    spec: dict[str, Any] = {
        "values": values(g, fw, off[-1], dt, feature, defects),
        "layout": off,
        "how": g.pick(hows or {"from_offsets": 4, "Array": 2, "from_lengths": 3, "from_cu_seqlens": 2, "pack": 2}),
        "ofw": fw, "odtype": "int64", "oform": "1d", "validate": True,
    }
    if spec["how"] == "from_cu_seqlens":
        spec["odtype"] = "int32"
    if spec["how"] in ("Array", "from_cu_seqlens") and g.chance(0.3):
        longest = max(lens, default=0)
        spec["max_length"] = g.pick([longest, longest + 3] + (BAD_SIZES if defects else []))
    if spec["how"] == "from_offsets" and g.chance(0.15):
        spec["validate"] = False
    if not defects:
        return spec
    if g.chance(0.12):
        spec["layout"] = bad_layout(g, off)
        if spec["how"] == "pack":
            spec["how"] = "from_offsets"
        if spec["how"] == "from_offsets" and g.chance(0.6):
            spec["validate"] = False  # ops must still raise, not crash, over bad offsets
    if g.chance(0.08):
        spec["odtype"] = g.pick(["int32", "int16", "uint8", "uint64", "float32", "float64", "bool", "int8"])
    if g.chance(0.08):
        spec["oform"] = g.pick(["0d", "2d", "col", "list", "tuple", "rev", "step"])
    if g.chance(0.05):
        spec["ofw"] = g.pick([f for f in FRAMEWORKS if f != fw])
    if spec["how"] == "pack" and g.chance(0.15):
        spec["odd"] = [g.r.randrange(4), g.pick(["none", "scalar", "float16", "int32", "feature", "list",
                                                    *FRAMEWORKS])]
    if g.chance(0.03) and spec["how"] != "pack":
        spec["values"][2] = []  # 0-d values
    return spec


# ---- entry points -------------------------------------------------------------------------------

def _ctor(how: str) -> Any:
    def gen(g: Gen, fw: str, defects: bool) -> dict:
        return {"a": array(g, fw, defects, hows={how: 1})}
    return gen


def _plain(g: Gen, fw: str, defects: bool) -> dict:
    return {"a": array(g, fw, defects)}


def _index_dtype(g: Gen, defects: bool) -> dict:
    if defects and g.chance(0.3):
        return {"dtype": g.pick(["float32", "int16", "uint8", "bool", None, "int", "i8"])}
    return g.pick([{}, {"dtype": "int64"}, {"dtype": "int32"}])


def _to_padded(g: Gen, fw: str, defects: bool) -> dict:
    a = array(g, fw, defects)
    args: dict[str, Any] = {}
    if g.chance(0.5):
        args["pad_value"] = g.pick([0, 1, -3, 2.5, float("nan"), float("inf")] +
                                   ([2**70, -(2**63) - 1, True, "a", None, 1 + 2j] if defects else []))
    if g.chance(0.4):
        args["padding_side"] = g.pick(["right", "left"] + (["center", "RIGHT", None, 0] if defects else []))
    if g.chance(0.4):
        longest = max((b - a_ for a_, b in zip(a["layout"], a["layout"][1:])), default=0)
        args["max_length"] = g.pick([longest, longest + 2] + (BAD_SIZES + [longest - 1] if defects else []))
    return {"a": a, "args": args}


def _getitem(g: Gen, fw: str, defects: bool) -> dict:
    a = array(g, fw, defects)
    n = max(len(a["layout"]) - 1, 0)
    kind = g.pick(["int", "neg", "slice", "list", "mask", "np_int", "array0d", "fw_index"] +
                  (["out", "bool", "slice0", "floats", "none", "tuple", "nested", "badmask", "huge"] if defects else []))
    idx: Any = {
        "int": ["int", g.r.randrange(n) if n else 0], "neg": ["int", -g.r.randint(1, max(n, 1))],
        "out": ["int", g.pick([n, -n - 1, 2**63 - 1])], "huge": ["int", g.pick(HUGE)], "bool": ["bool", True],
        "slice": ["slice", g.pick([None, 0, 1, -1, -2 ** 40]), g.pick([None, n, -1, 2 ** 63]), g.pick([None, 1, 2, -1, -2])],
        "slice0": ["slice", None, None, 0],
        "list": ["list", [g.r.randrange(-n, n) for _ in range(g.r.randrange(4))] if n else []],
        "mask": ["mask", [g.chance(0.5) for _ in range(n)]], "badmask": ["mask", [True] * (n + 1)],
        "np_int": ["np_int", g.r.randrange(n) if n else 0], "array0d": ["array0d", g.r.randrange(n) if n else 0],
        "fw_index": ["fw_index", [g.r.randrange(n) for _ in range(2)] if n else []],
        "floats": ["list", [0.0, 1.5]], "none": ["none"], "tuple": ["tuple", [0, 0]], "nested": ["list", [[0, 0]]],
    }[kind]
    return {"a": a, "args": {"index": idx}}


def _with_values(g: Gen, fw: str, defects: bool) -> dict:
    a = array(g, fw, defects)
    rows = a["values"][2][0] if a["values"][2] else 0
    fw2, dt2 = fw, dtype(g, fw, 0.2)
    if defects and g.chance(0.2):
        rows = g.pick([rows + 1, max(rows - 1, 0), 0])
    if defects and g.chance(0.15):
        fw2 = g.pick(list(FRAMEWORKS))
        dt2 = g.pick(COMMON) if dt2 not in COMMON else dt2
    new = values(g, fw2, rows, dt2, None, defects)
    if defects and g.chance(0.03):
        new[2] = []
    return {"a": a, "args": {"new": new}}


def _to(g: Gen, fw: str, defects: bool) -> dict:
    args: dict[str, Any] = {"backend": g.pick(list(FRAMEWORKS) + ([None, "tensorflow", "NUMPY", 3] if defects else []))}
    if g.chance(0.3):
        args["device"] = g.pick(["cpu", None] + (["cuda", "cuda:0", "gpu", "meta", "tpu", 0] if defects else []))
    return {"a": array(g, fw, defects), "args": args}


def _concat(g: Gen, fw: str, defects: bool) -> dict:
    n, dt, feat = g.pick(COUNTS), dtype(g, fw, 0.2 if defects else 0), g.pick(FEATURES)
    k = g.pick({1: 1, 2: 4, 3: 2})
    arrays = [array(g, fw, defects, dt, feat, [g.pick(LENGTHS) for _ in range(n)]) for _ in range(k)]
    recipe: dict[str, Any] = {f"a{i}": s for i, s in enumerate(arrays)}
    if defects and g.chance(0.25):
        j = g.r.randrange(k)
        kind = g.pick(["n", "dtype", "feature", "fw", "notarray", "single", "emptylist"])
        s = arrays[j]
        if kind == "n":
            s["layout"] = s["layout"] + (s["layout"] or [0])[-1:]
        elif kind == "dtype":
            s["values"][1] = "float16" if dt != "float16" else "float32"
        elif kind == "feature":
            s["values"][2] = [s["values"][2][0], 5] if s["values"][2] else [0, 5]
        elif kind == "fw":
            s["values"][0] = s["ofw"] = g.pick([f for f in FRAMEWORKS if f != fw])
        recipe["args"] = {"defect": kind, "at": j}
    return recipe


def _from_padded(g: Gen, fw: str, defects: bool) -> dict:
    n, L = g.pick(COUNTS), g.pick([0, 1, 3, 5])
    feat = g.pick(FEATURES)
    padded = values(g, fw, n, dtype(g, fw, 0.2 if defects else 0), (L, *feat), defects)
    args: dict[str, Any] = {}
    mode = g.pick(["mask", "lengths", "none"])
    if mode == "mask":
        shape = [n, L] if not (defects and g.chance(0.1)) else [n, L + 1]
        args["mask"] = [fw, g.pick({"bool": 4, "int64": 2, "int32": 1, "float32": 1, "uint8": 1}), shape,
                        "randn", g.seed(), None]
        if defects and g.chance(0.08):
            args["mask"][0] = g.pick([f for f in FRAMEWORKS if f != fw])
    elif mode == "lengths":
        lens = [g.r.randint(0, L) for _ in range(n)]
        if defects and g.chance(0.25):
            lens = g.pick([lens + [1], [L + 1] * n, [-1] * n, [g.pick(HUGE)] * n, lens[:-1]])
        args["lengths"] = [g.pick([fw, "list"]), g.pick({"int64": 4, "int32": 1, "float32": int(defects)}), lens]
    if mode != "none" and defects and g.chance(0.05):
        args["both"] = True  # mask and lengths together
    if g.chance(0.3):
        args["padding_side"] = g.pick(["right", "left"] + (["up", None] if defects else []))
    if defects and g.chance(0.04):
        padded[2] = padded[2][:1]  # 1-D padded
    return {"padded": padded, "args": args}


def _hf_padded(g: Gen, fw: str, defects: bool) -> dict:
    r = _from_padded(g, fw, defects)
    mask = r["args"].get("mask") or [fw, "int64", r["padded"][2][:2], "randn", g.seed(), None]
    r["args"] = {"mask": mask}  # from_hf_padded(x, attention_mask) takes nothing else
    return r


def _lengths_only(g: Gen, fw: str, defects: bool) -> dict:
    lens = lengths(g)
    dt = "int64"
    if defects and g.chance(0.3):
        lens = g.pick([[-1] + lens, lens + [g.pick(HUGE)], [2**62, 2**62]])
    if defects and g.chance(0.15):
        dt = g.pick(["int32", "float32", "bool", "uint8"])
    return {"lengths": [fw, dt, lens, g.pick(["1d", "1d", "list"] + (["0d", "2d"] if defects else []))]}


def _position_ids(g: Gen, fw: str, defects: bool) -> dict:
    lens = [x for x in lengths(g) if x]
    pos = [p for n in lens for p in range(n)]
    total = len(pos)
    form = g.pick(["1d", "2d"])
    dt = "int64"
    if defects and g.chance(0.35):
        kind = g.pick(["start", "gap", "float", "2rows", "short", "fw"])
        if kind == "start" and pos:
            pos[0] = 1
        elif kind == "gap" and len(pos) > 2:
            pos[-1] += 2
        elif kind == "float":
            dt = "float32"
        elif kind == "2rows":
            form = "2rows"
        elif kind == "short":
            pos = pos[:-1]
        elif kind == "fw":
            fw_p = g.pick([f for f in FRAMEWORKS if f != fw])
            return {"x": values(g, fw, total, dtype(g, fw), None, defects), "pos": [fw_p, dt, pos, form]}
    return {"x": values(g, fw, total, dtype(g, fw, 0.2 if defects else 0), None, defects), "pos": [fw, dt, pos, form]}


def _torch_nested(g: Gen, fw: str, defects: bool) -> dict:
    lens = lengths(g)
    a = array(g, "torch", defects, lens=lens, hows={"from_offsets": 1})
    kind = g.pick(["jagged", "jagged", "strided"] + (["holes", "dense"] if defects else []))
    if not a["values"][2]:  # torch.nested needs (total, ...) values, not a 0-d one
        a["values"][2] = [sum(lens)]
    if kind == "strided":  # a list of tensors: its layout is whatever the pieces are
        a["layout"] = offsets_of(lens)
    return {"a": a, "args": {"layout": kind}}


def _attention(g: Gen, fw: str, defects: bool, kind: str = "forward") -> dict:
    """q, k, v Array specs (k and v share k's layout) and options."""
    own_grad = kind == "grad" and fw in ("jax", "mlx")  # jax.grad / mx.grad refuse ints before scree runs
    dt = g.pick(FLOATS) if own_grad or not (defects and g.chance(0.05)) else g.pick(["int32", "bool", "complex64"])
    n = g.pick({0: 1, 1: 4, 2: 4, 3: 2})
    lq = [g.pick({0: 1, 1: 2, 2: 2, 3: 2, 5: 2, 8: 1}) for _ in range(n)]
    same = g.chance(0.5)
    lk = lq if same else [g.pick({0: 1, 1: 2, 2: 2, 3: 2, 5: 2, 8: 1}) for _ in range(n)]
    hk = g.pick({1: 3, 2: 2})
    hq = hk * g.pick({1: 3, 2: 2})
    d = g.pick({1: 1, 4: 3, 8: 3, 16: 2, 64: 1})
    dv = d if g.chance(0.8) else g.pick([2, 8])
    single = g.chance(0.1)

    def arr(lens: list[int], h: int, dd: int) -> dict:
        spec = array(g, fw, False, dt, (dd,) if single else (h, dd), lens,
                     hows={"from_offsets": 3, "from_lengths": 2, "from_cu_seqlens": 2, "pack": 1})
        if defects and g.chance(0.15):
            spec["values"][3] = g.pick(["nan", "inf", "big", "mixed", "zeros"])
        if defects and g.chance(0.15):
            spec["values"][5] = g.pick(VIEWS)
        return spec

    q = arr(lq, hq, d)
    k = arr(lk, hk, d)
    v = arr(lk, hk, dv)
    v["layout_of"] = "k"  # v is built over k's offsets object (as users do)
    opts: dict[str, Any] = {}
    if g.chance(0.4):
        opts["causal"] = g.pick([True, False] + (["yes", 1, None] if defects else []))
    if g.chance(0.3):
        opts["scale"] = g.pick([0.5, 2.0, 0.125] + ([0.0, -1.0, 1e30, 1e-30, float("inf"), float("nan"), "a", True]
                                                    if defects else []))
    if g.chance(0.35):
        side = [None, -1, 0, 1, 2, 5] + ([2**31 - 1, 2**31, 2**63 - 1, -2, 2**64, 3.0, True] if defects else [])
        opts["window"] = [g.pick(side), g.pick(side)]
        if defects and g.chance(0.05):
            opts["window"] = g.pick([[1, 2, 3], "ab", 5, []])
    if g.chance(0.3):
        opts["softcap"] = g.pick([0.5, 5.0, 30.0, 0] + ([-1.0, float("inf"), float("nan"), 1e30, 1e-30, "x"]
                                                       if defects else []))
    if kind == "forward" and g.chance(0.5):
        opts["return_lse"] = True
    if defects and g.chance(0.05):
        opts["deterministic"] = g.pick([True, False, "yes", 2])
    recipe: dict[str, Any] = {"q": q, "k": k, "v": v, "args": opts, "self": same and hq == hk and d == dv and g.chance(0.5)}
    if defects and g.chance(0.25):
        defect = g.pick(["heads", "dim", "dtype", "count", "kv_offsets", "rank", "bad_layout", "empty_dim"] +
                        (["fw"] if kind != "grad" else []))
        recipe["self"] = False
        if defect == "heads" and not single:
            k["values"][2][1] = v["values"][2][1] = hq + 1
        elif defect == "dim":
            k["values"][2][-1] = d + 1
        elif defect == "dtype":
            k["values"][1] = "float16" if dt != "float16" else "float32"
        elif defect == "count":
            k["layout"] = v["layout"] = k["layout"] + [k["layout"][-1]]
        elif defect == "kv_offsets" and n:
            v.pop("layout_of")
            v["layout"] = offsets_of(list(reversed(lk)))
        elif defect == "fw":
            k["values"][0] = k["ofw"] = g.pick([f for f in FRAMEWORKS if f != fw])
        elif defect == "rank":
            q["values"][2] = q["values"][2] + [1]
        elif defect == "bad_layout":
            q["layout"] = bad_layout(g, q["layout"])
            q["how"], q["validate"] = "from_offsets", False
        elif defect == "empty_dim":
            for s in (q, k, v):
                s["values"][2][-1] = 0
    if kind != "forward":
        recipe["dout"] = [g.pick(["randn", "randn", "nan"]) if defects else "randn", g.seed()]
    if kind == "backward" and defects and g.chance(0.15):
        recipe["bad_grad_input"] = g.pick(["dout_shape", "lse_dtype", "lse_shape", "out_other"])
    return recipe


def _slice_tokens(g: Gen, fw: str, defects: bool) -> dict:
    bounds = [None, 0, 1, 2, -1, -3, 7] + ([2**62, -2**62, 2**63 - 1] if defects else [])
    return {"a": array(g, fw, defects), "args": {"start": g.pick(bounds), "stop": g.pick(bounds)}}


def _truncate(g: Gen, fw: str, defects: bool) -> dict:
    k = g.pick([0, 1, 3, 2**62] + ([-1, 2**63] if defects else []))
    return {"a": array(g, fw, defects), "args": {"k": k, "side": g.pick(["right", "left"] + (["up"] if defects else []))}}


# Entry points added with issue 15 whose values the unit tests check against the reference
# (tests/python/test_per_sequence_ops.py, test_elementwise.py, test_token_ops.py): the harness
# judges them for crashes, hangs and untyped errors only (oracle_layout.ANY_ANSWER).
NEW_OPS = ("min", "prod", "any", "all", "argmax", "argmin", "logsumexp", "var", "std", "softmax", "log_softmax",
           "cumsum", "elementwise", "cat")

# entry name -> (weight, frameworks it runs on (None: any), generator(g, fw, defects) -> recipe fields)
ENTRIES: dict[str, tuple[int, Any, Any]] = {
    "Array": (3, None, _ctor("Array")),
    "from_offsets": (3, None, _ctor("from_offsets")),
    "from_lengths": (3, None, _ctor("from_lengths")),
    "from_cu_seqlens": (3, None, _ctor("from_cu_seqlens")),
    "pack": (3, None, _ctor("pack")),
    "from_padded": (3, None, _from_padded),
    "unpack": (2, None, _plain),
    "concat_sequences": (3, None, _concat),
    "sum": (3, None, _plain), "mean": (3, None, _plain), "max": (3, None, _plain),
    "positions": (2, None, lambda g, fw, d: {"a": array(g, fw, d), "args": _index_dtype(g, d)}),
    "segment_ids": (2, None, lambda g, fw, d: {"a": array(g, fw, d), "args": _index_dtype(g, d)}),
    "lengths": (1, None, _plain), "max_length": (1, None, _plain), "cu_seqlens": (1, None, _plain),
    "to_padded": (4, None, _to_padded),
    "getitem": (4, None, _getitem),
    "with_values": (2, None, _with_values),
    "to": (3, None, _to),
    "bridges.to_cu_seqlens": (1, None, _plain),
    "bridges.cu_seqlens_from_lengths": (1, None, _lengths_only),
    "bridges.from_position_ids": (2, None, _position_ids),
    "bridges.from_hf_padded": (1, None, _hf_padded),
    "bridges.to_hf_padded": (1, None, _to_padded),
    "bridges.to_torch_nested": (1, ["numpy", "torch"], _plain),
    "bridges.from_torch_nested": (1, ["torch"], _torch_nested),
    **{name: (1, None, _plain) for name in NEW_OPS},
    "slice_tokens": (2, None, _slice_tokens),
    "truncate": (1, None, _truncate),
    "varlen_attention": (12, None, lambda g, fw, d: _attention(g, fw, d, "forward")),
    "varlen_attention.grad": (5, ["torch", "jax", "mlx"], lambda g, fw, d: _attention(g, fw, d, "grad")),
    "varlen_attention_backward": (4, ["numpy"], lambda g, fw, d: _attention(g, fw, d, "backward")),
}


def case(seed: int, index: int, select: dict | None = None) -> dict:
    """The recipe of case `index` of run `seed`. `select` = {"only": a regex on entry names,
    "frameworks": [names]} restricts the draw (which stays a function of (seed, index, select))."""
    g = Gen(seed, index)
    only = re.compile(select["only"]) if select and select.get("only") else None
    allowed = (select or {}).get("frameworks") or list(FRAMEWORKS)
    names = [e for e in ENTRIES if (only is None or only.search(e))
             and (ENTRIES[e][1] is None or set(ENTRIES[e][1]) & set(allowed))]
    if not names:
        raise ValueError(f"no entry point matches {select}")
    entry = g.pick({e: ENTRIES[e][0] for e in names})
    _, fws, make = ENTRIES[entry]
    fw = g.pick({f: w for f, w in FRAMEWORKS.items() if (fws is None or f in fws) and f in allowed})
    g.small = fw == "jax"
    defects = g.chance(0.5)
    recipe = {"entry": entry, "fw": fw, "defects": defects}
    recipe.update(make(g, fw, defects))
    return recipe


# ---- recipes as JSON (saved repros) --------------------------------------------------------------

def to_json(recipe: dict) -> str:
    """JSON of a recipe (complex option values as {"complex": [re, im]}; NaN/inf as JSON's NaN)."""
    import json

    return json.dumps(recipe, default=lambda o: {"complex": [o.real, o.imag]} if isinstance(o, complex) else str(o))


def from_json(text: str) -> dict:
    import json

    return json.loads(text, object_hook=lambda d: complex(*d["complex"]) if set(d) == {"complex"} else d)
