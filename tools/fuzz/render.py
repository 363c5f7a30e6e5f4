"""Rendering: a recipe (generate.py) as the Python a user would write, in three groups of lines:
`setup` makes the raw inputs with the prelude's makers (V, O, S), `build` turns them into
scree.Arrays, `op` calls the entry point under test and binds its result to `out`. The worker
executes exactly these lines, and a saved repro is exactly these lines, so what was run and what is
reported cannot drift apart."""

from __future__ import annotations

import math
from typing import Any

from tools.fuzz.generate import NEW_OPS

_DEFAULTS = {"validate": True}


def lit(x: Any) -> str:
    """A Python literal for plain data, NaN and infinities included (repr writes them bare)."""
    if isinstance(x, float) and not math.isfinite(x):
        return f"float('{x}')"
    if isinstance(x, complex):
        return f"complex({lit(x.real)}, {lit(x.imag)})"
    if isinstance(x, (list, tuple)):
        inner = ", ".join(lit(v) for v in x)
        return f"({inner},)" if isinstance(x, tuple) and len(x) == 1 else (f"({inner})" if isinstance(x, tuple) else f"[{inner}]")
    if isinstance(x, dict):
        return "{" + ", ".join(f"{lit(k)}: {lit(v)}" for k, v in x.items()) + "}"
    return repr(x)


def call(fn: str, *args: Any, **kwargs: Any) -> str:
    """`fn(a, b, k=v)`: positional args are code strings, keyword values plain data."""
    parts = list(args) + [f"{k}={lit(v)}" for k, v in kwargs.items()]
    return f"{fn}({', '.join(parts)})"


def values_code(v: list) -> str:
    fw, dt, shape, fill, seed, view = v
    extra = "" if view is None else f", view={lit(view)}"
    return f"V({lit(fw)}, {lit(dt)}, {lit(tuple(shape))}, {lit(fill)}, {seed}{extra})"


def offsets_data(spec: dict) -> list:
    """What the builder is handed: the offsets, or their differences for from_lengths."""
    off = spec["layout"]
    if spec["how"] == "from_lengths":
        return [b - a for a, b in zip(off, off[1:])]
    return off


def array_lines(name: str, spec: dict, recipe: dict, setup: list, build: list) -> None:
    """Lines making Array `name` from its spec (values `name_x`, offsets `name_o`)."""
    setup.append(f"{name}_x = {values_code(spec['values'])}")
    how = spec["how"]
    if how == "pack":
        odd = spec.get("odd")
        setup.append(f"{name}_s = S({name}_x, {lit(spec['layout'])}{'' if odd is None else ', ' + lit(odd)})")
        build.append(f"{name} = scree.pack({name}_s)")
        return
    shared = spec.get("layout_of")
    off = f"{shared}_o" if shared and recipe[shared]["how"] == how else f"{name}_o"
    if off == f"{name}_o":
        setup.append(f"{name}_o = O({lit(spec['ofw'])}, {lit(spec['odtype'])}, {lit(offsets_data(spec))}, {lit(spec['oform'])})")
    kw: dict[str, Any] = {}
    if "max_length" in spec and how in ("Array", "from_cu_seqlens"):
        kw["max_seqlen" if how == "from_cu_seqlens" else "max_length"] = spec["max_length"]
    if not spec["validate"]:
        kw["validate"] = False
    fn = {"Array": "scree.Array", "from_offsets": "scree.from_offsets", "from_lengths": "scree.from_lengths",
          "from_cu_seqlens": "scree.from_cu_seqlens"}[how]
    build.append(f"{name} = {call(fn, f'{name}_x', off, **kw)}")


def _index_code(idx: list, fw: str) -> str:
    kind = idx[0]
    if kind in ("int", "bool"):
        return lit(idx[1])
    if kind == "slice":
        s = ["" if x is None else lit(x) for x in idx[1:]]
        return f"{s[0]}:{s[1]}:{s[2]}"
    if kind in ("list", "tuple"):
        return lit(idx[1]) if kind == "list" else ", ".join(lit(x) for x in idx[1])
    if kind == "mask":
        return f"np.array({lit(idx[1])}, dtype=bool)"
    if kind == "np_int":
        return f"np.int64({idx[1]})"
    if kind == "array0d":
        return f"O({lit(fw)}, 'int64', [{idx[1]}], '0d')"
    if kind == "fw_index":
        return f"O({lit(fw)}, 'int64', {lit(idx[1])})"
    return "None"


ATTN_ARRAYS = ("q", "k", "v")


