"""The engine's layer rule: each subpackage imports only from the layers below it, and nothing imports in a circle.

Read from the source (every ``import`` and ``from ... import``, also those inside functions), so a lazy import
that breaks the rule is caught too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine

PKG = Path(__file__).resolve().parents[2] / "artseg_core"

#: rank of each subpackage; a module may import from its own subpackage or from a subpackage of lower rank.
LAYERS = {
    "_version": 0,
    "imgproc": 1,
    "io": 2, "nets": 2,
    "data": 3, "evaluation": 3, "weak": 3,
    "predict": 4,
    "training": 5,
    "batch": 6, "bridges": 6, "export": 6, "label": 6, "napari": 6,
    "cli": 7,
    "": 8,  # the package root re-exports the public API (lazily)
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every artseg_core module named by an import in ``path`` (relative imports resolved)."""
    mod = _module_name(path)
    pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "artseg_core"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] != "artseg_core":
                continue
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        graph[mod] = {d for d in _imports(path) if d in files and d != mod}
    return graph


def _subpackage(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_belongs_to_a_layer():
    unknown = sorted({_subpackage(m) for m in _graph()} - set(LAYERS))
    assert not unknown, f"subpackages without a layer in tests/package/test_layers.py: {unknown}"


def test_no_upward_or_sideways_imports():
    bad = []
    for mod, deps in _graph().items():
        here = _subpackage(mod)
        for d in deps:
            there = _subpackage(d)
            if there == here or d == "artseg_core":
                continue
            if LAYERS[there] >= LAYERS[here]:
                bad.append(f"{mod} -> {d}")
    assert not bad, "imports that break the layer rule:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            if d == "artseg_core":  # the root's lazy re-exports are not a dependency of the modules
                continue
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_rule_catches_a_violation(tmp_path, monkeypatch):
    """The checker itself: an upward import planted in a copy of a low layer is reported."""
    import shutil

    copy = tmp_path / "artseg_core"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "imgproc" / "planted.py").write_text("from artseg_core.predict.model import load_model\n")
    monkeypatch.setattr(__import__(__name__), "PKG", copy)
    with pytest.raises(AssertionError, match="imgproc.planted -> artseg_core.predict.model"):
        test_no_upward_or_sideways_imports()


def test_architecture_lists_every_module():
    """ARCHITECTURE.md names every module of the engine (one line each), so the map stays true."""
    text = (PKG.parent / "ARCHITECTURE.md").read_text()
    missing = sorted(str(p.relative_to(PKG.parent)) for p in PKG.rglob("*.py")
                     if p.name not in ("__init__.py", "__main__.py") and f"`{p.relative_to(PKG)}`" not in text)
    assert not missing, "modules missing from ARCHITECTURE.md: " + ", ".join(missing)
