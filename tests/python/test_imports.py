"""`import scree` imports no framework: torch, jax, mlx and tensorflow stay out of sys.modules
after importing scree and its framework-neutral submodules, scree works on NumPy alone (even
with every framework made unimportable), and a framework imported later is picked up lazily.
Each check runs in a fresh interpreter so that this test session's own imports cannot hide a
leak."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

FRAMEWORKS = ("torch", "jax", "jaxlib", "mlx", "tensorflow")

# Makes `import torch` (etc.) fail, as on a machine where only NumPy is installed.
_BLOCKER = textwrap.dedent(f"""
    import sys
    import importlib.abc

    class _Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {FRAMEWORKS!r}:
                raise ModuleNotFoundError(f"{{name}} is blocked by test_imports", name=name)
            return None

    sys.meta_path.insert(0, _Blocker())
""")

_LOADED = f"sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r})"


def run_python(code: str) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON object as its last line."""
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tempfile.gettempdir())  # nothing on the path shadows scree
    assert proc.returncode == 0, f"subprocess failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_scree_imports_no_framework():
    out = run_python(textwrap.dedent(f"""
        import json, sys
        before = {_LOADED}
        import scree
        after_scree = {_LOADED}
        import scree.bridges
        import scree.bridges.cu_seqlens, scree.bridges.hf, scree.bridges.torch_nested
        import scree.bridges.arrow, scree.bridges.awkward, scree.bridges.datasets
        assert scree.bridges.from_arrow is not None and scree.data.TokenBudgetSampler is not None
        import scree.kernels.reference
        import scree.kernels.layout
        import scree._C
        after_all = {_LOADED}
        print(json.dumps(dict(before=before, after_scree=after_scree, after_all=after_all,
                              version=scree.__version__, file=scree.__file__)))
    """))
    assert out["before"] == []
    assert out["after_scree"] == [], f"import scree imported {out['after_scree']}"
    assert out["after_all"] == [], f"scree submodules imported {out['after_all']}"
    assert out["version"] == "0.1.0"
    assert out["file"].endswith(os.path.join("scree", "__init__.py"))


def test_scree_works_on_numpy_alone():
    """With every framework unimportable, the NumPy path does real work and gets it right."""
    out = run_python(_BLOCKER + textwrap.dedent(f"""
        import json
        import numpy as np
        import scree
        from scree import bridges

        try:
            import torch  # noqa: F401
            blocked = False
        except ModuleNotFoundError:
            blocked = True

        rng = np.random.default_rng(3)
        seqs = [rng.standard_normal((n, 4)).astype(np.float32) + 1 for n in (3, 0, 5, 2)]
        arr = scree.pack(seqs)
        padded, mask = arr.to_padded(pad_value=-9.0)
        ok_padded = all(np.array_equal(padded[i, :len(s)], s) for i, s in enumerate(seqs))
        ok_pad_value = bool((padded[~mask] == -9.0).all())
        left, lmask = arr.to_padded(padding_side="left")
        back = scree.from_padded(left, mask=lmask)
        x, m = bridges.to_hf_padded(arr)
        hf = bridges.from_hf_padded(x, m)
        cu, max_seqlen = bridges.to_cu_seqlens(arr)
        pos_arr = bridges.from_position_ids(arr.values, arr.positions())
        sums = arr.sum()
        ok_sums = all(np.allclose(sums[i], s.sum(0)) for i, s in enumerate(seqs))
        try:
            scree.from_lengths(arr.values, [1, 2])
            typed_error = None
        except scree.RaggedError as e:
            typed_error = str(e)
        print(json.dumps(dict(
            blocked=blocked,
            backend=arr.backend,
            mask=mask.tolist(),
            ok_padded=ok_padded,
            ok_pad_value=ok_pad_value,
            padded_shape=list(padded.shape),
            back_equal=bool(np.array_equal(back.values, arr.values)),
            hf_equal=bool(np.array_equal(hf.values, arr.values)),
            hf_mask_dtype=str(m.dtype),
            cu=cu.tolist(), cu_dtype=str(cu.dtype), max_seqlen=max_seqlen,
            pos_lengths=pos_arr.lengths.tolist(),
            ok_sums=ok_sums,
            typed_error=typed_error,
            loaded={_LOADED},
        )))
    """))
    assert out["blocked"], "the blocker did not stop `import torch`"
    assert out["backend"] == "numpy"
    assert out["padded_shape"] == [4, 5, 4]
    assert out["mask"] == [[True] * 3 + [False] * 2, [False] * 5, [True] * 5, [True] * 2 + [False] * 3]
    assert out["ok_padded"] and out["ok_pad_value"] and out["ok_sums"]
    assert out["back_equal"] and out["hf_equal"]
    assert out["hf_mask_dtype"] == "int64"
    assert out["cu"] == [0, 3, 3, 8, 10] and out["cu_dtype"] == "int32" and out["max_seqlen"] == 5
    assert out["pos_lengths"] == [3, 5, 2]  # the empty sequence has no position 0 to mark it
    assert out["typed_error"] and "sum(lengths) = 3" in out["typed_error"]
    assert out["loaded"] == []


def test_framework_imported_after_scree_is_picked_up():
    """Detection goes through sys.modules at call time, so torch imported after scree works."""
    out = run_python(textwrap.dedent(f"""
        import json, sys
        import scree
        before = {_LOADED}
        import torch
        arr = scree.pack([torch.arange(6.0).reshape(3, 2) + 1, torch.ones(1, 2)])
        padded, mask = arr.to_padded()
        print(json.dumps(dict(before=before, backend=arr.backend, is_tensor=isinstance(padded, torch.Tensor),
                              lengths=arr.lengths.tolist(), row0=padded[0].tolist(),
                              mask=mask.tolist())))
    """))
    assert out["before"] == []
    assert out["backend"] == "torch" and out["is_tensor"]
    assert out["lengths"] == [3, 1]
    assert out["row0"] == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert out["mask"] == [[True, True, True], [True, False, False]]