def _attention(recipe: dict, setup: list, build: list, op: list) -> None:
    entry, fw, opts = recipe["entry"], recipe["fw"], dict(recipe["args"])
    names = ("q",) if recipe.get("self") else ATTN_ARRAYS
    for n in names:
        array_lines(n, recipe[n], recipe, setup, build)
    if entry == "varlen_attention.grad" and fw == "torch":
        # leaves that require grad (detach keeps a view's strides), made right after the values
        for n in names:
            if recipe[n]["values"][0] == "torch" and recipe[n]["values"][1].startswith(("float", "bfloat")):
                at = next(i for i, ln in enumerate(setup) if ln.startswith(f"{n}_x = V("))
                setup.insert(at + 1, f"{n}_x = {n}_x.detach().requires_grad_(True)")
    if recipe.get("self"):
        build.append("k = v = q")
    qv = recipe["q"]["values"]
    if entry != "varlen_attention":
        shape = [*qv[2][:-1], recipe["v"]["values"][2][-1]]  # the output's: q's, with v's head dim
        if recipe.get("bad_grad_input") == "dout_shape":
            shape[-1] += 1
        # jax.grad / mx.grad differentiate sum(float32(out) * dout): dout is float32 there
        dt = qv[1] if entry != "varlen_attention.grad" or fw == "torch" else "float32"
        setup.append(f"dout = {values_code([fw, dt, shape, recipe['dout'][0], recipe['dout'][1], None])}")
    kw = ", ".join(f"{k}={lit(v)}" for k, v in opts.items())
    kw = ", " + kw if kw else ""
    if entry == "varlen_attention":
        op.append(f"out = scree.varlen_attention(q, k, v{kw})")
    elif entry == "varlen_attention_backward":
        op.append(f"fwd, lse = scree.varlen_attention(q, k, v, return_lse=True{kw})")
        bad = recipe.get("bad_grad_input")
        lse, fo = {"lse_dtype": ("lse.astype(np.float64)", "fwd"), "lse_shape": ("lse.T", "fwd"),
                   "out_other": ("lse", "q")}.get(bad, ("lse", "fwd"))
        op.append(f"out = scree.varlen_attention_backward(dout, q, k, v, {fo}, {lse}{kw})")
    elif fw == "torch":
        op.append(f"res = scree.varlen_attention(q, k, v{kw})")
        op.append("res.values.backward(dout)")
        grads = ", ".join(f"{n}_x.grad" for n in ATTN_ARRAYS) if not recipe.get("self") else "q_x.grad, None, None"
        op.append(f"out = (res, {grads})")
    else:
        lib, cast = ("jax", "jnp.float32") if fw == "jax" else ("mx", "mx.float32")
        op.append(f"f = lambda a_, b_, c_: (scree.varlen_attention(q.with_values(a_), k.with_values(b_), "
                  f"v.with_values(c_){kw}).values.astype({cast}) * dout).sum()")
        op.append(f"out = {lib}.grad(f, argnums=(0, 1, 2))(q.values, k.values, v.values)")


