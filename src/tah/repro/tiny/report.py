"""The reproduction's report: per-seed numbers gathered from the run folder, mean ± std, the
pre-registered readout with paired tests, written as Markdown, JSON and plots.

Every number is read back from the artefacts the steps wrote (``tah eval`` summaries and
samples, the token-accuracy and decider JSON, ``tah label`` metadata, ``tah prune`` reports,
training logs), never from memory, so the report can be rebuilt from a finished run folder at
any time (:func:`collect_results` + :func:`write_report`).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from tah.io import atomic_file, write_json
from tah.repro.plots import plot_accuracy_vs_iterating, plot_results
from tah.repro.stats import mcnemar_from_runs, mean_std
from tah.repro.tiny.config import ReproConfig
from tah.repro.tiny.methods import COMPARISONS, METHODS, ROUTING_ROWS
from tah.repro.tiny.tables import (
    COLUMNS,
    _cell,
    decider_section,
    markdown_table,
    readout_section,
    rich_table,
    routing_table,
    sweep_table,
    timing_table,
)

__all__ = [
    "COLUMNS",
    "collect_results",
    "correct_by_problem",
    "eval_numbers",
    "read_json",
    "sweep_points",
    "markdown_table",
    "plot_results",
    "preregistration",
    "rich_table",
    "timing_table",
    "write_report",
]

_mean_std = mean_std  # the name earlier versions of this module exported privately

DECIDER_METRICS = ("precision", "recall", "auc", "predicted_share", "base_rate")


def preregistration(config: ReproConfig) -> dict[str, Any]:
    """The readout, fixed by the settings before any model is trained or tested."""
    return {
        "primary_metric": (
            f"answer accuracy (exact final answer, greedy decoding, max {config.max_new_tokens} "
            f"new tokens) on the {config.n_test} test problems of data_seed {config.data_seed}"
        ),
        "tau": config.threshold,
        "seeds": list(config.seeds),
        "labeller": config.labeller,
        "summary": "mean ± sample std over seeds",
        "paired_test": "exact two-sided McNemar test per seed on the same test problems",
        "comparisons": [f"{a} vs {b}" for a, b in COMPARISONS],
        "tau_sweep": "reported beside the table, never selected from",
        "validation": (
            "decider variants and tau are compared on the validation problems only; the "
            "'tahplus_val' row takes the highest validation accuracy (ties: default decider, "
            "then larger tau) and is then evaluated once on the test problems"
        ),
    }


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def eval_numbers(summary: dict[str, Any] | None) -> dict[str, Any]:
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


def correct_by_problem(run_dir: Path) -> dict[str, bool] | None:
    """problem id -> whether the (single, greedy) sample was right; None if the run is absent."""
    path = run_dir / "samples.jsonl"
    if not path.is_file():
        return None
    out: dict[str, bool] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                out[str(row["problem_id"])] = bool(row.get("correct"))
    return out


def sweep_points(sweep: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {
        f"{p['tau']:g}": {
            "accuracy": p.get("mean_accuracy"),
            "iter_share": p.get("mean_iter_share"),
        }
        for p in (sweep or {}).get("points", [])
    }


def _stat(values: list[Any]) -> dict[str, Any]:
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "values": values}


def _seed_results(config: ReproConfig, out: Path, seed: int) -> dict[str, Any]:
    sd = out / f"seed{seed}"
    row: dict[str, Any] = {}
    for key in [m.key for m in METHODS] + list(ROUTING_ROWS):
        row[key] = {
            **eval_numbers(read_json(sd / "eval" / key / "summary.json")),
            **_token_numbers(read_json(sd / "tokens" / f"{key}.json")),
        }
    labels = {}
    for split in ("train", "validation", "test"):
        stats = (read_json(sd / "labels" / split / "tah_labels.json") or {}).get("stats") or {}
        labels[split] = {
            "supervised_hard_ratio": stats.get("supervised_hard_ratio"),
            "supervised_tokens": stats.get("supervised_tokens"),
        }
    correct = {
        key: correct_by_problem(sd / "eval" / key)
        for key in {k for pair in COMPARISONS for k in pair}
    }
    paired = {}
    for first, second in COMPARISONS:
        if correct[first] is not None and correct[second] is not None:
            paired[f"{first} vs {second}"] = mcnemar_from_runs(correct[first], correct[second])
    study = {}
    variants = ["default", *config.decider_variants]
    for variant in variants:
        study[variant] = {
            "validation_scores": read_json(sd / "validation" / "decider" / f"{variant}.json") or {},
            "validation_sweep": sweep_points(
                read_json(sd / "validation" / "sweep" / variant / "sweep.json")
            ),
        }
    prune = read_json(sd / "pruned" / "prune_report.json") or {}
    return {
        "methods": row,
        "base": eval_numbers(read_json(sd / "eval" / "base" / "summary.json")),
        "sweep": {
            k: sweep_points(read_json(sd / "sweep" / k / "sweep.json")) for k in ("tah", "tahplus")
        },
        "labels": labels,
        "decider_test": {
            k: read_json(sd / "decider" / f"{k}.json") or {} for k in ("tah", "tahplus")
        },
        "decider_study": study,
        "selection": read_json(sd / "eval" / "tahplus_val" / "selection.json"),
        "paired_tests": paired,
        "wide": read_json(sd / "wide_base" / "widen.json"),
        "pruned_layer": prune.get("removed"),
        "prune_ppl": [prune.get("base_ppl"), prune.get("pruned_ppl")],
        "pretrain_final_loss": _read_last_train(sd / "base" / "train_log.jsonl").get("loss"),
    }


def collect_results(config: ReproConfig, out: str | Path, data_info: dict[str, Any]) -> dict:
    """Per-seed numbers of every row, their mean / std over seeds, and the readout."""
    out = Path(out)
    per_seed = {str(seed): _seed_results(config, out, seed) for seed in config.seeds}
    seeds = list(per_seed.values())
    aggregate: dict[str, dict[str, Any]] = {}
    for key in [m.key for m in METHODS] + list(ROUTING_ROWS):
        aggregate[key] = {
            column: _stat([s["methods"][key].get(column) for s in seeds]) for column, *_ in COLUMNS
        }
    sweep_agg: dict[str, dict[str, Any]] = {}
    for key in ("tah", "tahplus"):
        taus = sorted({t for s in seeds for t in s["sweep"][key]}, key=float)
        sweep_agg[key] = {
            tau: {
                metric: _stat([s["sweep"][key].get(tau, {}).get(metric) for s in seeds])
                for metric in ("accuracy", "iter_share")
            }
            for tau in taus
        }
    decider_agg = {
        key: {m: _stat([s["decider_test"][key].get(m) for s in seeds]) for m in DECIDER_METRICS}
        for key in ("tah", "tahplus")
    }
    study_agg: dict[str, Any] = {}
    for variant in ["default", *config.decider_variants]:
        entries = [s["decider_study"][variant] for s in seeds]
        taus = sorted({t for e in entries for t in e["validation_sweep"]}, key=float)
        study_agg[variant] = {
            "scores": {
                m: _stat([e["validation_scores"].get(m) for e in entries]) for m in DECIDER_METRICS
            },
            "sweep": {
                tau: {
                    metric: _stat([e["validation_sweep"].get(tau, {}).get(metric) for e in entries])
                    for metric in ("accuracy", "iter_share")
                }
                for tau in taus
            },
        }
    readout = {
        "preregistered": preregistration(config),
        "primary": {
            key: aggregate[key]["accuracy"] for key in [m.key for m in METHODS] + ["tahplus_val"]
        },
        "paired_tests": {
            f"{a} vs {b}": {
                seed: per_seed[seed]["paired_tests"].get(f"{a} vs {b}") for seed in per_seed
            }
            for a, b in COMPARISONS
        },
    }
    return {
        "config": config.to_dict(),
        "readout": readout,
        "base_accuracy": _stat([s["base"].get("accuracy") for s in seeds]),
        "sweep": sweep_agg,
        "decider": decider_agg,
        "decider_study": study_agg,
        "data": data_info,
        "methods": [
            {"key": m.key, "label": m.label, "description": m.description} for m in METHODS
        ],
        "routing_rows": {k: v[0] for k, v in ROUTING_ROWS.items()},
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


def write_report(results: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """``results.json``, ``results.md``, ``results.png`` and ``accuracy_vs_iterating.png``."""
    out = Path(out)
    config = results["config"]
    paths = {
        "json": out / "results.json",
        "md": out / "results.md",
        "png": out / "results.png",
        "tradeoff": out / "accuracy_vs_iterating.png",
    }
    write_json(paths["json"], results)
    seeds = ", ".join(str(s) for s in config["seeds"])
    seeds_list = list(results["per_seed"].values())
    hard = [s["labels"]["test"]["supervised_hard_ratio"] for s in seeds_list]
    hard = [h for h in hard if h is not None]
    hard_text = f"{100 * statistics.fmean(hard):.1f} %" if hard else "n/a"
    layers = [s["pruned_layer"] for s in seeds_list]
    widths = [(s.get("wide") or {}).get("intermediate_size") for s in seeds_list]
    labeller = (
        "the fine-tuned Standard model"
        if config["labeller"] == "standard"
        else "the pretrained base"
    )
    text = [
        f"# tah repro {config['preset']}",
        "",
        f"Seeds {seeds}; {results['data'].get('test')} held-out test problems and "
        f"{results['data'].get('validation')} validation problems (difficulty "
        f"{config['difficulty']}), greedy decoding. Hard tokens = tokens {labeller} "
        f"mispredicts ({hard_text} of the supervised test tokens). Every fine-tuned row reads "
        f"the same rows in the same order for {config['finetune_steps']} steps. Pruned layer "
        f"per seed: {layers} of {config['num_layers']}. Standard-wide MLP width per seed: "
        f"{widths} (base {config['intermediate_size']}). The pretrained base, before any "
        f"fine-tuning, answers {_cell(results.get('base_accuracy') or {}, 100.0, 1)} % "
        "correctly.",
        "",
        "## Pre-registered readout",
        "",
        readout_section(results),
        "## All rows",
        "",
        markdown_table(results),
        "Hard/easy-token accuracy: next-token argmax accuracy on the labelled test solutions, "
        "read teacher-forced through the TaH forward with each model's own routing (Standard "
        "scores 0 % / 100 % by definition when it is the labeller). Avg depth and tokens "
        "iterating: over generated tokens. Params: everything the model holds.",
        "",
        "## Routing: learned, oracle, depth 1 only",
        "",
        routing_table(results),
        "Oracle, answer accuracy: `tah eval --backend oracle` with the labeller as reference (a "
        "token iterates when the model's depth-1 guess differs from the labeller's greedy "
        "token, docs/method.md §7). Oracle, token accuracy: teacher-forced with the labels routing "
        "(hard tokens iterate, as in stage-1 training). Depth 1 only: `--decider never`, the "
        "same weights with no token iterating.",
        "",
        "## Decider",
        "",
        decider_section(results),
    ]
    sweep = sweep_table(results)
    if sweep:
        text += [
            "## Decider threshold on the test problems (reported, never selected from)",
            "",
            f"The table uses τ = {config['threshold']:g}, fixed in advance:",
            "",
            sweep,
        ]
    if results.get("timings"):
        text += ["## Time per step", "", timing_table(results["timings"])]
    with atomic_file(paths["md"], "w", encoding="utf-8") as handle:
        handle.write("\n".join(text))
    plot_results(results, paths["png"])
    plot_accuracy_vs_iterating(results, paths["tradeoff"])
    return paths
