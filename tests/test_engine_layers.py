"""The engine's modules import one way: no import cycle of any length among ``tah.engine.*``
(imports inside functions and under TYPE_CHECKING count), and the engine reads the rules it
shares with the core (sampling, decide, visibility) from ``tah.model``."""

from __future__ import annotations

from test_import_layers import _imports


def _engine_graph() -> dict[str, set[str]]:
    graph = _imports()
    engine = {m for m in graph if m == "tah.engine" or m.startswith("tah.engine.")}
    return {m: {t for t in graph[m] if t in engine} for m in engine}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_engine_modules_have_no_import_cycle():
    assert _cycle(_engine_graph()) is None


def test_the_cycle_check_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_engine_reads_the_shared_rules_from_the_model_package():
    graph = _imports()
    assert "tah.model.sampling" in graph["tah.engine.engine"]
    assert "tah.model.kv" in graph["tah.engine.kv"]
