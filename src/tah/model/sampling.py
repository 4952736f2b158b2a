"""The one sampling rule: decoding settings, next-token filters and seeded per-row draws.

Core ``generate``, the engine, its server and ``tah eval`` all sample through this module, so a
seeded request gives the same tokens whichever of them runs it (``tests/test_sampling.py``).

The order (METHOD.md A.10.2): temperature -> softmax -> min-p -> top-k -> top-p -> multinomial.
min-p drops tokens below ``min_p`` times the largest probability; top-k keeps tokens at least
as probable as the k-th (ties kept); top-p renormalises and drops each token whose more
probable predecessors already hold ``top_p`` of the mass, never the most probable token.
Each row draws from its own ``torch.Generator`` when it has one, so a row's tokens do not
depend on which other rows share its batch.

Why not transformers' logits processors: they take one setting for the whole batch (a server
batches requests that each carry their own), apply min-p last (so their draws differ from this
order whenever min-p > 0), and draw from one global generator per batch.

Every value :meth:`SamplingParams.validate` accepts is numerically safe: a temperature too
small for float32 (1e-300) is raised to :data:`MIN_TEMPERATURE`, which is greedy in all but
exact ties; a top-k past the vocabulary is off; and a row left with no finite positive weight
falls back to its argmax instead of failing the multinomial draw (and with it, the batch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor

from tah.errors import ConfigError
from tah.model.budget import check_budget

# Temperatures below this are raised to it: at 1e-6 a logit gap of 1e-4 already gives a weight
# ratio of e^-100, so this is greedy up to ties, while logits / temperature stays finite.
MIN_TEMPERATURE = 1e-6
# What torch.Generator.manual_seed accepts: the int64 and uint64 ranges together.
SEED_RANGE = (-(2**63), 2**64 - 1)
MAX_TOP_LOGPROBS = 20


@dataclass
class SamplingParams:
    """How one sequence is decoded. ``temperature == 0`` means greedy (argmax).

    ``max_tokens`` bounds the generated tokens (``max_new_tokens`` reads the same value).
    ``threshold`` overrides the decider threshold for this sequence and ``max_iter`` caps its
    depth (1 = the plain model); None keeps the model's settings. The extras are recorded by
    ``tah.engine.trace``: a compute budget (share of generated tokens that iterate; steers τ),
    log-probabilities (top alternatives; 0 = chosen token only), the prompt's logprobs, the
    decider's probabilities per token. Invalid values raise :class:`ConfigError` on creation.
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] | None = None
    ignore_eos: bool = False
    threshold: float | None = None
    max_iter: int | None = None
    iter_budget: float | None = None
    logprobs: int | None = None
    echo: bool = False
    decider_probs: bool = False

    def __post_init__(self) -> None:
        self.validate()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def max_new_tokens(self) -> int:
        return self.max_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplingParams:
        """Read :meth:`to_dict` output, or the older ``max_new_tokens`` spelling."""
        data = dict(data)
        if "max_new_tokens" in data:
            data["max_tokens"] = data.pop("max_new_tokens")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown sampling settings {unknown}; known: {sorted(known)}")
        if data.get("stop_token_ids") is not None:
            data["stop_token_ids"] = tuple(data["stop_token_ids"])
        return cls(**data)

    def validate(self) -> None:
        """Raise ConfigError naming the bad field (the server turns it into a 400)."""
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not 0.0 <= self.temperature <= 100.0:
            raise ConfigError(f"temperature must be in [0, 100], got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ConfigError(f"min_p must be in [0, 1], got {self.min_p!r}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold must be in [0, 1], got {self.threshold!r}")
        if self.max_iter is not None and (not isinstance(self.max_iter, int) or self.max_iter < 1):
            raise ConfigError(f"max_iter must be an integer >= 1, got {self.max_iter!r}")
        if self.seed is not None and (
            not isinstance(self.seed, int) or not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]
        ):
            raise ConfigError(f"seed must be an integer in [-2**63, 2**64 - 1], got {self.seed!r}")
        if self.stop_token_ids is not None and not all(
            isinstance(t, int) for t in self.stop_token_ids
        ):
            raise ConfigError(f"stop_token_ids must be integers, got {self.stop_token_ids!r}")
        check_budget(self.iter_budget)
        check_logprobs(self.logprobs)


