"""Runs side by side in the layout of the paper's Table 1.

Rows are benchmarks, columns are methods (runs), then an average row (the mean over the
benchmarks every run has, as the paper averages per-benchmark accuracies) and a row of
differences against a chosen baseline column. Rendered as Markdown (for READMEs and issues) and
JSON (for scripts); the console gets the same table. It reads only ``summary.json`` files, so
runs from different machines can be compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tah.errors import ConfigError, DataError

DISPLAY = {
    "gsm8k": "GSM8K",
    "math500": "MATH500",
    "aime24": "AIME24",
    "aime25": "AIME25",
    "amc23": "AMC23",
    "olympiadbench": "OlympiadBench",
}
PERCENT_METRICS = ("accuracy", "iter_share", "stderr", "no_answer_share")
REPORT_METRICS = ("accuracy", "iter_share", "avg_depth", "mean_tokens", "tokens_per_s")


def load_summary(path: str | Path) -> dict[str, Any]:
    """A run's summary from its folder or its summary.json."""
    path = Path(path)
    file = path / "summary.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no summary.json; is it an evaluation run that finished?") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}: not valid JSON ({exc.msg})") from exc
    if "datasets" not in data:
        raise DataError(f"{file}: not a tah evaluation summary (no 'datasets')")
    data.setdefault("name", path.name if path.is_dir() else path.parent.name)
    return data


def build_report(
    summaries: list[dict[str, Any]],
    names: list[str] | None = None,
    baseline: str | None = None,
    metric: str = "accuracy",
) -> dict[str, Any]:
    """The table as data: benchmarks, methods, values, averages and deltas vs the baseline."""
    if not summaries:
        raise ConfigError("give at least one run")
    if metric not in REPORT_METRICS:
        raise ConfigError(f"--metric {metric!r}: use one of {REPORT_METRICS}")
    names = names or [str(s.get("name")) for s in summaries]
    if len(names) != len(summaries):
        raise ConfigError(f"--names has {len(names)} entries for {len(summaries)} runs")
    if len(set(names)) != len(names):
        raise ConfigError(f"method names repeat ({names}); pass distinct --names")
    baseline = baseline or names[0]
    if baseline not in names:
        raise ConfigError(f"--baseline {baseline!r} is not one of the methods {names}")
    benchmarks: list[str] = []
    for s in summaries:
        for b in s["datasets"]:
            if b not in benchmarks:
                benchmarks.append(b)
    values: dict[str, dict[str, float | None]] = {}
    stderr: dict[str, dict[str, float | None]] = {}
    for b in benchmarks:
        values[b] = {n: (s["datasets"].get(b) or {}).get(metric) for n, s in zip(names, summaries)}
        stderr[b] = {
            n: (s["datasets"].get(b) or {}).get("stderr") for n, s in zip(names, summaries)
        }
    common = [b for b in benchmarks if all(values[b][n] is not None for n in names)]
    average = {
        n: (sum(values[b][n] for b in common) / len(common)) if common else None for n in names
    }
    delta = {
        n: (average[n] - average[baseline])
        if average[n] is not None and average[baseline] is not None
        else None
        for n in names
    }
    return {
        "metric": metric,
        "methods": names,
        "baseline": baseline,
        "benchmarks": benchmarks,
        "values": values,
        "stderr": stderr,
        "average_over": common,
        "average": average,
        "delta_vs_baseline": delta,
    }


def _fmt(value: float | None, metric: str, signed: bool = False) -> str:
    if value is None:
        return "–"
    v = 100 * value if metric in PERCENT_METRICS else value
    digits = 3 if metric == "avg_depth" else 1
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def report_rows(report: dict[str, Any], show_stderr: bool = False) -> list[list[str]]:
    """Header plus body rows as strings (shared by the Markdown and console renderings)."""
    metric, names = report["metric"], report["methods"]
    rows = [["Benchmark", *names]]
    for b in report["benchmarks"]:
        cells = []
        for n in names:
            cell = _fmt(report["values"][b][n], metric)
            se = report["stderr"][b][n]
            if (
                show_stderr
                and metric == "accuracy"
                and se is not None
                and report["values"][b][n] is not None
            ):
                cell += f" ± {100 * se:.1f}"
            cells.append(cell)
        rows.append([DISPLAY.get(b, b), *cells])
    partial = len(report["average_over"]) < len(report["benchmarks"])
    rows.append(
        [
            "Average" + (" (common)" if partial else ""),
            *[_fmt(report["average"][n], metric) for n in names],
        ]
    )
    rows.append(
        [
            f"Δ vs {report['baseline']}",
            *[
                "–"
                if n == report["baseline"]
                else _fmt(report["delta_vs_baseline"][n], metric, True)
                for n in names
            ],
        ]
    )
    return rows


def to_markdown(report: dict[str, Any], show_stderr: bool = False) -> str:
    rows = report_rows(report, show_stderr)
    lines = [
        "| " + " | ".join(rows[0]) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(rows[0]) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines) + "\n"


def to_rich(report: dict[str, Any], show_stderr: bool = False) -> Any:
    from rich.table import Table

    rows = report_rows(report, show_stderr)
    table = Table(title=f"{report['metric']} by benchmark")
    for i, col in enumerate(rows[0]):
        table.add_column(col, justify="left" if i == 0 else "right")
    n_bench = len(report["benchmarks"])
    for i, row in enumerate(rows[1:]):
        if i == n_bench:
            table.add_section()
        table.add_row(*row)
    return table
