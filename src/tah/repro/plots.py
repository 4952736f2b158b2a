"""The reproduction's plots, drawn from its ``results.json`` dictionary (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tah.io import atomic_file

__all__ = ["plot_accuracy_vs_iterating", "plot_results", "pyplot", "save_figure"]


def save_figure(fig: Any, path: str | Path) -> None:
    """Lay out ``fig``, write it as PNG atomically (folders made as needed), and close it."""
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_results(results: dict[str, Any], path: str | Path) -> None:
    """Answer accuracy and hard / easy next-token accuracy per method, with seed dots."""
    plt = pyplot()
    methods = results["methods"]
    agg = results["aggregate"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, column, title in (
        (axes[0], "accuracy", "answer accuracy (%)"),
        (axes[1], "hard_acc", "hard-token accuracy (%)"),
        (axes[2], "easy_acc", "easy-token accuracy (%)"),
    ):
        means, errs = [], []
        for i, m in enumerate(methods):
            stat = agg[m["key"]][column]
            means.append(100 * (stat["mean"] or 0.0))
            errs.append(100 * (stat["std"] or 0.0))
            dots = [100 * v for v in stat["values"] if v is not None]
            ax.scatter([i] * len(dots), dots, color="black", s=10, zorder=3)
        ax.bar(range(len(methods)), means, yerr=errs, capsize=4, color="#8fb3d9")
        ax.set_xticks(range(len(methods)), [m["label"] for m in methods], rotation=25, ha="right")
        ax.set_title(title)
        finite = [v for v in means if v > 0]
        if column == "easy_acc" and finite:
            ax.set_ylim(max(0.0, min(finite) - 3), 100)
    seeds = len(results["per_seed"])
    fig.suptitle(f"tah repro {results['config']['preset']}: mean ± std over {seeds} seed(s)")
    save_figure(fig, path)


def plot_accuracy_vs_iterating(results: dict[str, Any], path: str | Path) -> None:
    """Answer accuracy against the share of generated tokens that ran a second pass.

    Standard sits at 0 %, AlwaysThink at 100 %; TaH and TaH+ trace their τ sweep (test
    problems, reported only), with the oracle and depth-1-only routing of the same weights.
    """
    plt = pyplot()
    agg = results["aggregate"]
    fig, ax = plt.subplots(figsize=(7.5, 5))

    def point(key: str, label: str, marker: str, color: str) -> None:
        acc, share = agg[key]["accuracy"], agg[key]["iter_share"]
        if acc["mean"] is None or share["mean"] is None:
            return
        ax.errorbar(
            100 * share["mean"],
            100 * acc["mean"],
            yerr=100 * (acc["std"] or 0.0),
            xerr=100 * (share["std"] or 0.0),
            fmt=marker,
            color=color,
            capsize=3,
            label=label,
            markersize=8,
        )

    colors = {"tah": "#d95f02", "tahplus": "#1b9e77"}
    for key, label in (("tah", "TaH"), ("tahplus", "TaH+")):
        sweep = (results.get("sweep") or {}).get(key, {})
        taus = sorted(sweep, key=float)
        pts = [
            (100 * sweep[t]["iter_share"]["mean"], 100 * sweep[t]["accuracy"]["mean"], t)
            for t in taus
            if sweep[t]["accuracy"]["mean"] is not None
            and sweep[t]["iter_share"]["mean"] is not None
        ]
        if pts:
            xs, ys, ts = zip(*sorted(pts))
            ax.plot(xs, ys, "-", color=colors[key], alpha=0.5, label=f"{label}, τ sweep")
            for x, y, t in zip(xs, ys, ts):
                ax.annotate(
                    f"τ={t}",
                    (x, y),
                    fontsize=7,
                    color=colors[key],
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        point(key, f"{label} (τ = {results['config']['threshold']:g})", "o", colors[key])
        point(f"{key}_oracle", f"{label}, oracle routing", "*", colors[key])
        point(f"{key}_depth1", f"{label}, depth 1 only", "v", colors[key])
    point("tahplus_val", "TaH+, chosen on validation", "P", "#7570b3")
    point("standard", "Standard", "s", "black")
    point("standard_wide", "Standard-wide", "D", "gray")
    point("alwaysthink", "AlwaysThink", "^", "#e7298a")
    point("alwaysthink_plus", "AlwaysThink+", "^", "#66a61e")
    ax.set(
        xlabel="generated tokens that iterate (%)",
        ylabel="answer accuracy (%)",
        title="accuracy vs share of tokens iterating (mean ± std over seeds)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    save_figure(fig, path)
