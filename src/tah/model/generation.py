"""Sampling and the generate loop of :class:`~tah.model.wrapper.TaHForCausalLM`.

A plain loop in the spirit of gpt-fast: prefill the (left-padded) prompts through the depth loop,
then feed one token per row through the same forward with the persistent per-depth cache. Rows
that finish are fed as padding, so they never iterate and cost no deeper pass. The batched
engine in ``tah.engine`` is the fast path; this loop is the reference it is tested against.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tah.errors import ConfigError, DataError
from tah.model.sampling import sample_next

logger = logging.getLogger(__name__)
_REDUCED_WARNED: set[tuple[int, int]] = set()


@dataclass
class GenerationOutput:
    sequences: Tensor  # (B, T_prompt + N): prompt then generated tokens, pad after EOS
    iter_counts: Tensor  # (B, N): passes that produced each generated token, 0 after EOS
    stats: dict[str, float] = field(default_factory=dict)


def check_sampling(
    max_new_tokens: int, temperature: float, top_k: int, top_p: float, min_p: float
) -> None:
    """Raise :class:`ConfigError` naming the first invalid sampling value."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if not temperature > 0:
        raise ConfigError(
            f"temperature must be > 0, got {temperature!r} (use greedy decoding instead)"
        )
    if not isinstance(top_k, int) or top_k < 0:
        raise ConfigError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p!r}")
    if not 0 <= min_p <= 1:
        raise ConfigError(f"min_p must be in [0, 1], got {min_p!r}")


def resolve_eos(model: nn.Module, eos_token_id: int | list[int] | None) -> list[int]:
    if eos_token_id is None:
        tok = model.tokenizer
        eos_token_id = getattr(tok, "eos_token_id", None) if tok is not None else None
    if eos_token_id is None:
        eos_token_id = getattr(model.base_model.generation_config, "eos_token_id", None)
    if eos_token_id is None:
        eos_token_id = getattr(model.base_model.config, "eos_token_id", None)
    if eos_token_id is None:
        return []
    return [
        int(e) for e in (eos_token_id if isinstance(eos_token_id, list | tuple) else [eos_token_id])
    ]


def generate(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | list[int] | None = None,
    threshold: float | None = None,
    iter_budget: float | None = None,
    **unused: Any,
) -> GenerationOutput:
    """Generate up to ``max_new_tokens`` per row from left-padded prompts.

    ``iter_budget`` (a share in [0, 1]) steers τ per row so that share of its generated
    tokens iterates (:mod:`tah.model.budget`); ``threshold`` is then the starting τ.

    ``seed`` is one seed for the batch, or one per row: then each row samples from its own
    generator, so a row's text does not depend on which other rows share its batch.
    """
    if unused:
        raise ConfigError(f"unknown generate() arguments: {sorted(unused)}")
    check_sampling(max_new_tokens, temperature, top_k, top_p, min_p)
    input_ids, mask, max_new_tokens = _check_prompts(
        model, input_ids, attention_mask, max_new_tokens
    )
    device = model.device
    eos = resolve_eos(model, eos_token_id)
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    eos_t = torch.tensor(eos, dtype=torch.long, device=device)
    batch = input_ids.shape[0]
    generators = _generators(seed, batch, device)

    def pick(logits: Tensor) -> Tensor:
        if len(generators) <= 1:
            gen = generators[0] if generators else None
            return sample_next(logits, do_sample, temperature, top_k, top_p, min_p, gen)
        return torch.cat(
            [
                sample_next(logits[i : i + 1], do_sample, temperature, top_k, top_p, min_p, g)
                for i, g in enumerate(generators)
            ]
        )

    budgets = _row_budgets(model, iter_budget, threshold, batch)

    def tau(prompt: bool = False):
        return threshold if budgets is None else budgets.thresholds(device, prompt)

    start = time.perf_counter()
    was_training = model.training
    model.eval()
    cache = model.new_cache()
    tokens: list[Tensor] = []
    counts: list[Tensor] = []
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    try:
        out = model(input_ids, attention_mask=mask, cache=cache, threshold=tau(prompt=True))
        if budgets is not None:
            budgets.observe_prompt(out.decider_logits[..., 0], mask)
        for step in range(max_new_tokens):
            if budgets is not None:
                budgets.observe(out.decider_logits[:, -1, 0], out.iter_counts[:, -1], ~finished)
            next_token = pick(out.logits[:, -1])
            next_token = next_token.masked_fill(finished, pad)
            tokens.append(next_token)
            counts.append(out.iter_counts[:, -1].masked_fill(finished, 0))
            if eos:
                finished = finished | torch.isin(next_token, eos_t)
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            out = model(
                next_token[:, None],
                attention_mask=(~finished)[:, None],
                cache=cache,
                threshold=tau(),
            )
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - start
    new_tokens = torch.stack(tokens, 1) if tokens else input_ids.new_zeros((batch, 0))
    iter_counts = torch.stack(counts, 1) if counts else input_ids.new_zeros((batch, 0))
    stats = _stats(iter_counts, elapsed, iter_budget)
    return GenerationOutput(torch.cat([input_ids, new_tokens], dim=1), iter_counts, stats)


