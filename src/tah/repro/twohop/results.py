"""The results document of ``tah repro twohop``: per-seed rows, aggregates over seeds and the
paired tests, collected from the jobs' ``result.json`` files (:mod:`tah.repro.twohop.report`
renders it as Markdown and plots)."""

from __future__ import annotations

import math
from typing import Any

from tah.data.twohop import TWO_HOP
from tah.repro.stats import mcnemar as mcnemar_p
from tah.repro.stats import over_seeds as mean_std
from tah.repro.twohop.config import BARE_JOBS

ARMS = ("standard", "wide", "alwaysthink", "tahplus")
TAH_ARMS = ("alwaysthink", "tahplus")
COMPARISONS = (("tahplus", "standard"), ("tahplus", "wide"), ("tahplus", "alwaysthink"))
# The format-fair controls (issue 23), where the run has them
FAIR_COMPARISONS = tuple(("tahplus", arm) for arm in BARE_JOBS)


def mcnemar(a: list[bool], b: list[bool]) -> dict[str, Any]:
    """Exact two-sided McNemar test on paired outcomes (binomial on the discordant pairs)."""
    if len(a) != len(b):
        raise ValueError("paired outcomes must have the same length")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    return {"only_first": only_a, "only_second": only_b, "p": mcnemar_p(only_a, only_b)}


def _two_hop(outcome: dict[str, Any]) -> list[bool]:
    kinds, correct = outcome["kinds"], outcome["correct"]
    return [c == "1" for k, c in zip(kinds, correct, strict=True) if int(k) == TWO_HOP]


def collect(state: dict[str, Any], runs_by_seed: dict[int, dict]) -> dict:
    """The results document: config, gate, readout, per-seed and aggregated numbers, tests."""
    results = dict(state)
    results["gate_runs"] = {
        str(seed): {
            name: {k: v for k, v in run.items() if k != "test"} | {"test": _strip(run["test"])}
            for name, run in runs.items()
            if name in ("shallow", "base", "standard2x", "deep")
        }
        for seed, runs in runs_by_seed.items()
    }
    finetune = {
        seed: {name: run for name, run in runs.items() if name in (*ARMS, "deep", *BARE_JOBS)}
        for seed, runs in runs_by_seed.items()
    }
    finetune = {seed: runs for seed, runs in finetune.items() if runs}
    per_seed: dict[str, dict] = {}
    for seed, runs in finetune.items():
        row: dict[str, Any] = {}
        for arm, run in runs.items():
            row[arm] = _strip(run["test"]) | {"parameters": run.get("parameters")}
            if arm == "tahplus":
                for extra in ("oracle", "depth1"):
                    row[extra] = _strip(run[extra])
                row["tau_sweep"] = run["tau_sweep"]
                row["decider"] = run["decider"]
        tests = {}
        for first, second in (*COMPARISONS, *FAIR_COMPARISONS):
            if first in runs and second in runs:
                tests[f"{first}_vs_{second}"] = mcnemar(
                    _two_hop(runs[first]["test"]), _two_hop(runs[second]["test"])
                )
        row["mcnemar_two_hop"] = tests
        if "tahplus" in runs and "base" in runs_by_seed[seed]:
            row["two_hop_by_base_outcome"] = _by_base_outcome(runs_by_seed[seed]["base"], runs)
        per_seed[str(seed)] = row
    results["per_seed"] = per_seed
    aggregate: dict[str, Any] = {}
    for arm in (*ARMS, "oracle", "depth1", "deep", *BARE_JOBS):
        rows = [r[arm] for r in per_seed.values() if arm in r]
        if not rows:
            continue
        aggregate[arm] = {
            "two_hop": mean_std([100 * r["accuracy"]["gf"] for r in rows]),
            "one_hop": mean_std([100 * r["accuracy"]["one_hop"] for r in rows]),
            "all_queries": mean_std([100 * r["accuracy"]["all"] for r in rows]),
            "share_tokens_iterating": mean_std([100 * r["share_tokens_iterating"] for r in rows]),
            "share_answers_iterating": mean_std([100 * r["share_answers_iterating"] for r in rows]),
            "two_hop_predicted_intermediate": mean_std(
                [100 * r.get("two_hop_predicted_intermediate", math.nan) for r in rows]
            ),
        }
    results["aggregate"] = aggregate
    results["cost"] = _costs(state, aggregate)
    results["complete"] = (
        bool(finetune)
        and all(set(_expected_arms(state)) <= set(runs) for runs in finetune.values())
        and len(finetune) == len(state["config"]["seeds"])
    )
    return results


