"""The plateau study's report: the gate, the registered readout, every arm on the test problems.

Every number is read back from the files the steps wrote (``tah eval`` summaries and samples,
sweeps, decider scores, ``deepen.json`` / ``widen.json``), so the report can be rebuilt from a
run folder at any time. Accuracies are in percent throughout this study's results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tah.io import atomic_file, write_json
from tah.repro.plateau.arms import ARMS, COMPARISONS, GATE_ARMS, ROUTING_ROWS
from tah.repro.plateau.config import PlateauConfig
from tah.repro.plots import pyplot, save_figure
from tah.repro.stats import mcnemar_from_runs, over_seeds
from tah.repro.tiny.report import correct_by_problem, eval_numbers, read_json, sweep_points
from tah.repro.tiny.tables import timing_table

__all__ = ["collect", "preregistration", "write_report"]

ROWS = (*[a.key for a in ARMS], *ROUTING_ROWS)
LABELS = {**{a.key: a.label for a in ARMS}, **ROUTING_ROWS}
DECIDER_ARMS = ("tahplus", "tahplus_prev")
DECIDER_METRICS = ("precision", "recall", "auc", "predicted_share", "base_rate")


def preregistration(config: PlateauConfig) -> dict[str, Any]:
    """The readout, fixed by the settings before any TaH model is trained."""
    return {
        "primary_metric": (
            f"answer accuracy (exact final answer, greedy, max {config.max_new_tokens} new "
            f"tokens) on the {config.n_test} test problems of data_seed {config.data_seed}"
        ),
        "tau": config.threshold,
        "tau_origin": "the tiny study's registered tau, not tuned on this study",
        "seeds": list(config.seeds),
        "labeller": "the fine-tuned Standard model (finetune_steps)",
        "summary": "mean ± sample std over seeds, and every seed's value",
        "paired_test": "exact two-sided McNemar test per seed on the same test problems",
        "comparisons": [f"{a} vs {b}" for a, b in COMPARISONS],
        "tau_sweep": "reported beside the table, never selected from",
        "gate": "validation problems only, Standard-family models only, before any TaH model",
    }


def _layer_passes(config: dict[str, Any], key: str, avg_depth: float | None) -> float | None:
    """Decoder-layer passes per generated token: layers x mean depth (the cost column)."""
    layers = config["num_layers"] * (config["deep_factor"] if key == "deep" else 1)
    if key in ("standard", "standard_2x", "deep", "standard_wide"):
        return float(layers)
    return None if avg_depth is None else layers * float(avg_depth)


def _seed(config: dict[str, Any], out: Path, seed: int) -> dict[str, Any]:
    sd = out / f"seed{seed}"
    test: dict[str, Any] = {}
    for key in ROWS:
        numbers = eval_numbers(read_json(sd / "eval" / key / "summary.json"))
        if numbers.get("accuracy") is not None:
            numbers["accuracy"] = 100.0 * numbers["accuracy"]
        if numbers.get("iter_share") is not None:
            numbers["iter_share"] = 100.0 * numbers["iter_share"]
        numbers["layer_passes"] = _layer_passes(config, key, numbers.get("avg_depth"))
        test[key] = numbers
    correct = {key: correct_by_problem(sd / "eval" / key) for key in ROWS}
    paired = {
        f"{a} vs {b}": mcnemar_from_runs(correct[a], correct[b])
        for a, b in COMPARISONS
        if correct[a] is not None and correct[b] is not None
    }
    hard = (read_json(sd / "labels" / "test" / "tah_labels.json") or {}).get("stats") or {}
    return {
        "test": test,
        "paired_tests": paired,
        "sweep": {
            k: sweep_points(read_json(sd / "sweep" / k / "sweep.json")) for k in DECIDER_ARMS
        },
        "decider_test": {k: read_json(sd / "decider" / f"{k}.json") or {} for k in DECIDER_ARMS},
        "deepen": read_json(sd / "deep_base" / "deepen.json"),
        "widen": read_json(sd / "wide_base" / "widen.json"),
        "hard_token_share_test": hard.get("supervised_hard_ratio"),
    }


def collect(
    config: PlateauConfig, out: str | Path, info: dict[str, Any], state: dict[str, Any]
) -> dict[str, Any]:
    """results.json: the gate, the readout, per-seed numbers and the mean ± std over seeds."""
    out = Path(out)
    settings = config.to_dict()
    per_seed = {str(s): _seed(settings, out, s) for s in config.seeds}
    seeds = list(per_seed.values())
    columns = ("accuracy", "iter_share", "avg_depth", "layer_passes", "params")
    aggregate = {
        key: {c: over_seeds([s["test"][key].get(c) for s in seeds]) for c in columns}
        for key in ROWS
    }
    sweep: dict[str, Any] = {}
    for key in DECIDER_ARMS:
        taus = sorted({t for s in seeds for t in s["sweep"][key]}, key=float)
        sweep[key] = {
            tau: {
                m: over_seeds([_pct(s["sweep"][key].get(tau, {}).get(m)) for s in seeds])
                for m in ("accuracy", "iter_share")
            }
            for tau in taus
        }
    decider = {
        key: {
            m: over_seeds([s["decider_test"][key].get(m) for s in seeds]) for m in DECIDER_METRICS
        }
        for key in DECIDER_ARMS
    }
    complete = all(aggregate[k]["accuracy"]["n"] == len(seeds) for k in ROWS)
    return {
        "study": "plateau",
        "units": {"accuracy": "percent", "iter_share": "percent of generated tokens"},
        "config": settings,
        "data": info,
        "gate": state.get("gate"),
        "gate_history": state.get("gate_history", []),
        "readout": state.get("readout"),
        "exploratory": bool(state.get("exploratory", True)),
        "stopped": state.get("stopped"),
        "arms": [{"key": a.key, "label": a.label, "description": a.description} for a in ARMS],
        "routing_rows": ROUTING_ROWS,
        "aggregate": aggregate,
        "sweep": sweep,
        "decider": decider,
        "per_seed": per_seed,
        "complete": complete,
        "timings": state.get("timings", {}),
        "wall_time_s_this_invocation": state.get("wall_time_s_this_invocation"),
    }


def _pct(value: float | None) -> float | None:
    return None if value is None else 100.0 * float(value)


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _stat(stat: dict[str, Any], digits: int = 1) -> str:
    if stat.get("mean") is None:
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def gate_table(results: dict[str, Any]) -> str:
    gate = results.get("gate") or {}
    head = "| seed | " + " | ".join(LABELS[k] for k in GATE_ARMS)
    lines = [head + " | 2x − 1x | deep − best Std | wide − Std | plateau | depth binds |"]
    lines.append("|---" * (len(GATE_ARMS) + 6) + "|")
    for seed, row in (gate.get("per_seed") or {}).items():
        acc = [_num(row["accuracy"].get(k)) for k in GATE_ARMS]
        gains = row.get("gains") or {}
        checks = row.get("checks") or {}
        cells = [_num(gains.get(g)) for g in ("longer_minus_standard", "deep_minus_best_standard")]
        cells.append(_num(gains.get("wide_minus_standard")))
        cells += [_yes(checks.get("plateau")), _yes(checks.get("depth_binds"))]
        lines.append(f"| {seed} | " + " | ".join(acc + cells) + " |")
    return "\n".join(lines) + "\n"


def _yes(flag: bool | None) -> str:
    return "–" if flag is None else ("yes" if flag else "**no**")


def arms_table(results: dict[str, Any]) -> str:
    lines = [
        "| arm | accuracy (%) | per seed | tokens iterating (%) | layer passes / token | params |",
        "|---|---|---|---|---|---|",
    ]
    for key in ROWS:
        agg = results["aggregate"][key]
        seeds = ", ".join(_num(v) for v in agg["accuracy"].get("values", []))
        params = agg["params"].get("mean")
        lines.append(
            f"| {LABELS[key]} | {_stat(agg['accuracy'])} | {seeds} | "
            f"{_stat(agg['iter_share'])} | {_stat(agg['layer_passes'], 2)} | "
            f"{'–' if params is None else f'{params / 1e3:.0f} K'} |"
        )
    return "\n".join(lines) + "\n"


def paired_table(results: dict[str, Any]) -> str:
    seeds = list(results["per_seed"])
    lines = ["| comparison | " + " | ".join(f"seed {s}: Δ points (p)" for s in seeds) + " |"]
    lines.append("|---" * (len(seeds) + 1) + "|")
    for a, b in COMPARISONS:
        cells = []
        for s in seeds:
            test = results["per_seed"][s]["paired_tests"].get(f"{a} vs {b}")
            if not test:
                cells.append("–")
                continue
            delta = 100.0 * (test["first_correct"] - test["second_correct"]) / max(1, test["n"])
            cells.append(f"{delta:+.1f} (p={test['p_value']:.3f})")
        lines.append(f"| {LABELS[a]} vs {LABELS[b]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sweep_table(results: dict[str, Any]) -> str:
    lines = ["| decider | τ | accuracy (%) | tokens iterating (%) |", "|---|---|---|---|"]
    for key, points in results["sweep"].items():
        for tau, point in points.items():
            lines.append(
                f"| {LABELS[key]} | {tau} | {_stat(point['accuracy'])} | "
                f"{_stat(point['iter_share'])} |"
            )
    return "\n".join(lines) + "\n"


def decider_table(results: dict[str, Any]) -> str:
    lines = ["| decider | " + " | ".join(DECIDER_METRICS) + " |", "|---" * 6 + "|"]
    for key, metrics in results["decider"].items():
        cells = [_stat(metrics[m], 3) for m in DECIDER_METRICS]
        lines.append(f"| {LABELS[key]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _verdict(results: dict[str, Any]) -> str:
    gate = results.get("gate") or {}
    if gate.get("passed"):
        return "**Gate passed** on the validation problems: the TaH arms below are the study."
    failed = [k for k, ok in (gate.get("checks") or {}).items() if not ok]
    return (
        f"**Gate failed** ({', '.join(failed) or 'incomplete'}): every TaH number below is "
        "**exploratory**, measured in a setting that does not meet the study's premise."
    )


def write_report(results: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """``results.json``, ``results.md`` and ``results.png`` in ``out``."""
    out = Path(out)
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "results.png"}
    write_json(paths["json"], results)
    config = results["config"]
    gate = results.get("gate") or {}
    text = [
        "# tah repro plateau",
        "",
        f"Seeds {config['seeds']}; difficulty {config['difficulty']}; a {config['num_layers']}-"
        f"layer Qwen3 (hidden {config['hidden_size']}) pretrained {config['pretrain_steps']} "
        f"steps, every arm fine-tuned {config['finetune_steps']} steps on the same rows (Standard "
        f"also {config['plateau_factor']}x). {results['data'].get('test')} test and "
        f"{results['data'].get('validation')} validation problems, greedy decoding, "
        f"τ = {config['threshold']:g}.",
        "",
        _verdict(results),
        "",
        f"## Gate (validation accuracy, %; recorded {gate.get('recorded_at', '–')})",
        "",
        gate_table(results),
        "Criteria: " + "; ".join((gate.get("criteria") or {}).values()) + ". Mean wide − "
        f"Standard: {_num(gate.get('wide_minus_standard_mean'))} points.",
        "",
        f"## Test problems (readout registered {(results.get('readout') or {}).get('registered_at', '–')})",
        "",
        arms_table(results),
        "Layer passes / token: decoder layers run per generated token (layers × mean depth). "
        "Oracle and depth-1 rows use TaH+'s stage-1 weights, which both deciders share.",
        "",
        "## Paired tests (McNemar, per seed)",
        "",
        paired_table(results),
        "## Deciders on the labelled test solutions",
        "",
        decider_table(results),
        f"## τ sweep on the test problems (reported, never selected from; the rows use "
        f"τ = {config['threshold']:g})",
        "",
        sweep_table(results),
    ]
    if results.get("timings"):
        text += ["## Time per step", "", timing_table(results["timings"])]
    with atomic_file(paths["md"], "w", encoding="utf-8") as handle:
        handle.write("\n".join(text))
    plot(results, paths["png"])
    return paths


def plot(results: dict[str, Any], path: str | Path) -> None:
    """Validation accuracy of the gate arms, test accuracy of every arm, seed dots."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.4), gridspec_kw={"width_ratios": [2, 5]})
    gate_rows = list(((results.get("gate") or {}).get("per_seed") or {}).values())
    for i, key in enumerate(GATE_ARMS):
        dots = [r["accuracy"][key] for r in gate_rows if r["accuracy"].get(key) is not None]
        if dots:
            axes[0].bar(i, sum(dots) / len(dots), color="#c9d9a8")
            axes[0].scatter([i] * len(dots), dots, color="black", s=10, zorder=3)
    axes[0].set_xticks(range(len(GATE_ARMS)), [LABELS[k] for k in GATE_ARMS], rotation=25)
    axes[0].set_title("gate: validation accuracy (%)")
    for i, key in enumerate(ROWS):
        stat = results["aggregate"][key]["accuracy"]
        if stat.get("mean") is not None:
            axes[1].bar(i, stat["mean"], yerr=stat["std"], capsize=4, color="#8fb3d9")
            axes[1].scatter([i] * len(stat["values"]), stat["values"], color="black", s=10)
    axes[1].set_xticks(range(len(ROWS)), [LABELS[k] for k in ROWS], rotation=25, ha="right")
    title = "test accuracy (%)" + (" — exploratory" if results.get("exploratory") else "")
    axes[1].set_title(title)
    save_figure(fig, path)
