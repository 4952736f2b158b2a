"""The house's shape, checked: short functions and files, the CLI imported only from the CLI,
the study packages, and a README that stays an entry point (its layout matching the tree)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tah"
MAX_FUNCTION_LINES = 100
MAX_FILE_LINES = 500
# Exceptions, each with its reason; none since the engine split (issue 24) landed.
ALLOWED_LONG_FUNCTIONS: set[str] = set()
ALLOWED_LONG_FILES: set[str] = set()


def _python_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def long_functions(source: str, where: str = "") -> list[str]:
    """``where:Qualified.name (N lines)`` of every function longer than the limit."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lines = child.end_lineno - child.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        found.append(f"{where}:{name}")
                visit(child, name + ".")

    visit(ast.parse(source), "")
    return found


def test_no_function_over_100_lines():
    found = []
    for path in _python_files():
        rel = path.relative_to(SRC).as_posix()
        found += long_functions(path.read_text(encoding="utf-8"), rel)
    assert sorted(set(found) - ALLOWED_LONG_FUNCTIONS) == []


def test_no_file_over_500_lines():
    long_files = {
        path.relative_to(SRC).as_posix()
        for path in _python_files()
        if len(path.read_text(encoding="utf-8").splitlines()) > MAX_FILE_LINES
    }
    assert sorted(long_files - ALLOWED_LONG_FILES) == []


def test_the_length_check_can_fail():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    source = (
        f"class A:\n    def f(self):\n{body.replace('    ', '        ')}\n\n\ndef g():\n{body}\n"
    )
    assert long_functions(source, "m.py") == ["m.py:A.f", "m.py:g"]
    assert long_functions("def h():\n    return 1\n") == []


def cli_importers(files: dict[str, str]) -> list[str]:
    """Modules outside cli/ (and __main__) that import tah.cli, by relative path."""
    wrong = []
    for rel, source in files.items():
        if rel.startswith("cli/") or rel == "__main__.py":
            continue
        for node in ast.walk(ast.parse(source)):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n == "tah.cli" or n.startswith("tah.cli.") for n in names):
                wrong.append(rel)
                break
    return wrong


def test_only_the_cli_imports_the_cli():
    files = {p.relative_to(SRC).as_posix(): p.read_text(encoding="utf-8") for p in _python_files()}
    assert cli_importers(files) == []
    # and the check sees a late import when there is one
    bad = {"repro/x.py": "def f():\n    from tah.cli import main\n", "cli/y.py": "import tah.cli"}
    assert cli_importers(bad) == ["repro/x.py"]


def test_each_study_is_a_package():
    for study in ("tiny", "twohop", "plateau"):
        assert (SRC / "repro" / study / "__init__.py").is_file(), study
    for module in ("config", "study", "jobs", "runs", "results", "report"):
        assert (SRC / "repro" / "twohop" / f"{module}.py").is_file(), module
    assert not list((SRC / "repro").glob("twohop_*.py")), "a two-hop module outside repro/twohop/"


def test_readme_is_an_entry_point_and_its_layout_matches_the_tree():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    for index in ("docs/repro-twohop/README.md", "docs/repro-tiny/README.md", "docs/method.md"):
        assert (ROOT / index).is_file(), index
        assert index in readme, f"the README does not link {index}"
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    named = set(re.findall(r"`src/tah/(\w+)/`", readme))
    assert packages <= named, f"packages the README's layout misses: {packages - named}"
    assert named <= packages, f"the README's layout names missing packages: {named - packages}"
    for path in re.findall(r"\]\(((?:docs|src|recipes|bench|tests)/[^)#]+)\)", readme):
        assert (ROOT / path).exists(), f"README links {path}, which does not exist"
