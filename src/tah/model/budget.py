"""A compute budget: steer the decider threshold τ so a target share of generated tokens iterates.

Why a budget instead of τ: what a user wants to fix is how much extra compute to spend, and
the share of tokens a given τ sends deeper depends on the model and on the text. A budget
``b`` (e.g. 0.05 = one generated token in twenty thinks twice) is steered per request by an
online controller of the decider's depth-1 probabilities ``p`` (a token iterates iff
``p > τ``):

* **running quantile**: τ is the ``1 - level`` quantile of the last ``window`` probabilities
  this request has seen, so about ``level`` of the coming tokens exceed it. The prompt's own
  tokens seed the window (their probabilities are estimates only; they do not count towards
  the realised share), so the first generated token already has a calibrated τ;
* **feedback**: ``level = b + (b * n - k) / horizon`` where ``n`` tokens were generated and
  ``k`` of them iterated, so a deficit (or surplus) is paid back over the next ``horizon``
  tokens and the realised share ``k / n`` converges to ``b`` whatever the drift of ``p``.

The prompt's tokens are decided with the starting τ, the model's (or the request's) threshold,
however the prompt is split into prefill chunks, so the engine and the core's single prefill
pass agree; the prompt's last token (its decision makes the first generated token) counts as
generated. ``b = 0`` gives
τ = 1, which no sigmoid output exceeds: no token iterates, exactly the plain model; ``b = 1``
gives τ = 0 (every token iterates wherever the depth cap allows). Decisions after depth 1
(models with more than two depths) use the same τ; only the depth-1 decision counts towards
the share, since it alone decides whether a token iterates.

The engine (one controller per request) and the core's ``generate`` (one per row) both use
:class:`IterBudget`, so the two agree token for token.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

import torch
from torch import Tensor

from tah.errors import ConfigError

NEVER = 1.0  # sigmoid(x) > 1.0 is never true: no token iterates
ALWAYS = 0.0


def check_budget(budget: float | None, name: str = "iter_budget") -> None:
    """Raise ConfigError unless ``budget`` is None or a share in [0, 1]."""
    if budget is None:
        return
    if isinstance(budget, bool) or not isinstance(budget, int | float) or math.isnan(budget):
        raise ConfigError(f"{name} must be a number in [0, 1], got {budget!r}")
    if not 0.0 <= budget <= 1.0:
        raise ConfigError(
            f"{name} must be a share of generated tokens in [0, 1] (e.g. 0.05), got {budget!r}"
        )


class IterBudget:
    """Per-request controller: call :meth:`threshold` before a decision and :meth:`observe`
    after it (see the module docstring for the rule)."""

    def __init__(
        self, budget: float, initial_threshold: float, window: int = 256, horizon: int = 16
    ) -> None:
        check_budget(budget)
        if window < 1 or horizon < 1:
            raise ConfigError(f"window and horizon must be >= 1, got {window}, {horizon}")
        self.budget = float(budget)
        self.initial_threshold = float(initial_threshold)
        self.horizon = horizon
        self.samples: deque[float] = deque(maxlen=window)
        self.tokens = 0  # generated tokens whose depth-1 decision was observed
        self.iterated = 0  # ... of which iterated

    @property
    def realised_share(self) -> float:
        return self.iterated / self.tokens if self.tokens else 0.0

    def level(self) -> float:
        """Share of the coming tokens that should iterate, after paying back the error."""
        owed = self.budget * self.tokens - self.iterated
        return min(max(self.budget + owed / self.horizon, 0.0), 1.0)

    def prompt_threshold(self) -> float:
        """τ for the prompt's tokens: the starting τ (never/always at budget 0/1)."""
        if self.budget <= 0.0:
            return NEVER
        return ALWAYS if self.budget >= 1.0 else self.initial_threshold

    def threshold(self) -> float:
        if self.budget <= 0.0:
            return NEVER
        if self.budget >= 1.0:
            return ALWAYS
        level = self.level()
        if level <= 0.0:
            return NEVER
        if level >= 1.0:
            return ALWAYS
        if not self.samples:
            return self.initial_threshold
        return quantile(sorted(self.samples), 1.0 - level)

    def observe_prompt(self, probs: Iterable[float]) -> None:
        """Prompt tokens' depth-1 probabilities: they calibrate τ but are not counted."""
        self.samples.extend(float(p) for p in probs if not math.isnan(p))

    def observe(self, prob: float, iterated: bool) -> None:
        """A generated token's depth-1 decision."""
        if not math.isnan(prob):
            self.samples.append(float(prob))
        self.tokens += 1
        self.iterated += int(bool(iterated))


def quantile(ordered: list[float], q: float) -> float:
    """The q-quantile of ascending ``ordered`` (linear interpolation, as numpy's default)."""
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class RowBudgets:
    """One :class:`IterBudget` per row of a batch, fed from the core's forward outputs."""

    def __init__(self, budget: float, initial_threshold: float, rows: int) -> None:
        self.rows = [IterBudget(budget, initial_threshold) for _ in range(rows)]

    def thresholds(self, device, prompt: bool = False) -> Tensor:
        """The (B,) τ for the next forward (``prompt``: for the prefill pass)."""
        taus = [r.prompt_threshold() if prompt else r.threshold() for r in self.rows]
        return torch.tensor(taus, dtype=torch.float32, device=device)

    def observe_prompt(self, decider_logits: Tensor, valid: Tensor) -> None:
        """Depth-1 decider logits (B, T) of the prompt's tokens except each row's last."""
        probs = torch.sigmoid(decider_logits.float()).masked_fill(~valid, float("nan"))
        for budget, row in zip(self.rows, probs[:, :-1].tolist()):
            budget.observe_prompt(row)

    def observe(self, decider_logits: Tensor, iter_counts: Tensor, active: Tensor) -> None:
        """One generated token per row: depth-1 logits (B,), passes (B,), rows that produced it."""
        probs = torch.sigmoid(decider_logits.float()).tolist()
        for budget, p, c, a in zip(self.rows, probs, iter_counts.tolist(), active.tolist()):
            if a:
                budget.observe(p, c > 1)

    @property
    def realised_share(self) -> float:
        tokens = sum(r.tokens for r in self.rows)
        return sum(r.iterated for r in self.rows) / tokens if tokens else 0.0
