"""Question-level routing between a small and a large model at a target average size (docs/method.md §11).

The paper's Routing baseline sends the hardest fraction p of questions to the large model and
the rest to the small one, with p chosen so that ``p * P_large + (1 - p) * P_small`` equals the
target parameter count (0.6B/4B at 1.7B: p ~ 32 %). It ranked questions with RouteLLM's
matrix-factorisation router, which needs an OpenAI embedding API; we cannot compute that
offline. So routing here is a post-hoc combination of two recorded runs (same datasets, same
problems), ranking questions by an offline difficulty score computed from the *small* model's
run only (a router must decide before the large model runs):

* ``entropy``: the small model's mean next-token entropy over its answer (recorded by the
  ``hf`` backend as ``extra.mean_entropy``), averaged over samples. Higher = harder.
* ``consistency``: 1 - (share of the small model's samples that agree with its most common
  extracted answer). Needs >= 2 samples per problem. Higher = harder.
* ``length``: the small model's mean output tokens. Higher = harder.
* ``auto`` (default): ``entropy`` when every small-run row has it, else ``consistency`` when
  every problem has >= 2 samples, else ``length``. The summary records which one was used.

Per dataset, the ``p * n`` (rounded half up) highest-scoring questions take the large model's rows (all its
samples of that question), the others the small model's. Ties break by problem order.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from tah.errors import ConfigError, DataError
from tah.evaluation.store import RunDir
from tah.evaluation.summary import summarize
from tah.io import write_json

SCORES = ("auto", "entropy", "consistency", "length")
_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_params(text: str | float | int) -> float:
    """``1.7B`` -> 1.7e9, ``600M`` -> 6e8, plain numbers unchanged."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kKmMbBgGtT]?)\s*", str(text))
    if not m:
        raise ConfigError(f"parameter count {text!r}: use a number with an optional K/M/B suffix")
    return float(m.group(1)) * _SUFFIX[m.group(2).lower()]


def route_fraction(small: float, large: float, target: float) -> float:
    """p with p * large + (1 - p) * small = target."""
    if not large > small:
        raise ConfigError(
            f"the large model ({large:g}) must have more parameters than the small ({small:g})"
        )
    p = (target - small) / (large - small)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"target {target:g} is outside [small {small:g}, large {large:g}]")
    return p


def _group(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[(str(row["dataset"]), str(row["problem_id"]))].append(row)
    return grouped


def choose_score(small_rows: list[dict[str, Any]], score: str) -> str:
    if score not in SCORES:
        raise ConfigError(f"--route-score {score!r}: use one of {SCORES}")
    if score != "auto":
        return score
    if small_rows and all("mean_entropy" in (r.get("extra") or {}) for r in small_rows):
        return "entropy"
    groups = _group(small_rows)
    if groups and all(len(v) >= 2 for v in groups.values()):
        return "consistency"
    return "length"


def difficulty(rows: list[dict[str, Any]], score: str) -> float:
    """Difficulty of one question from the small model's rows for it (higher = harder)."""
    if score == "entropy":
        values = [(r.get("extra") or {}).get("mean_entropy") for r in rows]
        if any(v is None for v in values):
            raise DataError(
                "route score 'entropy' needs extra.mean_entropy in every small-run row "
                "(the hf backend records it); use --route-score length or consistency"
            )
        return sum(values) / len(values)
    if score == "consistency":
        if len(rows) < 2:
            raise DataError("route score 'consistency' needs >= 2 samples per problem (--samples)")
        answers = [r.get("extracted") for r in rows]
        top = Counter(answers).most_common(1)[0][1]
        return 1.0 - top / len(answers)
    if score == "length":
        return sum(int(r.get("n_tokens", 0)) for r in rows) / len(rows)
    raise ConfigError(f"route score {score!r} unknown; use one of {SCORES}")


def _params_of(run: dict[str, Any], given: str | None, which: str) -> float:
    if given:
        return parse_params(given)
    n = (run.get("backend_info") or {}).get("n_params")
    if not n:
        raise ConfigError(f"the {which} run records no parameter count; pass --{which}-params")
    return float(n)


def combine_runs(
    small_dir: str,
    large_dir: str,
    output: str,
    target_params: str,
    small_params: str | None = None,
    large_params: str | None = None,
    score: str = "auto",
    name: str | None = None,
) -> dict[str, Any]:
    """Write a routed run (samples.jsonl, summary.json, run.json) to ``output``; return its summary."""
    small_run, large_run = RunDir(small_dir), RunDir(large_dir)
    small_meta, large_meta = small_run.read_run(), large_run.read_run()
    small_rows, large_rows = small_run.read_samples(), large_run.read_samples()
    if bool(small_params) != bool(large_params):
        raise ConfigError("give both --small-params and --large-params, or neither")
    ps = _params_of(small_meta, small_params, "small")
    pl = _params_of(large_meta, large_params, "large")
    target = parse_params(target_params)
    p = route_fraction(ps, pl, target)
    used = choose_score(small_rows, score)
    small_q, large_q = _group(small_rows), _group(large_rows)
    missing = sorted(set(small_q) - set(large_q))
    if missing:
        raise DataError(
            f"{len(missing)} questions of the small run are not in the large run "
            f"(first: {missing[0]}); run both on the same datasets and --limit"
        )
    by_dataset: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key in small_q:
        by_dataset[key[0]].append(key)
    rows: list[dict[str, Any]] = []
    routing: dict[str, Any] = {}
    for dataset, keys in by_dataset.items():
        scores = {k: difficulty(small_q[k], used) for k in keys}
        ranked = sorted(keys, key=lambda k: -scores[k])  # stable: ties keep problem order
        n_large = int(math.floor(p * len(keys) + 0.5))
        to_large = set(ranked[:n_large])
        for key in keys:
            source = large_q[key] if key in to_large else small_q[key]
            for row in source:
                rows.append(
                    {
                        **row,
                        "routed_to": "large" if key in to_large else "small",
                        "route_score": scores[key],
                    }
                )
        share = n_large / len(keys)
        routing[dataset] = {
            "n_questions": len(keys),
            "n_large": n_large,
            "large_share": share,
            "avg_params": share * pl + (1 - share) * ps,
        }
    out = RunDir(output)
    out.root.mkdir(parents=True, exist_ok=True)
    out.write_samples(rows)
    label = name or f"routing-{Path(small_dir).name}+{Path(large_dir).name}@{target_params}"
    summary = summarize(rows, list(by_dataset))
    info = {
        "small": str(small_dir),
        "large": str(large_dir),
        "small_params": ps,
        "large_params": pl,
        "target_params": target,
        "fraction": p,
        "score": used,
        "per_dataset": routing,
    }
    summary.update(
        {
            "name": label,
            "backend": "routing",
            "routing": info,
            "backend_info": {"backend": "routing", "n_params": target},
        }
    )
    write_json(
        out.run_json,
        {
            "name": label,
            "fingerprint": {"backend": "routing", **info},
            "backend_info": {"backend": "routing", "n_params": target},
        },
    )
    write_json(out.summary, summary)
    return summary
