"""Per-request sampling parameters and batched next-token sampling on the device.

Why not transformers' logits processors: they take one setting for the whole batch, while a
server batches requests that each carry their own temperature, top-k/top-p/min-p and seed. The
order of operations is the one ``TaHForCausalLM.generate`` uses (METHOD.md A.10.2):
temperature -> softmax -> min-p -> top-k -> top-p -> multinomial, each request drawing from its
own seeded generator, so a seeded request gives the same tokens whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tah.errors import ConfigError


@dataclass
class SamplingParams:
    """How one request is decoded. ``temperature == 0`` means greedy (argmax).

    ``threshold`` overrides the decider threshold for this request and ``max_iter`` caps its
    depth (1 = the plain model); None keeps the model's settings.
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
    # Extras recorded by tah.engine.trace: a compute budget (share of generated tokens that
    # iterate; steers τ), log-probabilities (top alternatives; 0 = chosen token only), the
    # prompt's logprobs, the decider's probabilities per token.
    iter_budget: float | None = None
    logprobs: int | None = None
    echo: bool = False
    decider_probs: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

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
        if self.seed is not None and not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        from tah.engine.trace import check_logprobs
        from tah.model.budget import check_budget

        check_budget(self.iter_budget)
        check_logprobs(self.logprobs)


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
    without a device sync. Per row this is exactly ``tah.model.generation.sample_next``:
    min-p drops tokens below min_p * max prob; top-k keeps tokens >= the k-th largest prob
    (ties kept); top-p renormalises and drops tokens whose preceding mass is >= top_p.
    """
    probs = torch.softmax(logits.float() / temperature[:, None].float(), dim=-1)
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
        sorted_probs = sorted_probs.masked_fill(before >= top_p[:, None].float(), 0.0)
        filtered = torch.zeros_like(normed).scatter(-1, order, sorted_probs)
        probs = torch.where(use_p[:, None], filtered, probs)
    return probs


def sample_rows(probs: Tensor, generators: list[torch.Generator | None]) -> Tensor:
    """One multinomial draw per row, each from its own generator (seeded requests)."""
    out = []
    for i, gen in enumerate(generators):
        out.append(torch.multinomial(probs[i : i + 1], 1, generator=gen)[0])
    return torch.cat(out)


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen
