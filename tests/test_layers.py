"""The package's import graph: no cycles, and no import that goes up a layer.

Layers, lowest first (docs/architecture.md draws them): a module may import its own layer's and lower
layers' modules only. Every import counts, at module level or inside a function, because a lazy
upward import is still an upward dependency; only ``optplace.cli``, the entry point that composes the
commands, sits above everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import optplace

PKG = Path(optplace.__file__).resolve().parent

#: Lowest first. A module's layer is that of the longest prefix listed.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("optplace", "optplace.infra"),
    ("optplace.specs",),
    ("optplace.twin",),
    ("optplace.calibration", "optplace.surrogate"),
    ("optplace.solver",),
    ("optplace.pipeline", "optplace.deploy"),
    ("optplace.app", "optplace.bench"),
    ("optplace.vllm",),
    ("optplace.cli",),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every optplace module ``path`` imports, resolved to absolute names."""
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_in(source: str, mod: str, is_package: bool) -> set[str]:
    """Every optplace module the source of module ``mod`` imports, resolved to absolute names."""
    pkg = mod if is_package else mod.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "optplace":
                continue
            found.add(target)
            for alias in node.names:  # `from optplace.x import y` where y is a module
                if (PKG.parent / (target + "." + alias.name).replace(".", "/")).with_suffix(".py").exists() or (
                    PKG.parent / (target + "." + alias.name).replace(".", "/") / "__init__.py"
                ).exists():
                    found.add(target + "." + alias.name)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "optplace")
    return found


def layer_of(mod: str) -> int:
    best, layer = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best:
                best, layer = len(p), i
    assert layer >= 0, f"{mod} is in no layer: add it to LAYERS"
    return layer


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PKG.rglob("*.py")}


def test_no_import_goes_up_a_layer():
    up = sorted(
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, targets in graph().items()
        for t in targets
        if layer_of(t) > layer_of(m)
    )
    assert not up, "\n".join(up)


def test_no_import_cycles():
    g = graph()
    # Package __init__ files re-export their modules; an edge into a package from one of its own
    # modules is the package importing itself, not a cycle between concepts.
    edges = {m: {t for t in ts if t in g and t != m and not m.startswith(t + ".")} for m, ts in g.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_every_module_has_a_layer():
    for m in graph():
        layer_of(m)


def test_checker_sees_a_lazy_relative_upward_import():
    # The walker must resolve relative imports and see imports inside functions.
    found = imports_in("def f():\n    from ..solver import strategies\n", "optplace.specs.probe", False)
    assert "optplace.solver.strategies" in found
    assert layer_of("optplace.solver.strategies") > layer_of("optplace.specs.probe")
