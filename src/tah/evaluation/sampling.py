"""Sampling parameters, per-sample seeds, and a per-row seeded sampler.

Defaults are the paper's evaluation recipe (docs/method.md §11: T 0.6, top-p 0.95, top-k 20,
min-p 0, 4096 new tokens). The logit warpers are transformers' own; what we add is *per-row*
randomness: every (dataset, problem, sample) gets its own seed and its own ``torch.Generator``,
and a token is drawn by the exponential race (argmax of p_v / E_v with E_v ~ Exp(1), an exact
sample from p). A sample's tokens then do not depend on which other samples share its batch, so
a resumed run regenerates exactly what the killed run would have produced (up to the usual
floating-point differences of padding). transformers' built-in sampler uses one global RNG per
batch, which would tie every sample to its batch neighbours.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from tah.errors import ConfigError


@dataclass
class SamplingParams:
    """Decoding settings; ``temperature == 0`` means greedy."""

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    min_p: float = 0.0
    max_new_tokens: int = 4096

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 <= self.min_p < 1.0:
            raise ConfigError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_seed(base_seed: int, dataset: str, problem_id: str, sample_index: int) -> int:
    """A stable 31-bit seed for one sample, independent of ordering, workers and batches."""
    key = f"{base_seed}\x1f{dataset}\x1f{problem_id}\x1f{sample_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") & 0x7FFFFFFF


def warp_logits(logits: Any, params: SamplingParams) -> Any:
    """Apply temperature, top-k, top-p and min-p (transformers' warpers) to (B, V) logits."""
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    scores = logits.float()
    if params.greedy:
        return scores
    if params.temperature != 1.0:
        scores = TemperatureLogitsWarper(params.temperature)(None, scores)
    if params.top_k > 0:
        scores = TopKLogitsWarper(params.top_k)(None, scores)
    if params.top_p < 1.0:
        scores = TopPLogitsWarper(params.top_p)(None, scores)
    if params.min_p > 0.0:
        scores = MinPLogitsWarper(params.min_p)(None, scores)
    return scores


class RowSampler:
    """Draws one token per row from warped logits, each row with its own generator."""

    def __init__(self, seeds: list[int], device: Any) -> None:
        import torch

        self.generators = []
        for seed in seeds:
            gen = torch.Generator(device=device)
            gen.manual_seed(int(seed))
            self.generators.append(gen)

    def race_scores(self, warped: Any, rows: list[int] | None = None) -> Any:
        """Scores whose argmax is a sample from softmax(warped); rows index the generators."""
        import torch

        rows = list(range(warped.shape[0])) if rows is None else rows
        log_probs = torch.log_softmax(warped, dim=-1)
        noise = torch.empty_like(log_probs)
        for i, row in enumerate(rows):
            noise[i].exponential_(generator=self.generators[row])
        return log_probs - noise.clamp_min(1e-30).log()

    def sample(self, logits: Any, params: SamplingParams, rows: list[int] | None = None) -> Any:
        warped = warp_logits(logits, params)
        if params.greedy:
            return warped.argmax(dim=-1)
        return self.race_scores(warped, rows).argmax(dim=-1)


def make_hf_processor(seeds: list[int], params: SamplingParams, device: Any) -> Any:
    """A transformers LogitsProcessor that turns greedy ``generate`` into per-row seeded sampling.

    It also records the entropy (natural log, temperature 1) of every step's raw distribution,
    an uncertainty score used by question-level routing.
    """
    import torch
    from transformers import LogitsProcessor

    class _SeededSampling(LogitsProcessor):
        def __init__(self) -> None:
            self.sampler = RowSampler(seeds, device)
            self.entropies: list[Any] = []

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            raw = scores.float()
            log_p = torch.log_softmax(raw, dim=-1)
            ent = -(log_p.exp() * log_p.nan_to_num(neginf=0.0)).sum(-1)
            self.entropies.append(ent.detach().cpu())
            warped = warp_logits(raw, params)
            if params.greedy:
                return warped
            return self.sampler.race_scores(warped)

    return _SeededSampling()
