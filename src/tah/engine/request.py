"""What the engine keeps per request: its state, its prompt tokens still going deeper, and
the events and results it hands back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tah.model.sampling import SamplingParams

WAITING, PREFILL, RUNNING, FINISHED = "waiting", "prefill", "running", "finished"


@dataclass
class TokenEvent:
    """What a request receives after a step: new tokens, and whether it is done."""

    request_id: str
    token_ids: list[int]
    iter_counts: list[int]
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    error: str | None = None
    # Filled only for requests with a TokenTrace (tah.engine.trace), one entry per token.
    logprobs: list | None = None
    decider_probs: list | None = None
    decider_thresholds: list | None = None  # the τ each decision compared with
    prompt_logprobs: list | None = None  # echo: on the first token's event
    prompt_iter_counts: list | None = None


@dataclass
class Request:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    callback: Callable[[TokenEvent], None] | None = None
    output: list[int] = field(default_factory=list)
    iter_counts: list[int] = field(default_factory=list)
    state: str = WAITING
    row: int = -1
    prefilled: int = 0
    finish_reason: str | None = None
    error: str | None = None
    arrival: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    generator: torch.Generator | None = None
    stop_ids: frozenset[int] = frozenset()
    pending: list[Pending] = field(default_factory=list)  # prompt tokens still going deeper
    last: LastToken | None = None  # the prompt's last token, once final
    done: threading.Event = field(default_factory=threading.Event)
    trace: Any = None  # a tah.engine.trace.TokenTrace when the request asked for one

    @property
    def finished(self) -> bool:
        return self.state == FINISHED

    @property
    def avg_depth(self) -> float:
        return sum(self.iter_counts) / len(self.iter_counts) if self.iter_counts else 0.0


@dataclass
class Completion:
    """Result of :meth:`Engine.generate` for one prompt."""

    token_ids: list[int]
    iter_counts: list[int]
    finish_reason: str | None
    prompt_tokens: int


@dataclass
class Pending:
    """Prompt tokens of one request that run ``depth`` next (their earlier depths are done)."""

    positions: list[int]
    depth: int
    cum: Tensor  # (m, V) cumulative logits so far
    x: Tensor  # (m, H) soft-embedding input of the next pass


@dataclass
class LastToken:
    """Output of a prompt's last token once it stops: what the first new token comes from."""

    cum: Tensor  # (1, V)
    greedy: int
    count: int
