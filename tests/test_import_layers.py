"""Imports flow one way: cli -> repro / training / evaluation / engine -> data -> model -> config
(errors and io below everything), and no two modules import each other. Imports inside functions
and under TYPE_CHECKING count: a late import is still an arrow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# Higher imports lower or its own level, never higher. `tah` itself is the public API (the
# model's classes); `tah.__main__` is `python -m tah`, the CLI's other door.
LAYERS = {
    "tah.__main__": 6,
    "tah.cli": 5,
    "tah.repro": 4,
    "tah.training": 4,
    "tah.evaluation": 4,
    "tah.engine": 4,
    "tah.data": 3,
    "tah.model": 2,
    "tah": 2,
    "tah.config": 1,
    "tah.errors": 0,
    "tah.io": 0,
}
# Siblings of one layer may import each other's package only this way round: the studies use
# the training losses, evaluation generates through the engine.
SIBLING_ARROWS = {
    ("tah.repro", "tah.training"),
    ("tah.evaluation", "tah.engine"),
    ("tah", "tah.model"),
}
CYCLE_CHECKED = ("tah.cli", "tah.data", "tah.engine", "tah.evaluation", "tah.model")
CYCLE_CHECKED += ("tah.training", "tah.config", "tah.repro")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in (SRC / "tah").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _layer(module: str) -> str:
    """The LAYERS key a module belongs to (the longest matching prefix)."""
    keys = [k for k in LAYERS if module == k or module.startswith(k + ".")]
    if not keys:
        raise AssertionError(f"{module} is in no layer: add its package to LAYERS")
    return max(keys, key=len)


def _upward(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for source, targets in graph.items():
        for target in targets:
            a, b = _layer(source), _layer(target)
            if LAYERS[b] > LAYERS[a] or (
                a != b and LAYERS[a] == LAYERS[b] and (a, b) not in SIBLING_ARROWS
            ):
                wrong.append(f"{source} -> {target}")
    return sorted(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import each other round a loop of any length (the strongly
    connected components with more than one module, Tarjan's algorithm), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                members.append(member)
                if member == node:
                    break
            if len(members) > 1 and any(m.startswith(CYCLE_CHECKED) for m in members):
                found.append(sorted(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_imports_point_down_the_layers():
    assert _upward(_imports()) == []


def test_no_two_modules_import_each_other():
    assert _cycles(_imports()) == []


def test_the_checks_catch_an_upward_arrow_and_a_cycle():
    """The checks themselves fail on a bad graph (so the two tests above can fail)."""
    graph = _imports()
    graph["tah.data.records"] = graph["tah.data.records"] | {"tah.evaluation.runner"}
    graph["tah.model.kv"] = graph["tah.model.kv"] | {"tah.model.deciders"}
    graph["tah.model.deciders"] = graph["tah.model.deciders"] | {"tah.model.adapters"}
    graph["tah.model.adapters"] = graph["tah.model.adapters"] | {"tah.model.kv"}
    graph["tah.repro.jobs"] = graph["tah.repro.jobs"] | {"tah.cli"}
    assert _upward(graph) == [
        "tah.data.records -> tah.evaluation.runner",
        "tah.repro.jobs -> tah.cli",
    ]
    graph["tah.engine.engine"] = graph["tah.engine.engine"] | {"tah.evaluation.runner"}
    assert "tah.engine.engine -> tah.evaluation.runner" in _upward(graph)  # siblings: one way
    assert ["tah.model.adapters", "tah.model.deciders", "tah.model.kv"] in _cycles(graph)


@pytest.mark.parametrize("module", ["tah.model.checkpoint", "tah.model.generation"])
def test_lower_model_modules_do_not_import_the_wrapper(module):
    assert "tah.model.wrapper" not in _imports()[module]