def check_logprobs(logprobs: int | None) -> None:
    if logprobs is None:
        return
    if isinstance(logprobs, bool) or not isinstance(logprobs, int):
        raise ConfigError(f"logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}]")
    if not 0 <= logprobs <= MAX_TOP_LOGPROBS:
        raise ConfigError(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {logprobs}")


def filter_probs(
    logits: Tensor,
    temperature: Tensor,
    top_k: Tensor,
    top_p: Tensor,
    min_p: Tensor,
    any_min_p: bool = True,
    any_top_k: bool = True,
    any_top_p: bool = True,
) -> Tensor:
    """Unnormalised sampling weights (n, V) after temperature, min-p, top-k and top-p.

    Each parameter is a per-row tensor (n,); top_k 0, top_p 1 and min_p 0 switch a filter off
    for that row. The ``any_*`` flags (known on the host) skip a filter for the whole batch
    without a device sync. Every row keeps at least one token (see the module docstring).
    """
    temperature = temperature.float().clamp_min(MIN_TEMPERATURE)
    probs = torch.softmax(logits.float() / temperature[:, None], dim=-1)
    if any_min_p:
        floor = probs.amax(dim=-1, keepdim=True) * min_p[:, None].float()
        probs = probs.masked_fill(probs < floor, 0.0)
    vocab = probs.shape[-1]
    if any_top_k:
        use_k = (top_k > 0) & (top_k < vocab)
        k = top_k.clamp(1, vocab)
        sorted_probs = probs.sort(dim=-1, descending=True).values
        kth = sorted_probs.gather(-1, (k - 1)[:, None])
        probs = probs.masked_fill(use_k[:, None] & (probs < kth), 0.0)
    if any_top_p:
        use_p = top_p < 1.0
        normed = probs / probs.sum(dim=-1, keepdim=True)
        sorted_probs, order = normed.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop = before >= top_p[:, None].float()
        drop[:, 0] = False  # the most probable token stays, however small top_p is
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        filtered = torch.zeros_like(normed).scatter(-1, order, sorted_probs)
        probs = torch.where(use_p[:, None], filtered, probs)
    return _never_empty(probs, logits)


def filter_probs_for(logits: Tensor, params: SamplingParams) -> Tensor:
    """:func:`filter_probs` with one :class:`SamplingParams` for every row of ``logits``."""
    n, dev = logits.shape[0], logits.device
    return filter_probs(
        logits,
        torch.full((n,), float(params.temperature or 1.0), device=dev),
        torch.full((n,), int(params.top_k), dtype=torch.long, device=dev),
        torch.full((n,), float(params.top_p), device=dev),
        torch.full((n,), float(params.min_p), device=dev),
        any_min_p=params.min_p > 0,
        any_top_k=params.top_k > 0,
        any_top_p=params.top_p < 1,
    )


def _never_empty(probs: Tensor, logits: Tensor) -> Tensor:
    """Rows with NaN/inf or no positive weight left become one-hot on their argmax (no sync)."""
    probs = torch.nan_to_num(probs, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    empty = ~(probs.sum(dim=-1, keepdim=True) > 0)
    best = torch.nan_to_num(logits.float(), nan=float("-inf")).argmax(dim=-1, keepdim=True)
    one_hot = torch.zeros_like(probs).scatter(-1, best, 1.0)
    return torch.where(empty, one_hot, probs)


def sample_rows(probs: Tensor, generators: list[torch.Generator | None]) -> Tensor:
    """One multinomial draw per row, each from its own generator (seeded rows)."""
    out = []
    for i, gen in enumerate(generators):
        out.append(torch.multinomial(probs[i : i + 1], 1, generator=gen)[0])
    return torch.cat(out)


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def sample_next(
    logits: Tensor,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token per row of (B, V) ``logits``: argmax, or a draw after the filters, all rows
    from the one ``generator`` (per-row generators: :func:`sample_rows`)."""
    if not do_sample:
        return logits.argmax(dim=-1)
    n, dev = logits.shape[0], logits.device
    probs = filter_probs(
        logits,
        torch.full((n,), float(temperature), device=dev),
        torch.full((n,), int(top_k), dtype=torch.long, device=dev),
        torch.full((n,), float(top_p), device=dev),
        torch.full((n,), float(min_p), device=dev),
        any_min_p=min_p > 0,
        any_top_k=top_k > 0,
        any_top_p=top_p < 1,
    )
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def speculative_choice(
    target: Tensor, draft_probs: Tensor, draft: int, generator: torch.Generator | None
) -> tuple[int, bool]:
    """``(token, accepted)`` for one row: exact speculative sampling (Leviathan et al. 2023).

    ``draft`` was drawn from the (unnormalised) weights ``draft_probs``; ``target`` are the
    weights the token must follow. The draft is kept with probability min(1, p(d) / q(d)),
    else the token is drawn from max(0, p - q) renormalised, so it follows ``target`` exactly,
    whatever the draft distribution.
    """
    p = target / target.sum()
    q = draft_probs / draft_probs.sum()
    u = torch.rand((), generator=generator, device=p.device)
    if bool(u * q[draft] < p[draft]):
        return draft, True
    residual = (p - q).clamp_min(0.0)
    if not bool(residual.sum() > 0):  # p == q up to rounding: the rejection had no mass
        residual = p
    return int(torch.multinomial(residual[None], 1, generator=generator)[0, 0]), False