def _check_prompts(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, max_new_tokens: int
):
    """``(input_ids, mask, max_new_tokens)`` on the model's device, checked: left-padded,
    non-empty prompts, the token budget cut to what the context leaves (warned once)."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    device = model.device
    input_ids = input_ids.to(device)
    mask = (
        torch.ones_like(input_ids, dtype=torch.bool)
        if attention_mask is None
        else attention_mask.to(device=device, dtype=torch.bool)
    )
    if mask.shape != input_ids.shape:
        raise DataError(
            f"attention_mask shape {tuple(mask.shape)} != input_ids {tuple(input_ids.shape)}"
        )
    if input_ids.shape[1] == 0 or not bool(mask.any(dim=1).all()):
        raise DataError("every prompt needs at least one token")
    if not bool(mask[:, -1].all()):
        raise DataError("prompts must be left-padded (tokenizer.padding_side = 'left')")
    prompt_len = int(mask.sum(1).max())
    context = model.max_context
    if context is not None:
        if prompt_len >= context:
            raise DataError(
                f"prompt of {prompt_len} tokens does not fit the model's context of {context} tokens"
            )
        if prompt_len + max_new_tokens > context:
            # Once per (budget, context): a loop over batches would repeat it for every batch.
            if (max_new_tokens, context) not in _REDUCED_WARNED:
                _REDUCED_WARNED.add((max_new_tokens, context))
                logger.warning(
                    "max_new_tokens %d reduced to %d to fit the context of %d tokens (warned "
                    "once; later prompts may be cut to other lengths)",
                    max_new_tokens,
                    context - prompt_len,
                    context,
                )
            max_new_tokens = context - prompt_len
    return input_ids, mask, max_new_tokens


def _generators(seed: int | list[int] | None, batch: int, device) -> list[torch.Generator]:
    """No generator (torch's global one), one for the batch, or one per row."""
    seeds = seed if isinstance(seed, list | tuple) else None
    if seeds is not None and len(seeds) != batch:
        raise ConfigError(f"got {len(seeds)} seeds for a batch of {batch} prompts")
    return [
        torch.Generator(device=device).manual_seed(int(s))
        for s in (seeds if seeds is not None else [] if seed is None else [seed])
    ]


def _stats(iter_counts: Tensor, elapsed: float, iter_budget: float | None) -> dict[str, float]:
    produced = iter_counts > 0
    n = int(produced.sum())
    stats = {
        "tokens": n,
        "avg_depth": float(iter_counts[produced].float().mean()) if n else 0.0,
        "iter_share": float((iter_counts[produced] > 1).float().mean()) if n else 0.0,
        "wall_time_s": elapsed,
        "tokens_per_s": n / elapsed if elapsed > 0 else 0.0,
    }
    if iter_budget is not None:
        stats["iter_budget"] = float(iter_budget)
    return stats


def _row_budgets(model: nn.Module, iter_budget, threshold, batch: int):
    if iter_budget is None:
        return None
    from tah.model.budget import RowBudgets, check_budget

    check_budget(iter_budget)
    if getattr(model.decider, "name", None) != "mlp" or model.config.max_iter < 2:
        raise ConfigError(
            "iter_budget steers the MLP decider's threshold; this model has decider "
            f"{getattr(model.decider, 'name', None)!r} and max_iter {model.config.max_iter}: "
            "use a TaH checkpoint with decider 'mlp', or drop iter_budget"
        )
    start = float(model.config.threshold if threshold is None else threshold)
    return RowBudgets(float(iter_budget), start, batch)
