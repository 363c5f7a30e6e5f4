"""scree's Python layers only look down, and nothing imports in a circle: every `scree.*` import of
every module under python/scree (read from the source, function-level imports included) must go
to a module of the same layer or one below it, and the import graph must be acyclic. The layers,
bottom to top, are those of DESIGN.md §1 and scree/__init__.py's docstring."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "python"

# Bottom to top; a module belongs to the first layer whose prefix matches its name.
LAYERS = [
    ("scree._errors", "scree._C", "scree._host_cache"),
    ("scree._backends",),
    ("scree._layout",),
    ("scree._array", "scree._elementwise", "scree._paged"),
    ("scree.kernels",),
    ("scree._connect",),
    ("scree._construct", "scree._combine", "scree._attention", "scree._paged_attention"),
    ("scree.bridges", "scree.data", "scree"),
    ("scree.nn",),
    ("scree.integrations", "scree.distributed"),
]


def layer_of(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes if p != "scree"):
            return i
    if module == "scree":
        return next(i for i, prefixes in enumerate(LAYERS) if "scree" in prefixes)
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "scree").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The scree modules `name` imports anywhere in its source (`from scree import x` counts as
    scree.x where x is a module)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "scree")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "scree":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in known else base)
    found.discard(name)
    return {m for m in found if m in known and m != "scree._C"}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods) | {"scree._C"}  # the compiled extension: a module, though not a .py file
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def test_every_module_has_a_layer(graph):
    for name in graph:
        layer_of(name)


def test_layers_only_look_down(graph):
    upward = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
              for a, targets in graph.items() for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert not upward, "imports that look up:\n" + "\n".join(upward)


def test_no_import_cycle(graph):
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_backends_hold_no_framework_glue(graph):
    """The bottom layer imports nothing above it, and the attention glue lives in scree._connect."""
    for name in graph:
        if name.startswith("scree._backends"):
            assert all(layer_of(m) <= layer_of("scree._backends") for m in graph[name]), (name, graph[name])
            source = modules()[name].read_text()
            assert "custom_op" not in source and "custom_vjp" not in source and "register_pytree" not in source, name
