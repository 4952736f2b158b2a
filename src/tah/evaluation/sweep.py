"""Threshold sweeps: accuracy and share of iterating tokens against the decider threshold tau.

The decider continues a token when sigmoid(logit) > tau, so tau trades accuracy for compute.
A sweep is a set of ordinary runs, one per tau (``<output>/tau-<value>``, each resumable on
its own), collected into a table (Markdown + JSON) and a two-panel PNG (matplotlib, Agg
backend so it works headless).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tah.errors import ConfigError, DataError
from tah.evaluation.report import DISPLAY, load_summary
from tah.evaluation.runner import EvalConfig, RunResult, run_eval
from tah.io import atomic_file, write_json


def parse_thresholds(text: str) -> list[float]:
    """``0.5,0.7,0.9`` -> [0.5, 0.7, 0.9], each in [0, 1], no repeats."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"--thresholds {text!r}: give comma-separated numbers in [0, 1]") from exc
    if not values or any(not 0.0 <= v <= 1.0 for v in values) or len(set(values)) != len(values):
        raise ConfigError(f"--thresholds {text!r}: give distinct comma-separated numbers in [0, 1]")
    return values


def tau_dir(output: str | Path, tau: float) -> Path:
    return Path(output) / f"tau-{tau:g}"


def run_sweep(config: EvalConfig, thresholds: list[float]) -> list[RunResult]:
    """One evaluation per threshold under ``config.output``; each resumes independently."""
    if config.backend not in ("tah",):
        raise ConfigError(f"a threshold sweep needs --backend tah (got {config.backend!r})")
    if config.backend_options.iter_budget is not None:
        raise ConfigError("--iter-budget steers τ itself: drop it for a threshold sweep")
    results = []
    for tau in thresholds:
        options = dataclasses.replace(
            config.backend_options, threshold=tau, extra=dict(config.backend_options.extra)
        )
        sub = dataclasses.replace(
            config,
            backend_options=options,
            output=str(tau_dir(config.output, tau)),
            name=f"{config.display_name()}-tau{tau:g}"
            if not config.name
            else f"{config.name}-tau{tau:g}",
        )
        results.append(run_eval(sub))
    return results


def collect(run_dirs: list[str | Path]) -> dict[str, Any]:
    """Per-tau metrics from finished runs, sorted by tau."""
    points = []
    for d in run_dirs:
        s = load_summary(d)
        tau = s.get("threshold")
        if tau is None:
            tau = (s.get("backend_info") or {}).get("threshold")
        if tau is None:
            raise DataError(f"{d}: the run records no threshold; sweep runs need --threshold")
        points.append(
            {
                "tau": float(tau),
                "run": str(d),
                "accuracy": {k: v["accuracy"] for k, v in s["datasets"].items()},
                "iter_share": {k: v["iter_share"] for k, v in s["datasets"].items()},
                "avg_depth": {k: v["avg_depth"] for k, v in s["datasets"].items()},
                "mean_accuracy": s["average"].get("accuracy", 0.0),
                "mean_iter_share": s["average"].get("iter_share", 0.0),
            }
        )
    points.sort(key=lambda p: p["tau"])
    taus = [p["tau"] for p in points]
    if len(set(taus)) != len(taus):
        raise DataError(f"two runs share a threshold: {taus}")
    datasets: list[str] = []
    for p in points:
        datasets += [k for k in p["accuracy"] if k not in datasets]
    return {"datasets": datasets, "points": points}


def to_markdown(sweep: dict[str, Any]) -> str:
    names = sweep["datasets"]
    head = [
        "τ",
        *[f"{DISPLAY.get(n, n)} acc" for n in names],
        "mean acc",
        "iterating (%)",
        "avg depth",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * len(head)) + "|"]
    for p in sweep["points"]:
        depth = [v for v in p["avg_depth"].values()]
        cells = [f"{p['tau']:g}"]
        cells += [f"{100 * p['accuracy'][n]:.1f}" if n in p["accuracy"] else "–" for n in names]
        cells += [
            f"{100 * p['mean_accuracy']:.1f}",
            f"{100 * p['mean_iter_share']:.1f}",
            f"{sum(depth) / len(depth):.3f}" if depth else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(sweep: dict[str, Any], path: str | Path) -> None:
    """Accuracy (per benchmark and mean) and share iterating against tau, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    taus = [p["tau"] for p in sweep["points"]]
    fig, (ax_acc, ax_it) = plt.subplots(1, 2, figsize=(10, 4))
    for name in sweep["datasets"]:
        xs = [p["tau"] for p in sweep["points"] if name in p["accuracy"]]
        ys = [100 * p["accuracy"][name] for p in sweep["points"] if name in p["accuracy"]]
        ax_acc.plot(xs, ys, marker="o", alpha=0.6, label=DISPLAY.get(name, name))
    ax_acc.plot(
        taus, [100 * p["mean_accuracy"] for p in sweep["points"]], "k-o", lw=2, label="mean"
    )
    ax_acc.set(xlabel="threshold τ", ylabel="accuracy (%)", title="Accuracy vs τ")
    ax_acc.legend(fontsize=8)
    ax_it.plot(taus, [100 * p["mean_iter_share"] for p in sweep["points"]], "C3-o")
    ax_it.set(xlabel="threshold τ", ylabel="tokens iterating (%)", title="Share iterating vs τ")
    for ax in (ax_acc, ax_it):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)


def write_sweep(sweep: dict[str, Any], output: str | Path) -> dict[str, Path]:
    """sweep.json, sweep.md and sweep.png under ``output``."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "sweep.json", "markdown": out / "sweep.md", "png": out / "sweep.png"}
    write_json(paths["json"], sweep)
    with atomic_file(paths["markdown"], "w", encoding="utf-8") as handle:
        handle.write(to_markdown(sweep))
    plot(sweep, paths["png"])
    return paths
