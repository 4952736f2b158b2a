"""The reproduction's tables as text: Markdown sections and the terminal table.

Pure formatting of the ``results.json`` dictionary built by :mod:`tah.repro.tiny.report`; nothing
here reads the run folder.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "COLUMNS",
    "decider_section",
    "markdown_table",
    "readout_section",
    "rich_table",
    "routing_table",
    "sweep_table",
    "timing_table",
]

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


def _row(label: str, agg: dict[str, Any]) -> str:
    cells = [_cell(agg[col], scale, dec, params=col == "params") for col, _, scale, dec in COLUMNS]
    return "| " + " | ".join([label, *cells]) + " |"


def markdown_table(results: dict[str, Any]) -> str:
    """The paper-style table (mean ± std over seeds) of the methods."""
    headers = ["Method"] + [h for _, h, _, _ in COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for method in results["methods"]:
        lines.append(_row(method["label"], results["aggregate"][method["key"]]))
    return "\n".join(lines) + "\n"


def routing_table(results: dict[str, Any]) -> str:
    """The TaH models' answer accuracy under learned, oracle and depth-1-only routing."""
    agg = results["aggregate"]
    lines = [
        "| Model | Routing | Answer acc. (%) | Tokens iterating (%) | Hard-token acc. (%) "
        "| Easy-token acc. (%) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key, label in (("tah", "TaH"), ("tahplus", "TaH+")):
        for routing, row in (
            ("learned", key),
            ("oracle", f"{key}_oracle"),
            ("depth 1 only", f"{key}_depth1"),
        ):
            a = agg[row]
            lines.append(
                f"| {label} | {routing} | {_cell(a['accuracy'], 100, 1)} | "
                f"{_cell(a['iter_share'], 100, 1)} | {_cell(a['hard_acc'], 100, 1)} | "
                f"{_cell(a['easy_acc'], 100, 2)} |"
            )
    return "\n".join(lines) + "\n"


def readout_section(results: dict[str, Any]) -> str:
    readout = results["readout"]
    pre = readout["preregistered"]
    labels = {m["key"]: m["label"] for m in results["methods"]}
    labels |= results.get("routing_rows", {})
    lines = [
        f"Fixed before any test result was seen: primary metric = {pre['primary_metric']}; "
        f"τ = {pre['tau']:g}; seeds {pre['seeds']}; {pre['summary']}; {pre['paired_test']}; "
        f"the τ sweep is {pre['tau_sweep']}; {pre['validation']}.",
        "",
        "| Row | Answer acc. (%) | per seed |",
        "|---|---:|---|",
    ]
    for key, stat in readout["primary"].items():
        per = ", ".join("–" if v is None else f"{100 * v:.1f}" for v in stat["values"])
        lines.append(f"| {labels.get(key, key)} | {_cell(stat, 100, 1)} | {per} |")
    lines += [
        "",
        "Paired tests (per seed: problems only the first got right / only the second got "
        "right, exact McNemar p):",
        "",
        "| Comparison | " + " | ".join(f"seed {s}" for s in pre["seeds"]) + " |",
        "|---|" + "---|" * len(pre["seeds"]),
    ]
    for name, per_seed in readout["paired_tests"].items():
        a, b = name.split(" vs ")
        cells = []
        for seed in pre["seeds"]:
            t = per_seed.get(str(seed))
            cells.append(
                "–" if not t else f"{t['only_first']} / {t['only_second']}, p = {t['p_value']:.3g}"
            )
        lines.append(f"| {labels.get(a, a)} vs {labels.get(b, b)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def decider_section(results: dict[str, Any]) -> str:
    from tah.repro.tiny.decider_study import VARIANTS

    lines = [
        "The learned decider against the labels of held-out solutions (supervised tokens; "
        "positive = the labeller mispredicted it), at the run's τ:",
        "",
        "| Decider | Split | Precision | Recall | AUC | Predicted positive (%) | Base rate (%) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]

    def cells(scores: dict[str, Any]) -> str:
        return (
            f"{_cell(scores['precision'], 1, 3)} | {_cell(scores['recall'], 1, 3)} | "
            f"{_cell(scores['auc'], 1, 3)} | {_cell(scores['predicted_share'], 100, 1)} | "
            f"{_cell(scores['base_rate'], 100, 1)}"
        )

    for key, label in (("tah", "TaH"), ("tahplus", "TaH+")):
        lines.append(f"| {label} (reported) | test | {cells(results['decider'][key])} |")
    study = results.get("decider_study") or {}
    for variant, entry in study.items():
        what = (
            "default: " + _describe_default(results["config"])
            if variant == "default"
            else (VARIANTS[variant][0])
        )
        lines.append(f"| TaH+ {variant} ({what}) | validation | {cells(entry['scores'])} |")
    taus = sorted({t for e in study.values() for t in e["sweep"]}, key=float)
    if taus:
        lines += [
            "",
            "Validation answer accuracy (%) of each TaH+ decider at each τ (the only place "
            "where deciders and τ are compared):",
            "",
            "| Decider | " + " | ".join(f"τ = {t}" for t in taus) + " |",
            "|---|" + "---:|" * len(taus),
        ]
        for variant, entry in study.items():
            row = [_cell(entry["sweep"].get(t, {}).get("accuracy", {}), 100, 1) for t in taus]
            lines.append(f"| {variant} | " + " | ".join(row) + " |")
    picks = [
        f"seed {seed}: {s['selection']['decider']} at τ = {s['selection']['tau']:g}"
        for seed, s in results["per_seed"].items()
        if s.get("selection")
    ]
    if picks:
        val = results["aggregate"]["tahplus_val"]["accuracy"]
        lines += [
            "",
            f"Chosen on validation ({'; '.join(picks)}); on the test problems: "
            f"{_cell(val, 100, 1)} %.",
        ]
    return "\n".join(lines) + "\n"


def _describe_default(config: dict[str, Any]) -> str:
    return (
        f"pos_weight {config['decider_pos_weight']}, targets {config['decider_targets']}, "
        f"hidden {config['decider_hidden_dims']}"
    )


def rich_table(results: dict[str, Any]) -> Any:
    """A compact terminal version of the table (the Markdown file has every column)."""
    from rich.table import Table

    n = len(results["per_seed"])
    table = Table(title=f"mean ± std over {n} seed(s); full report in results.md")
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
    rows += [(label, key) for key, label in results.get("routing_rows", {}).items()]
    for label, key in rows:
        agg = results["aggregate"][key]
        cells = [
            _cell(agg[col], scale, min(dec, 1), params=col == "params")
            for col, _, scale, dec in COLUMNS
            if col in short
        ]
        table.add_row(label, *cells)
    return table


def sweep_table(results: dict[str, Any]) -> str:
    """Answer accuracy and share iterating against τ for TaH and TaH+ (mean ± std)."""
    sweep = results.get("sweep") or {}
    taus = sorted({t for v in sweep.values() for t in v}, key=float)
    if not taus:
        return ""
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
            cells += [_cell(entry["accuracy"], 100.0, 1), _cell(entry["iter_share"], 100.0, 1)]
        lines.append("| " + " | ".join(cells) + " |")
    standard = results["aggregate"]["standard"]["accuracy"]
    lines.append(f"\nStandard, for reference: {_cell(standard, 100.0, 1)} %.")
    return "\n".join(lines) + "\n"
