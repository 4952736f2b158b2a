"""The report of ``tah repro twohop``: its results document (:mod:`tah.repro.twohop.results`)
written as JSON, Markdown and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tah.io import atomic_file, write_json
from tah.repro.plots import pyplot, save_figure
from tah.repro.twohop.cost import fair_markdown
from tah.repro.twohop.results import ARMS, COMPARISONS, TAH_ARMS

_LABELS = {
    "standard": "Standard ({n}L)",
    "wide": "Standard wide ({n}L, ≥ TaH+ params)",
    "alwaysthink": "AlwaysThink ({n}L, all tokens depth 2)",
    "tahplus": "TaH+ ({n}L, learned decider, τ fixed)",
    "oracle": "TaH+ oracle routing",
    "depth1": "TaH+ depth 1 only",
    "standard_bare": "Standard ({n}L, bare rows)",
    "alwaysthink_bare": "AlwaysThink ({n}L, bare rows)",
}


def labels(config: dict[str, Any]) -> dict[str, str]:
    """Arm names with the base's depth (``shallow_layers``) filled in."""
    return {arm: text.format(n=config["shallow_layers"]) for arm, text in _LABELS.items()}


def _p_text(p: float) -> str:
    # The exact tail underflows a float past ~1e-308: say so instead of printing "p = 0".
    return "p < 1e-300" if p == 0 else f"p = {p:.3g}"


