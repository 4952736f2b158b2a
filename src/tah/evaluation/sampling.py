"""Evaluation's decoding settings, per-sample seeds, and seeded sampling inside HF ``generate``.

The settings are the one :class:`~tah.model.sampling.SamplingParams` and the draws the one
sampler of :mod:`tah.model.sampling` (the engine, the server and core ``generate`` use the
same), so an eval sample and a served request with the same seed and settings give the same
tokens. What this module adds: the paper's evaluation defaults (METHOD.md D.4: T 0.6, top-p
0.95, top-k 20, min-p 0, 4096 new tokens), a stable seed per (dataset, problem, sample), and a
``LogitsProcessor`` that makes transformers' greedy ``generate`` draw each row from its own
generator. transformers' built-in sampler uses one global RNG per batch, which would tie every
sample to its batch neighbours; with a generator per sample, a resumed run regenerates exactly
what the killed run would have produced (up to the usual floating-point differences of
padding).
"""

from __future__ import annotations

import hashlib
from typing import Any

from tah.model.sampling import SamplingParams, filter_probs_for, make_generator, sample_rows

__all__ = [
    "RowSampler",
    "SamplingParams",
    "make_hf_processor",
    "paper_sampling",
    "sample_seed",
    "warp_logits",
]

PAPER_SAMPLING = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0, "max_tokens": 4096}


def paper_sampling(**overrides: Any) -> SamplingParams:
    """The paper's evaluation settings, with ``overrides`` (the defaults of ``tah eval``)."""
    return SamplingParams(**{**PAPER_SAMPLING, **overrides})


def decoding_settings(params: SamplingParams) -> dict[str, Any]:
    """The settings that change what an evaluation generates, under their recorded names."""
    return {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "min_p": params.min_p,
        "max_new_tokens": params.max_tokens,
    }


def sample_seed(base_seed: int, dataset: str, problem_id: str, sample_index: int) -> int:
    """A stable 31-bit seed for one sample, independent of ordering, workers and batches."""
    key = f"{base_seed}\x1f{dataset}\x1f{problem_id}\x1f{sample_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") & 0x7FFFFFFF


def warp_logits(logits: Any, params: SamplingParams) -> Any:
    """(B, V) logits as log sampling weights after the filters (-inf where filtered); the raw
    logits for greedy settings."""
    import torch

    if params.greedy:
        return logits.float()
    return torch.log(filter_probs_for(logits, params))


class RowSampler:
    """Draws one token per row with the shared sampler, each row from its own generator."""

    def __init__(self, seeds: list[int], device: Any) -> None:
        self.generators = [make_generator(int(seed), device) for seed in seeds]

    def sample(self, logits: Any, params: SamplingParams, rows: list[int] | None = None) -> Any:
        """Tokens for (n, V) ``logits``; ``rows`` index the generators (default: 0..n-1)."""
        if params.greedy:
            return logits.argmax(dim=-1)
        rows = list(range(logits.shape[0])) if rows is None else rows
        probs = filter_probs_for(logits, params)
        return sample_rows(probs, [self.generators[r] for r in rows])


def make_hf_processor(seeds: list[int], params: SamplingParams, device: Any) -> Any:
    """A transformers LogitsProcessor that turns greedy ``generate`` into per-row seeded sampling
    (its scores put the drawn token first).

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
            if params.greedy:
                return raw
            token = self.sampler.sample(raw, params)
            chosen = torch.full_like(raw, float("-inf"))
            return chosen.scatter(-1, token[:, None], 0.0)

    return _SeededSampling()
