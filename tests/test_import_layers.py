"""Modules do not import each other (counting imports inside functions and TYPE_CHECKING)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# engine/ and repro/ are checked by their own owners' tests.
PACKAGES = ("tah.cli", "tah.data", "tah.evaluation", "tah.model", "tah.training", "tah.config")


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


def _cycles(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted(
        (a, b)
        for a, targets in graph.items()
        for b in targets
        if a < b and a in graph.get(b, set()) and a.startswith(PACKAGES)
    )


def test_no_two_modules_import_each_other():
    assert _cycles(_imports()) == []


@pytest.mark.parametrize("module", ["tah.model.checkpoint", "tah.model.generation"])
def test_lower_model_modules_do_not_import_the_wrapper(module):
    assert "tah.model.wrapper" not in _imports()[module]
