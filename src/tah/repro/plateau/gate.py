"""The plateau study's gate: is Standard at its plateau, does depth bind, does width not?

Read from the gate arms' answer accuracy on the *validation* problems (never the test ones),
before any TaH model is trained. The three checks and their thresholds are fixed in
:class:`~tah.repro.plateau.config.PlateauConfig`:

* plateau: on every seed, Standard with ``plateau_factor`` x the steps gains at most
  ``plateau_max_gain`` points over Standard;
* depth binds: on every seed, the deep model beats the better of the two Standard runs by at
  least ``deep_min_gain`` points;
* width does not: Standard-wide beats Standard by at most ``wide_max_gain`` points, mean over
  seeds (one seed's noise on a few hundred problems is several points either way).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from tah.repro.plateau.arms import GATE_ARMS
from tah.repro.plateau.config import PlateauConfig
from tah.repro.tiny.report import eval_numbers, read_json

__all__ = ["gate_accuracy", "gate_verdict"]


def gate_accuracy(out: Path, seeds: list[int]) -> dict[int, dict[str, float | None]]:
    """seed -> gate arm -> validation answer accuracy in points (None when not evaluated)."""
    table: dict[int, dict[str, float | None]] = {}
    for seed in seeds:
        row = {}
        for key in GATE_ARMS:
            acc = eval_numbers(read_json(out / f"seed{seed}" / "val" / key / "summary.json"))
            value = acc.get("accuracy")
            row[key] = None if value is None else 100.0 * float(value)
        table[seed] = row
    return table


def gate_verdict(accuracy: dict[int, dict[str, float | None]], config: PlateauConfig) -> dict:
    """The three checks per seed and overall; ``passed`` only when every check holds with every
    number present."""
    per_seed: dict[str, Any] = {}
    complete = True
    for seed, acc in accuracy.items():
        if any(acc.get(k) is None for k in GATE_ARMS):
            complete = False
            per_seed[str(seed)] = {"accuracy": acc, "checks": None}
            continue
        standard, longer = acc["standard"], acc["standard_2x"]
        gains = {
            "longer_minus_standard": longer - standard,
            "deep_minus_best_standard": acc["deep"] - max(standard, longer),
            "wide_minus_standard": acc["standard_wide"] - standard,
        }
        checks = {
            "plateau": gains["longer_minus_standard"] <= config.plateau_max_gain,
            "depth_binds": gains["deep_minus_best_standard"] >= config.deep_min_gain,
        }
        per_seed[str(seed)] = {"accuracy": acc, "gains": gains, "checks": checks}
    wide_gains = [
        row["gains"]["wide_minus_standard"] for row in per_seed.values() if row.get("checks")
    ]
    wide_mean = statistics.fmean(wide_gains) if wide_gains else None
    overall = {
        "plateau": complete and all(r["checks"]["plateau"] for r in per_seed.values()),
        "depth_binds": complete and all(r["checks"]["depth_binds"] for r in per_seed.values()),
        "width_does_not": complete and wide_mean is not None and wide_mean <= config.wide_max_gain,
    }
    return {
        "split": "validation",
        "criteria": {
            "plateau": f"standard_2x - standard <= {config.plateau_max_gain:g} points, every seed",
            "depth_binds": (
                f"deep - max(standard, standard_2x) >= {config.deep_min_gain:g} points, every seed"
            ),
            "width_does_not": (
                f"mean over seeds of standard_wide - standard <= {config.wide_max_gain:g} points"
            ),
        },
        "per_seed": per_seed,
        "wide_minus_standard_mean": wide_mean,
        "checks": overall,
        "complete": complete,
        "passed": complete and all(overall.values()),
    }
