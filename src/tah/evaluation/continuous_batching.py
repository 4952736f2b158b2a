"""Evaluation through :class:`tah.engine.engine.Engine`: continuous batching for ``tah eval``.

Why not the core's ``generate`` (kept as ``--backend-option generator=core``): it pads a batch
to its longest prompt and keeps every row until the slowest one stops, so a batch of answers
of very different lengths mostly computes padding. Here every prompt is queued on the engine,
which keeps up to ``--batch-size`` sequences in flight and fills a row as soon as its answer
ends; deeper passes cost only the tokens that take them. The outputs are the core's (greedy
tokens and per-token iteration counts are equal; ``tests/test_eval_engine.py``).

Each sample samples from its own generator seeded with its own seed, so its answer does not
depend on which other samples share the engine (``seeding = "per-sample"``).

Which models: the engine's families (Llama, Qwen2, Qwen3 without sliding windows), duo-causal
TaH checkpoints with the MLP, ``always`` or ``never`` decider. :func:`choose_generator` says
which generator a backend uses; for anything else the default falls back to the core with a
one-line notice, while an explicit ``generator=engine`` is an error naming the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from tah.engine.trace import TokenTrace
from tah.errors import ConfigError, UnsupportedModelError
from tah.evaluation.backend_base import Generation, iter_summary
from tah.evaluation.sampling import SamplingParams

# Imported by the backends only when they load a model (it loads torch).
log = logging.getLogger(__name__)

GENERATORS = ("auto", "engine", "core")


def choose_generator(requested: str, build: Callable[[], Any], what: str) -> tuple[Any, str]:
    """``(build() or None, why not)``: what ``build`` makes when the engine serves this model.

    ``requested`` is the ``generator`` backend option; ``build`` raises UnsupportedModelError
    or ConfigError for a model the engine does not serve.
    """
    if requested not in GENERATORS:
        raise ConfigError(f"--backend-option generator={requested!r}: use one of {GENERATORS}")
    if requested == "core":
        return None, "generator=core requested"
    try:
        return build(), ""
    except (UnsupportedModelError, ConfigError) as exc:
        if requested == "engine":
            raise ConfigError(f"generator=engine: the engine cannot run {what}: {exc}") from exc
        log.warning(
            "%s runs on the core generate (slower): the engine cannot run it: %s", what, exc
        )
        return None, str(exc)


class EngineGenerator:
    """Generates a whole work list on one engine, yielding each answer as soon as it ends.

    ``make_engine(max_batch, max_len)`` builds the engine over the backend's model; the engine
    is rebuilt only when a call needs more rows or a longer context than the current one.
    """

    def __init__(
        self,
        make_engine: Callable[[int, int], Any],
        tokenizer: Any,
        stops: Sequence[int],
        record_entropy: bool = False,
    ) -> None:
        self.make_engine = make_engine
        self.tokenizer = tokenizer
        self.stops = tuple(int(s) for s in stops)
        self.record_entropy = record_entropy
        self.engine: Any = None

    def _engine_for(self, max_batch: int, max_len: int) -> Any:
        eng = self.engine
        if eng is None or eng.max_batch < max_batch or eng.max_len < max_len:
            self.engine = None  # free the old KV store before allocating the new one
            self.engine = self.make_engine(max_batch, max_len)
        return self.engine

    def stream(
        self,
        prompt_ids: Sequence[list[int]],
        params: SamplingParams,
        seeds: Sequence[int],
        budgets: Sequence[int],
        batch_size: int,
        threshold: float | None = None,
        iter_budget: float | None = None,
    ) -> Iterator[tuple[int, Generation]]:
        """``(index, Generation)`` per prompt in the order they finish; every budget >= 1."""
        if not prompt_ids:
            return
        from tah.engine.request import WAITING
        from tah.engine.sampling import SamplingParams as EngineParams

        max_len = max(len(p) + b for p, b in zip(prompt_ids, budgets))
        engine = self._engine_for(min(batch_size, len(prompt_ids)), max_len)
        engine.max_active = batch_size
        requests = []
        for ids, seed, budget in zip(prompt_ids, seeds, budgets):
            engine_params = EngineParams(
                max_tokens=int(budget),
                temperature=float(params.temperature),
                top_k=int(params.top_k),
                top_p=float(params.top_p),
                min_p=float(params.min_p),
                seed=int(seed),
                stop_token_ids=self.stops,
                threshold=threshold,
                iter_budget=iter_budget,
            )
            req = engine.add_request(ids, engine_params)
            if self.record_entropy:
                req.trace = entropy_trace(req.trace)
            requests.append(req)
        index = {id(r): i for i, r in enumerate(requests)}
        busy = [0.0] * len(requests)  # each row's share of the step times it was in flight
        next_waiting = 0  # requests are admitted in order: those before this one started
        running: list[Any] = []
        done = False
        try:
            while running or next_waiting < len(requests):
                start = time.perf_counter()
                engine.step()
                elapsed = time.perf_counter() - start
                while next_waiting < len(requests) and requests[next_waiting].state != WAITING:
                    running.append(requests[next_waiting])
                    next_waiting += 1
                for req in running:
                    busy[index[id(req)]] += elapsed / len(running)
                still = []
                for req in running:
                    if req.finished:
                        i = index[id(req)]
                        yield i, self._generation(req, busy[i])
                    else:
                        still.append(req)
                running = still
            done = True
        finally:
            if not done:  # left early (an error, a consumer that stopped): drop the queued work
                self.engine = None

    def _generation(self, req: Any, seconds: float) -> Generation:
        if req.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"the engine ended a request with {req.finish_reason}: {req.error}")
        tokens = list(req.output)
        extra: dict[str, Any] = {}
        if isinstance(req.trace, EntropyTrace) and req.trace.entropies:
            extra["mean_entropy"] = req.trace.mean_entropy()
        return Generation(
            text=self.tokenizer.decode(tokens, skip_special_tokens=True),
            token_ids=tokens,
            n_tokens=len(tokens),
            iter_counts=iter_summary(req.iter_counts),
            time_s=seconds,
            finish_reason=req.finish_reason,
            extra=extra,
        )


def entropy_trace(trace: TokenTrace | None) -> EntropyTrace:
    """``trace`` (a request's TokenTrace, or None) that also records each token's entropy."""
    if trace is None:
        return EntropyTrace()
    return EntropyTrace(**{f.name: getattr(trace, f.name) for f in dataclasses.fields(TokenTrace)})


@dataclasses.dataclass
class EntropyTrace(TokenTrace):
    """A TokenTrace that also keeps the entropy (natural log, temperature 1) of the raw
    distribution each token was drawn from: question-level routing's difficulty score, which
    the ``hf`` backend's core path records too (``extra.mean_entropy``)."""

    entropies: list[Tensor] = dataclasses.field(default_factory=list)  # 0-d, no sync per token

    def on_emit(self, event: Any, token: int, logits: Tensor | None) -> None:
        if logits is not None:
            log_p = torch.log_softmax(logits.float(), dim=-1)
            self.entropies.append(-(log_p.exp() * log_p.nan_to_num(neginf=0.0)).sum())
        super().on_emit(event, token, logits)

    def mean_entropy(self) -> float | None:
        return float(torch.stack(self.entropies).mean()) if self.entropies else None


# ------------------------------------------------------------------------- engine factories
EngineFactory = Callable[[int, int], Any]  # (max_batch, max_len) -> Engine


def plain_engine_factory(hf_model: Any, stops: Sequence[int], tokenizer: Any) -> EngineFactory:
    """Engines over a plain causal LM; raises UnsupportedModelError for one it cannot run."""
    from tah.engine.engine import Engine
    from tah.engine.model import CompactDecoder

    decoder = CompactDecoder.from_hf_model(hf_model)  # weights read once, shared by engines

    def make(max_batch: int, max_len: int) -> Any:
        return Engine(
            decoder,
            eos_token_ids=stops,
            max_batch=max_batch,
            max_len=max_len,
            tokenizer=tokenizer,
        )

    make(1, 2)  # refuse now what the engine cannot run, not at the first batch
    return make


def tah_engine_factory(
    model: Any, stops: Sequence[int], tokenizer: Any, speculate_depth1: str = "greedy"
) -> EngineFactory:
    """Engines over a loaded ``TaHForCausalLM`` (its decider, LoRA, top-k and max_iter;
    ``speculate_depth1``: the engine's speculative depth 1, see ``tah.engine.speculate``)."""
    from tah.engine.engine import Engine
    from tah.engine.model import CompactDecoder

    cfg = model.config
    if cfg.attention_mode != "duo":
        raise UnsupportedModelError(
            f"the engine implements duo-causal attention only, not {cfg.attention_mode!r}"
        )
    decoder = CompactDecoder.from_hf_model(model.base_model)

    def make(max_batch: int, max_len: int) -> Any:
        decider = model.decider
        return Engine(
            decoder,
            decider=decider,
            max_iter=cfg.max_iter,
            threshold=float(getattr(decider, "threshold", cfg.threshold)),
            topk=cfg.topk,
            residual=cfg.residual,
            eos_token_ids=stops,
            max_batch=max_batch,
            max_len=max_len,
            tokenizer=tokenizer,
            speculate_depth1=speculate_depth1,
        )

    make(1, 2)  # e.g. the 'label' decider: refused here, so the backend can fall back
    return make
