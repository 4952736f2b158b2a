"""Per-dataset metrics of a run (docs/method.md §11) and their table.

Accuracy is the mean of ``correct`` over all (problem, sample) rows, with the standard error of
that mean (sample standard deviation / sqrt(n)). Depth and iteration share are token-weighted
over all generated tokens (as the paper's "% tokens iterating"); tokens/s is generated tokens
over generation time, i.e. the throughput of one backend instance (per-sample time is the batch
time divided by the batch size, so with several workers it is not wall-clock throughput).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

METRICS = ("accuracy", "stderr", "mean_tokens", "avg_depth", "iter_share", "tokens_per_s")


def _dataset_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    correct = [1.0 if r.get("correct") else 0.0 for r in rows]
    acc = sum(correct) / n if n else 0.0
    stderr = math.sqrt(sum((c - acc) ** 2 for c in correct) / (n - 1) / n) if n > 1 else 0.0
    tokens = sum(int(r.get("n_tokens", 0)) for r in rows)
    depth_tokens = 0.0
    iter_tokens = 0.0
    counted = 0
    for r in rows:
        it = r.get("iter") or {}
        hist = it.get("hist") or {}
        k = sum(int(v) for v in hist.values())
        counted += k
        depth_tokens += sum(int(d) * int(v) for d, v in hist.items())
        iter_tokens += sum(int(v) for d, v in hist.items() if int(d) > 1)
    gen_time = sum(float(r.get("time_s", 0.0)) for r in rows)
    problems: dict[str, list[float]] = defaultdict(list)
    for r, c in zip(rows, correct):
        problems[str(r["problem_id"])].append(c)
    statuses: dict[str, int] = defaultdict(int)
    for r in rows:
        statuses[str(r.get("grade_status", "ok"))] += 1
    return {
        "n_problems": len(problems),
        "n_samples": n,
        "accuracy": acc,
        "stderr": stderr,
        "mean_tokens": tokens / n if n else 0.0,
        "avg_depth": depth_tokens / counted if counted else 0.0,
        "iter_share": iter_tokens / counted if counted else 0.0,
        "tokens_per_s": tokens / gen_time if gen_time > 0 else 0.0,
        "no_answer_share": statuses.get("no_answer", 0) / n if n else 0.0,
        "ungradable": statuses.get("timeout", 0) + statuses.get("error", 0),
        "bad_gold": statuses.get("bad_gold", 0),
        "truncated_share": sum(1 for r in rows if r.get("finish_reason") == "length") / n
        if n
        else 0.0,
        "grade_status": dict(statuses),
        "per_problem_accuracy": {p: sum(v) / len(v) for p, v in problems.items()},
    }


def summarize(rows: Iterable[dict[str, Any]], order: list[str] | None = None) -> dict[str, Any]:
    """Metrics per dataset (in ``order``, else first-seen order) plus their macro average."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[str(row["dataset"])].append(row)
    names = [n for n in (order or []) if n in grouped] + [
        n for n in grouped if n not in (order or [])
    ]
    datasets = {name: _dataset_metrics(grouped[name]) for name in names}
    average: dict[str, Any] = {}
    if datasets:
        for key in ("accuracy", "mean_tokens", "avg_depth", "iter_share", "tokens_per_s"):
            average[key] = sum(d[key] for d in datasets.values()) / len(datasets)
        average["n_samples"] = sum(d["n_samples"] for d in datasets.values())
    return {"datasets": datasets, "average": average}


def summary_table(summary: dict[str, Any], title: str | None = None) -> Any:
    """A rich Table: one row per dataset, then the macro average."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("dataset", "n", "acc %", "± se", "tokens", "depth", "iter %", "tok/s", "no ans %"):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for name, m in summary["datasets"].items():
        table.add_row(
            name,
            str(m["n_samples"]),
            f"{100 * m['accuracy']:.1f}",
            f"{100 * m['stderr']:.1f}",
            f"{m['mean_tokens']:.0f}",
            f"{m['avg_depth']:.3f}",
            f"{100 * m['iter_share']:.1f}",
            f"{m['tokens_per_s']:.1f}",
            f"{100 * m['no_answer_share']:.1f}",
        )
    avg = summary.get("average") or {}
    if len(summary["datasets"]) > 1 and avg:
        table.add_section()
        table.add_row(
            "average",
            str(avg["n_samples"]),
            f"{100 * avg['accuracy']:.1f}",
            "",
            f"{avg['mean_tokens']:.0f}",
            f"{avg['avg_depth']:.3f}",
            f"{100 * avg['iter_share']:.1f}",
            f"{avg['tokens_per_s']:.1f}",
            "",
        )
    return table