def _costs(state: dict[str, Any], aggregate: dict[str, Any]) -> dict[str, Any]:
    """Forward passes and FLOPs per token of every fine-tuned arm (:mod:`tah.repro.twohop.cost`)
    at its mean share of tokens at depth 2 over seeds."""
    from tah.repro.twohop.config import read_saved_config
    from tah.repro.twohop.cost import COUNTED, arm_costs

    shares = {
        arm: stats["share_tokens_iterating"]["mean"] / 100
        for arm, stats in aggregate.items()
        if arm not in ("oracle", "depth1") and stats["share_tokens_iterating"]["mean"] is not None
    }
    if not shares:
        return {}
    shares.setdefault("deep", 0.0)  # a Standard model: one pass of its layers on every token
    return {"counted": COUNTED, "per_arm": arm_costs(read_saved_config(state["config"]), shares)}


def _expected_arms(state: dict[str, Any]) -> tuple[str, ...]:
    """The arms a complete run has: the bare-row controls only where the run trained them."""
    bare = state["config"].get("bare_arms", False)  # a run made before them lacks the key
    return (*ARMS, *BARE_JOBS) if bare else ARMS


def _by_base_outcome(base: dict[str, Any], runs: dict[str, Any]) -> dict[str, Any]:
    """Two-hop accuracy of each TaH+ routing, split by whether the base (the labeller) got the
    query right: oracle routing iterates exactly the base's wrong answers, so its gain can come
    from knowing which first guesses are wrong rather than from a second lookup."""
    base_right = _two_hop(base["test"])
    outcomes = {
        "learned": runs["tahplus"]["test"],
        "oracle": runs["tahplus"]["oracle"],
        "depth1": runs["tahplus"]["depth1"],
        "standard": runs.get("standard", {}).get("test"),
    }
    out: dict[str, Any] = {}
    for split, wanted in (("base_right", True), ("base_wrong", False)):
        out[split] = {"queries": sum(1 for r in base_right if r == wanted)}
        for name, outcome in outcomes.items():
            if outcome is None:
                continue
            hits = [c for c, r in zip(_two_hop(outcome), base_right, strict=True) if r == wanted]
            out[split][name] = sum(hits) / len(hits) if hits else None
    return out


def _strip(outcome: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in outcome.items() if k not in ("correct", "kinds")}


def compare_runs(new: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Test accuracies of the jobs two runs share (a rerun of the same settings is
    deterministic, so every one should be equal): per seed and job, the differing numbers."""

    def accuracies(results: dict[str, Any]) -> dict[tuple[str, str], dict[str, float]]:
        out = {}
        for seed, runs in (results.get("gate_runs") or {}).items():
            for name, run in runs.items():
                out[(seed, name)] = run["test"]["accuracy"]
        for seed, row in (results.get("per_seed") or {}).items():
            for name, arm in row.items():
                if isinstance(arm, dict) and "accuracy" in arm:
                    out[(seed, name)] = arm["accuracy"]
        return out

    mine, theirs = accuracies(new), accuracies(reference)
    shared = sorted(set(mine) & set(theirs))
    differ = {
        f"seed{seed}/{name}": {"new": mine[seed, name], "reference": theirs[seed, name]}
        for seed, name in shared
        if mine[seed, name] != theirs[seed, name]
    }
    return {"compared": len(shared), "differ": differ}
