"""The reproduction's table: per-seed numbers gathered from the run folder, mean ± std, written
as Markdown, JSON and a plot.

Every number is read back from the artefacts the steps wrote (``tah eval`` summaries, the
token-accuracy JSON, ``tah label`` metadata, ``tah prune`` reports, training logs), never from
memory, so the report can be rebuilt from a finished run folder at any time
(:func:`collect_results` + :func:`write_report`).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from tah.io import atomic_file, write_json
from tah.repro.config import ReproConfig

__all__ = ["COLUMNS", "collect_results", "markdown_table", "plot_results", "write_report"]

# (key, header, scale, decimals)
COLUMNS: tuple[tuple[str, str, float, int], ...] = (
    ("params", "Params", 1.0, 0),
    ("accuracy", "Answer acc. (%)", 100.0, 1),
    ("hard_acc", "Hard-token acc. (%)", 100.0, 1),
    ("easy_acc", "Easy-token acc. (%)", 100.0, 2),
    ("avg_depth", "Avg depth", 1.0, 3),
    ("iter_share", "Tokens iterating (%)", 100.0, 1),
    ("hard_iter_share", "Hard tokens iterated (%)", 100.0, 1),
    ("easy_iter_share", "Easy tokens iterated (%)", 100.0, 1),
)


# Teacher-forced-only rows: the stage-1 models under oracle routing, and at depth 1 alone.
DIAGNOSTICS: dict[str, str] = {
    "tah_oracle": "TaH stage 1, oracle routing¹",
    "tah_depth1": "TaH stage 1, depth 1 only²",
    "tahplus_oracle": "TaH+ stage 1, oracle routing¹",
    "tahplus_depth1": "TaH+ stage 1, depth 1 only²",
}
SHORT_DIAGNOSTICS = {
    "tah_oracle": "TaH s1 oracle¹",
    "tah_depth1": "TaH s1 depth 1²",
    "tahplus_oracle": "TaH+ s1 oracle¹",
    "tahplus_depth1": "TaH+ s1 depth 1²",
}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _eval_numbers(summary: dict[str, Any] | None) -> dict[str, Any]:
    if not summary:
        return {}
    data = next(iter(summary.get("datasets", {}).values()), {})
    info = summary.get("backend_info") or {}
    return {
        "accuracy": data.get("accuracy"),
        "avg_depth": data.get("avg_depth"),
        "iter_share": data.get("iter_share"),
        "mean_tokens": data.get("mean_tokens"),
        "no_answer_share": data.get("no_answer_share"),
        "params": info.get("n_params"),
        "n_problems": data.get("n_problems"),
    }


def _token_numbers(record: dict[str, Any] | None) -> dict[str, Any]:
    if not record:
        return {}
    keys = ("hard_acc", "easy_acc", "all_acc", "hard_iter_share", "easy_iter_share")
    return {k: record.get(k) for k in keys} | {"hard_tokens": record.get("hard")}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return mean, std


def collect_results(config: ReproConfig, out: str | Path, data_info: dict[str, Any]) -> dict:
    """Per-seed numbers of every method and their mean / std over seeds."""
    from tah.repro.tiny import METHODS

    out = Path(out)
    per_seed: dict[str, dict[str, Any]] = {}
    for seed in config.seeds:
        sd = out / f"seed{seed}"
        row: dict[str, Any] = {}
        for method in METHODS:
            row[method.key] = {
                **_eval_numbers(_read(sd / "eval" / method.key / "summary.json")),
                **_token_numbers(_read(sd / "tokens" / f"{method.key}.json")),
            }
        for key in DIAGNOSTICS:
            row[key] = _token_numbers(_read(sd / "tokens" / f"{key}.json"))
        labels = {}
        for split in ("train", "test"):
            meta = _read(sd / "labels" / split / "tah_labels.json") or {}
            stats = meta.get("stats") or {}
            labels[split] = {
                "supervised_hard_ratio": stats.get("supervised_hard_ratio"),
                "supervised_tokens": stats.get("supervised_tokens"),
            }
        sweeps = {}
        for key in ("tah", "tahplus"):
            sweep = _read(sd / "sweep" / key / "sweep.json") or {}
            sweeps[key] = {
                f"{p['tau']:g}": {
                    "accuracy": p.get("mean_accuracy"),
                    "iter_share": p.get("mean_iter_share"),
                }
                for p in sweep.get("points", [])
            }
        prune = _read(sd / "pruned" / "prune_report.json") or {}
        base_log = _read_last_train(sd / "base" / "train_log.jsonl")
        per_seed[str(seed)] = {
            "methods": row,
            "base": _eval_numbers(_read(sd / "eval" / "base" / "summary.json")),
            "sweep": sweeps,
            "labels": labels,
            "pruned_layer": prune.get("removed"),
            "prune_ppl": [prune.get("base_ppl"), prune.get("pruned_ppl")],
            "pretrain_final_loss": base_log.get("loss"),
        }
    aggregate: dict[str, dict[str, Any]] = {}
    keys = [m.key for m in METHODS] + list(DIAGNOSTICS)
    for key in keys:
        aggregate[key] = {}
        for column, *_ in COLUMNS:
            values = [per_seed[s]["methods"][key].get(column) for s in per_seed]
            mean, std = _mean_std(values)
            aggregate[key][column] = {"mean": mean, "std": std, "values": values}
    base_acc = _mean_std([per_seed[s]["base"].get("accuracy") for s in per_seed])
    sweep_agg: dict[str, dict[str, Any]] = {}
    for key in ("tah", "tahplus"):
        taus = sorted({t for s in per_seed.values() for t in s["sweep"][key]}, key=float)
        sweep_agg[key] = {}
        for tau in taus:
            points = [s["sweep"][key].get(tau, {}) for s in per_seed.values()]
            entry = {}
            for metric in ("accuracy", "iter_share"):
                mean, std = _mean_std([p.get(metric) for p in points])
                entry[metric] = {"mean": mean, "std": std}
            sweep_agg[key][tau] = entry
    return {
        "config": config.to_dict(),
        "base_accuracy": {"mean": base_acc[0], "std": base_acc[1]},
        "sweep": sweep_agg,
        "data": data_info,
        "methods": [
            {"key": m.key, "label": m.label, "description": m.description} for m in METHODS
        ],
        "per_seed": per_seed,
        "aggregate": aggregate,
    }


def _read_last_train(path: Path) -> dict[str, Any]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == "train":
            return record
    return {}


def _cell(stat: dict[str, Any], scale: float, decimals: int, params: bool = False) -> str:
    mean, std = stat.get("mean"), stat.get("std")
    if mean is None:
        return "–"
    if params:
        return f"{mean / 1e6:.3f} M"
    text = f"{mean * scale:.{decimals}f}"
    if std is not None:
        text += f" ± {std * scale:.{decimals}f}"
    return text


def markdown_table(results: dict[str, Any]) -> str:
    """The paper-style table (mean ± std over seeds), oracle rows last."""
    headers = ["Method"] + [h for _, h, _, _ in COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    rows = [(m["label"], m["key"]) for m in results["methods"]]
    rows += [(label, key) for key, label in DIAGNOSTICS.items()]
    for label, key in rows:
        agg = results["aggregate"][key]
        cells = [
            _cell(agg[col], scale, dec, params=col == "params") for col, _, scale, dec in COLUMNS
        ]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines) + "\n"


def rich_table(results: dict[str, Any]) -> Any:
    """A compact terminal version of the table (the Markdown file has every column)."""
    from rich.table import Table

    n = len(results["per_seed"])
    table = Table(title=f"mean ± std over {n} seed(s); full table in results.md")
    short = {
        "params": "params",
        "accuracy": "answer %",
        "hard_acc": "hard-tok %",
        "easy_acc": "easy-tok %",
        "avg_depth": "depth",
        "iter_share": "iter %",
    }
    table.add_column("method")
    for key in short.values():
        table.add_column(key, justify="right")
    rows = [(m["label"], m["key"]) for m in results["methods"]]
    rows += [(SHORT_DIAGNOSTICS[key], key) for key in DIAGNOSTICS]
    for label, key in rows:
        agg = results["aggregate"][key]
        cells = []
        for col, _, scale, dec in COLUMNS:
            if col in short:
                cells.append(_cell(agg[col], scale, min(dec, 1), params=col == "params"))
        table.add_row(label, *cells)
    return table


def sweep_table(results: dict[str, Any]) -> str:
    """Answer accuracy and share iterating against τ for TaH and TaH+ (mean ± std)."""
    sweep = results.get("sweep") or {}
    taus = sorted({t for v in sweep.values() for t in v}, key=float)
    if not taus:
        return ""
    standard = results["aggregate"]["standard"]["accuracy"]
    lines = [
        "| τ | TaH answer acc. (%) | TaH iterating (%) | TaH+ answer acc. (%) "
        "| TaH+ iterating (%) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for tau in taus:
        cells = [tau]
        for key in ("tah", "tahplus"):
            entry = sweep.get(key, {}).get(tau)
            if entry is None:
                cells += ["–", "–"]
                continue
            cells.append(_cell(entry["accuracy"], 100.0, 1))
            cells.append(_cell(entry["iter_share"], 100.0, 1))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"\nStandard, for reference: {_cell(standard, 100.0, 1)} % "
        f"(τ = 1 would be the stage-1 backbone alone)."
    )
    return "\n".join(lines) + "\n"


def _stage_of(job: str) -> str:
    step = job.split("/", 1)[-1]
    for prefix in ("eval", "tokens", "label", "sweep"):
        if step.startswith(prefix):
            return prefix
    return step


def timing_table(timings: dict[str, Any]) -> str:
    """Wall and CPU seconds per kind of step, summed over seeds."""
    totals: dict[str, list[float]] = {}
    for job, t in timings.items():
        entry = totals.setdefault(_stage_of(job), [0.0, 0.0, 0])
        entry[0] += float(t.get("wall_s", 0.0))
        entry[1] += float(t.get("cpu_s", 0.0))
        entry[2] += 1
    lines = ["| step | jobs | wall (s, summed) | CPU (s) |", "|---|---:|---:|---:|"]
    for stage, (wall, cpu, n) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| {stage} | {n} | {wall:.0f} | {cpu:.0f} |")
    return "\n".join(lines) + "\n"


def plot_results(results: dict[str, Any], path: str | Path) -> None:
    """Answer accuracy and hard / easy next-token accuracy per method, with seed dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = results["methods"]
    agg = results["aggregate"]
    labels = [m["label"] for m in methods]
    sweep = results.get("sweep") or {}
    panels = 4 if any(sweep.values()) else 3
    fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 3.8))
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
        ax.set_xticks(range(len(methods)), labels)
        ax.set_title(title)
        finite = [v for v in means if v > 0]
        if column == "easy_acc" and finite:
            ax.set_ylim(max(0.0, min(finite) - 3), 100)
    if panels == 4:
        ax = axes[3]
        for key, label in (("tah", "TaH"), ("tahplus", "TaH+")):
            taus = sorted(sweep.get(key, {}), key=float)
            ys = [sweep[key][t]["accuracy"]["mean"] for t in taus]
            pts = [(float(t), 100 * y) for t, y in zip(taus, ys) if y is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        standard = agg["standard"]["accuracy"]["mean"]
        if standard is not None:
            ax.axhline(100 * standard, color="black", ls="--", lw=1, label="Standard")
        ax.set(xlabel="decider threshold τ", title="answer accuracy (%) vs τ")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    seeds = len(results["per_seed"])
    fig.suptitle(f"tah repro {results['config']['preset']}: mean ± std over {seeds} seed(s)")
    fig.tight_layout()
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def write_report(results: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """``results.json``, ``results.md`` and ``results.png`` in ``out``."""
    out = Path(out)
    config = results["config"]
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "results.png"}
    write_json(paths["json"], results)
    seeds = ", ".join(str(s) for s in config["seeds"])
    hard = [
        s["labels"]["test"]["supervised_hard_ratio"]
        for s in results["per_seed"].values()
        if s["labels"]["test"]["supervised_hard_ratio"] is not None
    ]
    hard_text = f"{100 * statistics.fmean(hard):.1f} %" if hard else "n/a"
    layers = [s["pruned_layer"] for s in results["per_seed"].values()]
    text = [
        f"# tah repro {config['preset']}",
        "",
        f"Seeds {seeds}; {results['data'].get('test')} held-out problems (difficulty "
        f"{config['difficulty']}), greedy decoding; hard tokens = tokens the pretrained base "
        f"mispredicts ({hard_text} of the supervised test tokens). Pruned layers per seed: "
        f"{layers}. The pretrained base, before any fine-tuning, answers "
        f"{_cell(results.get('base_accuracy') or {}, 100.0, 1)} % correctly.",
        "",
        markdown_table(results),
        "¹ Teacher-forced only: the stage-1 model with the reference labels deciding which "
        "tokens iterate (the paper's oracle); no generation is possible with it.",
        "² The same stage-1 model with no token iterating: what its backbone does alone, so "
        "the gap to the oracle row is what the second pass adds.",
        "",
        "Hard/easy-token accuracy: next-token argmax accuracy on the labelled held-out "
        "solutions, read through the TaH forward with each model's own routing. Avg depth "
        "and tokens iterating: over generated tokens. Params: everything the model holds "
        "(base + LoRA + decider).",
        "",
    ]
    sweep = sweep_table(results)
    if sweep:
        text += [
            "## Decider threshold",
            "",
            f"The table uses τ = {config['threshold']:g} (the run's `threshold` setting). "
            "The same models at every τ of the sweep, on the same test problems:",
            "",
            sweep,
        ]
    if results.get("timings"):
        text += ["## Time per step", "", timing_table(results["timings"])]
    with atomic_file(paths["md"], "w", encoding="utf-8") as handle:
        handle.write("\n".join(text))
    plot_results(results, paths["png"])
    return paths
