"""The package's layer rule (docs/architecture.md), read from the source with `ast`: no import cycle among
module-level imports, and no import, module-level or inside a function, that goes up a layer.

Layers, lowest first (a module may import its own package and anything ranked lower, never higher or a
different package of the same rank):
  0  shared leaves: the modules directly in linearsr/ (settings, imageio, tags, precision, runtime, checks,
     degradation_kinds)
  1  model
  2  flow, datasets (side by side: neither imports the other)
  3  inference
  4  evaluation  (runs the inference pipeline)
  5  train       (validation scores with evaluation.metrics; ablations train, then evaluate)
  6  cli
The one exception: linearsr/__init__.py may import `LinearSR` inside its module `__getattr__`, so that
`from linearsr import LinearSR` works while `import linearsr` stays free of torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "linearsr"
RANK = {"model": 1, "flow": 2, "datasets": 2, "inference": 3, "evaluation": 4, "train": 5, "cli": 6}
FACADE = ("linearsr", "linearsr.inference.pipeline")  # (importer, imported): the lazy `LinearSR` export


def _modules(root: Path = SRC) -> dict[str, Path]:
    mods = {}
    for f in (root / PACKAGE).rglob("*.py"):
        parts = f.relative_to(root).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _targets(mods: dict[str, Path], name: str, node: ast.AST) -> list[str]:
    """The linearsr modules an import statement in module `name` loads (relative imports resolved;
    `from pkg import module` counts as importing the module)."""
    if isinstance(node, ast.Import):
        found = [a.name for a in node.names]
    else:
        if node.level:
            base = name.split(".") if mods[name].name == "__init__.py" else name.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        found = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in mods else stem for a in node.names]
    out = []
    for t in found:
        while t and t not in mods:  # an attribute or a missing name: the module that holds it
            t = t.rpartition(".")[0]
        if t and t != name:
            out.append(t)
    return out


def import_edges(root: Path = SRC) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level edges, every edge) between linearsr modules. Module level means outside any function
    (a class body or an `if` at the top still runs at import)."""
    mods = _modules(root)
    top: dict[str, set[str]] = {m: set() for m in mods}
    every: dict[str, set[str]] = {m: set() for m in mods}

    def walk(name: str, node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                walk(name, child, True)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for t in _targets(mods, name, child):
                    every[name].add(t)
                    # `from . import x` inside package p also "imports" p's __init__; that is no cycle
                    if not in_function and not name.startswith(t + "."):
                        top[name].add(t)
            walk(name, child, in_function)

    for name, f in mods.items():
        walk(name, ast.parse(f.read_text(), str(f)), False)
    return top, every


def layer(module: str) -> tuple[str, int]:
    """(package, rank) of a linearsr module: its first-level subpackage, or the shared leaves (rank 0)."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in RANK:
        return parts[1], RANK[parts[1]]
    return "", 0


def upward_imports(every: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in every.items():
        for t in targets:
            if (src, t) == FACADE:
                continue
            (p_src, r_src), (p_t, r_t) = layer(src), layer(t)
            if p_src == p_t and (p_src or src.count(".") == 1 and t.count(".") <= 1):
                continue  # the same package (or two shared leaves)
            if r_t >= r_src:
                bad.append(f"{src} imports {t} ({p_t or 'shared'} is not below {p_src or 'shared'})")
    return sorted(bad)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles():
    top, _ = import_edges()
    assert cycles(top) == []


def test_no_import_goes_up_a_layer():
    _, every = import_edges()
    assert upward_imports(every) == []


def test_every_module_is_in_a_known_layer():
    """A new subpackage must be given its rank here and in docs/architecture.md before it is used."""
    for name, f in _modules().items():
        parts = name.split(".")
        if f.parent != SRC / PACKAGE:
            assert parts[1] in RANK, f"{name}: package {parts[1]!r} has no layer"


def test_the_checker_sees_a_violation(tmp_path):
    """The rule is not vacuous: an upward import and a cycle planted in a copy are both reported."""
    pkg = tmp_path / PACKAGE
    for f in (SRC / PACKAGE).rglob("*.py"):
        dest = pkg / f.relative_to(SRC / PACKAGE)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(f.read_text())
    (pkg / "model" / "attention.py").write_text((pkg / "model" / "attention.py").read_text()
                                                 + "\n\ndef _f():\n    from ..inference import tiling\n")
    (pkg / "model" / "stem.py").write_text((pkg / "model" / "stem.py").read_text() + "\nfrom . import codec\n")
    (pkg / "model" / "codec.py").write_text((pkg / "model" / "codec.py").read_text() + "\nfrom .stem import LRStem\n")
    top, every = import_edges(tmp_path)
    assert any(b.startswith("linearsr.model.attention imports linearsr.inference.tiling") for b in upward_imports(every))
    assert ["linearsr.model.codec", "linearsr.model.stem"] in cycles(top)


@pytest.mark.parametrize("module", ["linearsr", "linearsr.settings", "linearsr.cli"])
def test_light_modules_stay_light(module):
    """The shared leaves that the command line reads at --help do not reach into the layers at import."""
    top, _ = import_edges()
    assert all(layer(t)[1] == 0 or module == "linearsr.cli" and layer(t)[0] == "cli" for t in top[module])
