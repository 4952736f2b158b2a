"""Small statistics for the reproductions: mean ± std over seeds and the paired McNemar test.

Both are a few lines of exact arithmetic (no scipy in the dependencies): McNemar's exact test
is a two-sided binomial test on the discordant pairs of two methods on the same problems.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["mcnemar", "mcnemar_from_runs", "mean_std", "over_seeds"]


def mean_std(values: Iterable[Any]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the finite values (None when there are none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return mean, std


def mcnemar(only_first: int, only_second: int) -> float:
    """Exact two-sided McNemar p-value: ``only_first`` problems solved by the first method
    alone, ``only_second`` by the second alone (the concordant pairs carry no information)."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    k = min(only_first, only_second)
    # Integer division of exact integers: 2.0**n overflows a float past n = 1023 discordant
    # pairs, while int / int rounds correctly (to 0.0 once p is below the float range).
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def mcnemar_from_runs(first: Mapping[str, bool], second: Mapping[str, bool]) -> dict[str, Any]:
    """Paired comparison of two runs given problem id -> correct, on their shared problems."""
    shared = sorted(set(first) & set(second))
    only_first = sum(1 for p in shared if first[p] and not second[p])
    only_second = sum(1 for p in shared if second[p] and not first[p])
    return {
        "n": len(shared),
        "first_correct": sum(1 for p in shared if first[p]),
        "second_correct": sum(1 for p in shared if second[p]),
        "only_first": only_first,
        "only_second": only_second,
        "p_value": mcnemar(only_first, only_second),
    }


def over_seeds(values: list[float | None]) -> dict[str, Any]:
    """Mean ± sample std over seeds (missing and NaN values left out; one value: std 0)."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    mean, std = mean_std(kept)
    if mean is None:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": mean, "std": 0.0 if std is None else std, "n": len(kept), "values": kept}