def render(recipe: dict) -> dict[str, list[str]]:
    """{'setup': [...], 'build': [...], 'op': [...]} for one recipe."""
    entry, fw, args = recipe["entry"], recipe["fw"], recipe.get("args", {})
    setup: list[str] = []
    build: list[str] = []
    op: list[str] = []
    if entry == "hook":  # a deliberate failure the smoke test injects (hooks.py), maybe given an Array
        setup.append("from tools.fuzz import hooks")
        if "a" in recipe:
            array_lines("a", recipe["a"], recipe, setup, build)
        op.append(f"out = hooks.{recipe['hook']}({'a' if 'a' in recipe else ''})")
        return {"setup": setup, "build": build, "op": op}
    if entry.startswith("varlen_attention"):
        _attention(recipe, setup, build, op)
        return {"setup": setup, "build": build, "op": op}
    if entry == "concat_sequences":
        names = sorted(k for k in recipe if k.startswith("a") and k[1:].isdigit())
        for n in names:
            array_lines(n, recipe[n], recipe, setup, build)
        defect = args.get("defect")
        items = list(names)
        if defect == "notarray":
            items[args["at"]] += "_x"
        arg = {"single": names[0], "emptylist": "[]"}.get(defect, f"[{', '.join(items)}]")
        op.append(f"out = scree.concat_sequences({arg})")
        return {"setup": setup, "build": build, "op": op}
    if entry in ("from_padded", "bridges.from_hf_padded"):
        setup.append(f"p = {values_code(recipe['padded'])}")
        kw = []
        if "mask" in args:
            setup.append(f"m = {values_code(args['mask'])}")
            kw.append("mask=m")
        if "lengths" in args:
            lfw, ldt, lens = args["lengths"]
            setup.append(f"lens = {lit(lens) if lfw == 'list' else call('O', lit(lfw), lit(ldt), lit(lens))}")
            kw.append("lengths=lens")
        if args.get("both"):
            if "mask" not in args:
                setup.append(f"m = V({lit(fw)}, 'bool', {lit(tuple(recipe['padded'][2][:2]))}, 'randn', 1)")
                kw.append("mask=m")
            if "lengths" not in args:
                setup.append(f"lens = [0] * {recipe['padded'][2][0] if recipe['padded'][2] else 0}")
                kw.append("lengths=lens")
        if "padding_side" in args:
            kw.append(f"padding_side={lit(args['padding_side'])}")
        if entry == "from_padded":
            op.append(f"out = scree.from_padded(p{''.join(', ' + k for k in kw)})")
        else:
            op.append("out = scree.bridges.from_hf_padded(p, m)")
        return {"setup": setup, "build": build, "op": op}
    if entry == "bridges.cu_seqlens_from_lengths":
        setup.append(f"lens = {call('O', *map(lit, recipe['lengths']))}")
        op.append("out = scree.bridges.cu_seqlens_from_lengths(lens)")
        return {"setup": setup, "build": build, "op": op}
    if entry == "bridges.from_position_ids":
        pfw, pdt, pos, form = recipe["pos"]
        setup.append(f"x = {values_code(recipe['x'])}")
        if form == "2rows":
            setup.append(f"pos = O({lit(pfw)}, {lit(pdt)}, {lit(pos + pos)}).reshape(2, -1)")
        else:
            setup.append(f"pos = O({lit(pfw)}, {lit(pdt)}, {lit(pos)}, {lit(form)})")
        op.append("out = scree.bridges.from_position_ids(x, pos)")
        return {"setup": setup, "build": build, "op": op}
    if entry == "bridges.from_torch_nested":
        a = recipe["a"]
        setup.append(f"a_x = {values_code(a['values'])}")
        kind = args["layout"]
        if kind == "strided":
            setup.append(f"nt = torch.nested.nested_tensor(S(a_x, {lit(a['layout'])}))")
        elif kind == "dense":
            setup.append("nt = a_x")
        else:
            setup.append(f"a_o = O('torch', 'int64', {lit(a['layout'])})")
            holes = ", lengths=(a_o[1:] - a_o[:-1]).clamp(max=1)" if kind == "holes" else ""
            setup.append(f"nt = torch.nested.nested_tensor_from_jagged(a_x, a_o{holes})")
        op.append("out = scree.bridges.from_torch_nested(nt)")
        return {"setup": setup, "build": build, "op": op}

    array_lines("a", recipe["a"], recipe, setup, build)
    method = {"sum": "a.sum()", "mean": "a.mean()", "max": "a.max()", "lengths": "a.lengths",
              "max_length": "a.max_length", "cu_seqlens": "a.cu_seqlens()", "unpack": "scree.unpack(a)",
              "bridges.to_cu_seqlens": "scree.bridges.to_cu_seqlens(a)",
              "bridges.to_torch_nested": "scree.bridges.to_torch_nested(a)",
              **{name: f"a.{name}()" for name in NEW_OPS if name not in ("elementwise", "cat")},
              "elementwise": "a * 2 + a", "cat": "scree.cat([a, a[1:]])"}
    if entry == "bridges.to_torch_nested":  # judged by its values() and offsets()
        op.append("nt = scree.bridges.to_torch_nested(a)")
        op.append("out = (nt.values(), nt.offsets())")
        return {"setup": setup, "build": build, "op": op}
    if entry in ("Array", "from_offsets", "from_lengths", "from_cu_seqlens", "pack"):
        op.append("out = a")
    elif entry in method:
        op.append(f"out = {method[entry]}")
    elif entry in ("positions", "segment_ids"):
        op.append(f"out = {call('a.' + entry, **args)}")
    elif entry == "to_padded":
        op.append(f"out = {call('a.to_padded', **args)}")
    elif entry == "bridges.to_hf_padded":
        op.append(f"out = {call('scree.bridges.to_hf_padded', 'a', **args)}")
    elif entry == "slice_tokens":
        op.append(f"out = a[:, {args['start']!r}:{args['stop']!r}]")
    elif entry == "truncate":
        op.append(f"out = a.truncate({args['k']!r}, side={args['side']!r})")
    elif entry == "getitem":
        op.append(f"out = a[{_index_code(args['index'], fw)}]")
    elif entry == "with_values":
        setup.append(f"new = {values_code(args['new'])}")
        op.append("out = a.with_values(new)")
    elif entry == "to":
        kw = {k: v for k, v in args.items() if k != "backend"}
        op.append(f"out = {call('a.to', lit(args['backend']), **kw)}")
    else:
        raise KeyError(f"no renderer for entry {entry!r}")
    return {"setup": setup, "build": build, "op": op}


def source(recipe: dict) -> str:
    """The whole case as a runnable script (the saved repro)."""
    r = render(recipe)
    head = ["import numpy as np, scree, scree.bridges", "from tools.fuzz.prelude import V, O, S, host"]
    fws = {"torch": "import torch", "jax": "import jax, jax.numpy as jnp", "mlx": "import mlx.core as mx"}
    text = "\n".join(r["setup"] + r["build"] + r["op"])
    head += [imp for fw, imp in fws.items() if fw in text or f"'{fw}'" in text or recipe.get("fw") == fw]
    return "\n".join(head + r["setup"] + r["build"] + r["op"]) + "\n"


def one_line(recipe: dict) -> str:
    """The case's setup, build and call joined with '; ' (for tables and reports)."""
    r = render(recipe)
    return "; ".join(r["setup"] + r["build"] + r["op"])