# ------------------------------------------------------------------ Markdown
def _pm(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    return f"{stat['mean']:.1f} ± {stat['std']:.1f}"


def _num(x: float | None) -> str:
    return "not run" if x is None else f"{x:.1f}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _rounds_text(run: dict[str, Any]) -> str:
    """Validation one-hop after S and each round; with restarts, every attempt (kept one marked)."""

    def chain(rounds: list[dict[str, Any]]) -> str:
        return " → ".join(f"{100 * r['validation_one_hop']:.1f}" for r in rounds)

    attempts = run.get("attempts", [])
    if len(attempts) <= 1:
        return chain(run.get("rounds", []))
    kept = run.get("attempt_kept")
    return "; ".join(
        f"attempt {a['attempt']}{' (kept)' if a['attempt'] == kept else ''}: {chain(a['rounds'])}"
        for a in attempts
    )


def _curriculum_text(cfg: dict[str, Any], task: dict[str, Any]) -> str:
    first = cfg.get("base_first_pairs")
    if first is None or int(first) >= int(task["pairs"]):
        return ""
    return f"; tables of {first} pairs in these S steps, of {task['pairs']} after"


def _decider_text(cfg: dict[str, Any]) -> str:
    """How TaH+'s learned decider is built and trained (stage 2)."""
    share = cfg.get("decider_written_share")
    share = cfg.get("finetune_written_share", 0.0) if share is None else share
    reads = "hidden states of " + (
        "every layer" if cfg.get("decider_reads") == "all" else "the middle and last layers"
    )
    if cfg.get("decider_previous_token"):
        reads += " for the token and for the token before it (an extension of the paper's)"
    return (
        f"TaH+'s decider: an MLP over the {reads} and its top-k logits, trained "
        f"{cfg['decider_steps']} steps (stage 2, backbone frozen) on batches "
        f"{100 * share:.0f} % written-out, the rest bare; τ = {cfg['threshold']}."
    )


def _gate_section(results: dict[str, Any]) -> list[str]:
    """The header, how the gate's models are made, its rules and its per-seed table."""
    cfg, gate = results["config"], results["gate"]
    shallow, deep = cfg["shallow_layers"], cfg["deep_layers"]
    written = bool(cfg.get("base_writes_intermediate"))
    lines = [
        "# `tah repro twohop` results",
        "",
        f"Preset `{cfg['preset']}`, seeds {cfg['seeds']}; task {results['task']}. "
        f"Accuracies in % on {cfg['test_problems']} held-out test problems (teacher-forced: "
        "earlier queries' gold answers are in context). Query-blind two-hop baseline: "
        f"{100 / results['task']['pairs']:.1f} %.",
        "",
        "## Gate (Standard models only, recorded before any TaH model was trained)",
        "",
        f"The base: {shallow} layers trained from scratch for S = {cfg['base_steps']} steps (lr "
        f"{cfg['lr']}, batch {cfg['batch']}{_curriculum_text(cfg, results['task'])}), "
        f"then up to {cfg['base_max_rounds']} more rounds of "
        f"{cfg['base_round_steps']} steps while its one-hop accuracy on validation problems is "
        f"under {gate['rules']['base_one_hop_min']} %; still under it, the base starts again "
        f"from a fresh initialisation, at most {cfg.get('base_restarts', 0)} times. "
        "Every other model starts from the base and "
        f"trains F = {cfg['finetune_steps']} steps (lr {cfg['finetune_lr']}) on the same rows: "
        f"Standard, wide (≥ TaH+'s parameters) and deep (the base grown to {deep} layers, the "
        "new layers' output projections starting at zero).",
        "",
        *(
            [
                "Written-out base: the base trains on two-hop queries with their intermediate "
                "written (`gf x F(x) G(F(x))`); every other model trains, and every model is "
                "tested, on the bare answer (`gf x G(F(x))`).",
                "",
            ]
            if written
            else []
        ),
        *(
            [
                f"Fine-tuning mix: {100 * cfg['finetune_written_share']:.0f} % of every "
                "fine-tuning batch (every arm, TaH+'s stage 1) is in the written-out format, the "
                "rest bare; every test is bare.",
                "",
            ]
            if cfg.get("finetune_written_share")
            else []
        ),
        _decider_text(cfg),
        "",
        f"Rules (every seed): the base answers ≥ {gate['rules']['base_one_hop_min']} % of "
        "one-hop test queries; on two-hop test queries, deep − Standard ≥ "
        f"{gate['rules']['deep_minus_standard_min']} points, |Standard 2F − Standard| ≤ "
        f"{gate['rules']['more_steps_change_max']} and wide − Standard ≤ "
        f"{gate['rules']['wide_minus_standard_max']}.",
        "",
        f"| seed | base {shallow}L | Standard {shallow}L (+ F) | Standard (+ 2F) "
        f"| wide {shallow}L (+ F) | deep {deep}L (+ F) | one-hop (base / deep) | checks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seed, row in sorted(gate["per_seed"].items()):
        a, o = row["two_hop"], row["one_hop"]
        mark = {True: "✓", False: "✗", None: "not run"}
        ok = ", ".join(f"{k} {mark[v]}" for k, v in row["checks"].items())
        lines.append(
            f"| {seed} | {_num(a.get('base'))} | {_num(a.get('standard'))} | "
            f"{_num(a.get('standard2x'))} | {_num(a.get('wide'))} | {_num(a.get('deep'))} | {_num(o.get('base'))} / "
            f"{_num(o.get('deep'))} | {ok} |"
        )
    return lines


def _gate_runs_section(results: dict[str, Any]) -> list[str]:
    """Every Standard-only run by query kind, with its wall time and base rounds."""
    written = bool(results["config"].get("base_writes_intermediate"))
    lines: list[str] = []
    lines += [
        "",
        "Standard-only runs by query kind (f and g: one lookup; gf: two), with the job's wall "
        "time (base rounds: validation one-hop accuracy after each):",
        "",
        "| seed | model | params | steps | f | g | gf | gf answered F(x) | wall (s) | rounds |"
        + (" written gf: 2nd step |" if written else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if written else ""),
    ]
    for seed, runs in sorted(results.get("gate_runs", {}).items()):
        for name, run in runs.items():
            acc = run["test"]["accuracy"]
            rounds = _rounds_text(run)
            lines.append(
                f"| {seed} | {name} ({run.get('layers', '?')}L) | {run['parameters']:,} | "
                f"{run['steps']} | {_pct(acc['f'])} | {_pct(acc['g'])} | {_pct(acc['gf'])} | "
                f"{_pct(run['test'].get('two_hop_predicted_intermediate'))} | "
                f"{run.get('wall_s', float('nan')):.0f} | {rounds or '–'} |"
                + (f" {_pct(run.get('written_second_step'))} |" if written else "")
            )
    return lines


def _verdict_section(results: dict[str, Any]) -> list[str]:
    """The gate's verdict, what follows from it, and the readout registered in advance."""
    gate = results["gate"]
    lines: list[str] = []
    lines += [
        "",
        f"**Gate {'passed' if gate['passed'] else 'FAILED'}** "
        f"(recorded {gate.get('recorded_at', '?')}).",
        "",
    ]
    tah_trained = any(
        arm in row for row in (results.get("per_seed") or {}).values() for arm in TAH_ARMS
    )
    if not gate["passed"] and tah_trained:
        lines += [
            "The TaH arms below were trained although the gate failed (gate not enforced: "
            "`--set enforce_gate=false`, or `--quick`): read them as exploratory, not as a test "
            "of TaH's premise (`--quick` numbers mean nothing at all).",
            "",
        ]
    if results.get("stopped"):
        lines += [f"Stopped: {results['stopped']}", ""]
    readout = results.get("readout")
    if readout:
        lines += [
            "## Readout (fixed in advance)",
            "",
            f"Registered {readout.get('registered_at', '?')}: primary metric "
            f"{readout['primary_metric']}; τ = {readout['threshold_tau']} (sweep "
            f"{readout['tau_sweep']} {readout['tau_sweep_use']}); {readout['aggregate']}; "
            f"{readout['tests']}.",
            "",
        ]
    return lines


def _arms_section(results: dict[str, Any], agg: dict[str, Any]) -> list[str]:
    """The arms' accuracies over seeds, the paired tests, and the split by the base's outcome."""
    cfg = results["config"]
    shallow, names = cfg["shallow_layers"], labels(cfg)
    lines: list[str] = []
    lines += [
        f"## Fine-tuning from the {shallow}-layer base "
        f"({cfg['finetune_steps']} steps, lr {cfg['finetune_lr']}, identical rows)",
        "",
        "| model | two-hop | one-hop | all queries | tokens at depth 2 (%) "
        "| answers at depth 2 (%) | two-hop answered F(x) (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in (*ARMS, "oracle", "depth1"):
        if arm in agg:
            s = agg[arm]
            lines.append(
                f"| {names[arm]} | {_pm(s['two_hop'])} | {_pm(s['one_hop'])} | "
                f"{_pm(s.get('all_queries'))} | {_pm(s['share_tokens_iterating'])} | "
                f"{_pm(s['share_answers_iterating'])} | "
                f"{_pm(s.get('two_hop_predicted_intermediate'))} |"
            )
    lines += [
        "",
        "The last column is how often a two-hop answer is the intermediate F(x); on TaH+'s "
        "depth 1 alone it shows whether the first pass hands the second pass the token its "
        "second lookup needs.",
        "",
        "Paired exact McNemar on two-hop test queries (first right only / second right only, p):",
        "",
        "| seed | " + " | ".join(f"{a} vs {b}" for a, b in COMPARISONS) + " |",
        "|---|" + "---|" * len(COMPARISONS),
    ]
    for seed, row in sorted(results["per_seed"].items()):
        cells = []
        for a, b in COMPARISONS:
            t = row["mcnemar_two_hop"].get(f"{a}_vs_{b}")
            cells.append(
                "–" if t is None else f"{t['only_first']} / {t['only_second']}, {_p_text(t['p'])}"
            )
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    split_rows = [
        (seed, split, row["two_hop_by_base_outcome"][split])
        for seed, row in sorted(results["per_seed"].items())
        if "two_hop_by_base_outcome" in row
        for split in ("base_wrong", "base_right")
    ]
    if split_rows:
        lines += [
            "",
            "Two-hop accuracy split by the base's own outcome on the query (oracle routing "
            "iterates exactly the base's wrong answers, so on base-wrong queries it shows "
            "what the second pass does, and on base-right ones what depth 1 keeps):",
            "",
            "| seed | queries | n | TaH+ oracle | TaH+ learned | TaH+ depth 1 | Standard |",
            "|---|---|---|---|---|---|---|",
        ]
        for seed, split, m in split_rows:
            lines.append(
                f"| {seed} | {split.replace('_', ' ')} | {m['queries']} | "
                f"{_pct(m.get('oracle'))} | {_pct(m.get('learned'))} | "
                f"{_pct(m.get('depth1'))} | {_pct(m.get('standard'))} |"
            )
    return lines


def _decider_section(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    lines += [
        "## Decider (held-out labels: the base's errors)",
        "",
        "| seed | split | positions | precision | recall | AUC | hard share | predicted share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seed, row in sorted(results["per_seed"].items()):
        for split, by_where in (row.get("decider") or {}).items():
            for where, m in by_where.items():
                auc = "–" if m["auc"] is None else f"{m['auc']:.3f}"
                lines.append(
                    f"| {seed} | {split} | {where} | {_pct(m['precision'])} | "
                    f"{_pct(m['recall'])} | {auc} | {_pct(m['hard_share'])} | "
                    f"{_pct(m['predicted_share'])} |"
                )
    return lines


def _sweep_section(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    lines += [
        "",
        "## τ sweep (reported, never selected from)",
        "",
        "| seed | τ | two-hop | one-hop | tokens at depth 2 (%) |",
        "|---|---|---|---|---|",
    ]
    for seed, row in sorted(results["per_seed"].items()):
        for tau, s in (row.get("tau_sweep") or {}).items():
            lines.append(
                f"| {seed} | {tau} | {_pct(s['accuracy']['gf'])} | "
                f"{_pct(s['accuracy']['one_hop'])} | {_pct(s['share_tokens_iterating'])} |"
            )
    return lines


def _footer(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if not results.get("complete") and not results.get("stopped"):
        lines += [
            "",
            "**Incomplete run**: not every seed and arm has finished; rerun the same "
            "command to finish (finished jobs are skipped).",
        ]
    timings = results.get("timings") or {}
    if timings:
        total = sum(t["wall_s"] for t in timings.values())
        lines += [
            "",
            f"Job wall time summed over workers: {total / 60:.1f} min ({len(timings)} jobs timed).",
        ]
    return lines


def markdown(results: dict[str, Any]) -> str:
    lines = _gate_section(results) + _gate_runs_section(results) + _verdict_section(results)
    agg = results.get("aggregate") or {}
    if agg:
        lines += _arms_section(results, agg) + ["", *fair_markdown(results)]
        lines += _decider_section(results) + _sweep_section(results)
    return "\n".join(lines + _footer(results)) + "\n"


# ------------------------------------------------------------------ plots
def _plot_curves(ax_curve: Any, results: dict[str, Any]) -> None:
    """Validation learning curves of the gate's runs."""
    styles = {"shallow": "C0", "base": "C0", "deep": "C2"}
    for seed, runs in sorted(results.get("gate_runs", {}).items()):
        for name, run in runs.items():
            curve = run.get("validation_curve") or []
            if curve:
                steps = [c["step"] for c in curve]
                first = seed == min(results["gate_runs"])
                ax_curve.plot(
                    steps,
                    [100 * c["two_hop"] for c in curve],
                    color=styles.get(name, "C7"),
                    label=f"{name} two-hop" if first else None,
                )
                ax_curve.plot(
                    steps,
                    [100 * c["one_hop"] for c in curve],
                    color=styles.get(name, "C7"),
                    ls="--",
                    label=f"{name} one-hop" if first else None,
                )
    ax_curve.set_xlabel("training step")
    ax_curve.set_ylabel("validation accuracy (%)")
    ax_curve.set_title("Gate runs: learning curves")
    ax_curve.legend(fontsize=7)


def _plot_gate(ax_gate: Any, results: dict[str, Any]) -> None:
    """Two-hop accuracy of the Standard-only models, one dot per seed."""
    cfg = results["config"]
    shallow, deep = cfg["shallow_layers"], cfg["deep_layers"]
    gate = results["gate"]["per_seed"]
    names = ("base", "standard", "standard2x", "wide", "deep")
    for i, name in enumerate(names):
        values = [row["two_hop"].get(name) for row in gate.values()]
        values = [v for v in values if v is not None]
        if not values:
            continue
        ax_gate.bar(i, sum(values) / len(values), color="C0" if name != "deep" else "C2")
        ax_gate.scatter([i] * len(values), values, color="k", s=10, zorder=3)
    ax_gate.axhline(100 / results["task"]["pairs"], color="grey", ls=":", label="query-blind")
    ax_gate.set_xticks(
        range(len(names)),
        [
            f"base {shallow}L",
            f"{shallow}L + F",
            f"{shallow}L + 2F",
            f"{shallow}L wide + F",
            f"{deep}L grown + F",
        ],
        fontsize=8,
    )
    ax_gate.set_ylabel("two-hop accuracy (%)")
    ax_gate.set_title("Gate: Standard models only")
    ax_gate.legend(loc="upper left", fontsize=8)
    ax_gate.set_ylim(0, 100)


def _plot_share(ax_share: Any, results: dict[str, Any]) -> None:
    """Accuracy against the share of tokens at depth 2: TaH+'s τ sweep and the other arms."""
    arm_names = labels(results["config"])
    for seed, row in sorted(results.get("per_seed", {}).items()):
        sweep = row.get("tau_sweep") or {}
        pts = sorted(
            (100 * s["share_tokens_iterating"], 100 * s["accuracy"]["gf"]) for s in sweep.values()
        )
        if pts:
            ax_share.plot(
                *zip(*pts, strict=True),
                "o-",
                color="C3",
                alpha=0.6,
                label="TaH+ τ sweep" if seed == min(results["per_seed"]) else None,
            )
        for arm, color, marker in (
            ("standard", "C0", "s"),
            ("wide", "C1", "D"),
            ("alwaysthink", "C4", "^"),
            ("alwaysthink_bare", "C5", "^"),
            ("standard_bare", "C9", "s"),
            ("oracle", "C2", "*"),
            ("depth1", "C7", "v"),
        ):
            if arm in row:
                ax_share.scatter(
                    100 * row[arm]["share_tokens_iterating"],
                    100 * row[arm]["accuracy"]["gf"],
                    color=color,
                    marker=marker,
                    s=40,
                    label=arm_names[arm] if seed == min(results["per_seed"]) else None,
                )
    # TaH's points sit at a few percent and AlwaysThink's at 100: linear below 1 %, log above,
    # so both are readable (0 % stays on the axis).
    ax_share.set_xscale("symlog", linthresh=1.0)
    ax_share.set_xlim(-0.2, 150)
    ax_share.set_xlabel("tokens running depth 2 (%, log scale above 1)")
    ax_share.set_ylabel("two-hop accuracy (%)")
    ax_share.set_title("Accuracy vs share of tokens iterating")
    if results.get("per_seed"):
        ax_share.legend(fontsize=7, loc="lower right")
    else:
        ax_share.text(
            0.5,
            0.5,
            "no TaH model trained\n(the gate failed)",
            ha="center",
            va="center",
            transform=ax_share.transAxes,
        )


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, (ax_curve, ax_gate, ax_share) = plt.subplots(1, 3, figsize=(16, 4.2))
    _plot_curves(ax_curve, results)
    _plot_gate(ax_gate, results)
    _plot_share(ax_share, results)
    save_figure(fig, path)


def write_report(results: dict[str, Any], out: str | Path) -> dict[str, Path]:
    out = Path(out)
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "results.png"}
    write_json(paths["json"], results)
    with atomic_file(paths["md"], "w", encoding="utf-8") as handle:
        handle.write(markdown(results))
    plot(results, paths["png"])
    return paths
