"""What one engine step reads and changes: the engine's state as the step modules see it.

Why a protocol here: ``step.py`` and ``trace.py`` work on the engine's rows, buffers and TaH
pieces, and ``engine.py`` runs them; typing them against this interface (one layer down, with
the kinds of a step's heads) keeps the modules from importing each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from tah.engine.kv import KVStore
    from tah.engine.model import CompactDecoder, ModelShape
    from tah.engine.request import Request, TokenEvent


# What a step's head (a token whose logits the step computes) is: a decoding row's token, a
# prompt token, or the depth-1 pass of a speculative draft token riding along a deeper pass.
DECODE, PROMPT, DRAFT = 0, 1, 2


class EngineState(Protocol):
    """The attributes and methods of :class:`tah.engine.engine.Engine` a step uses."""

    # model and storage
    decoder: CompactDecoder
    shape: ModelShape
    device: torch.device
    store: KVStore
    max_len: int
    prefill_chunk: int
    # TaH settings
    kind: str  # the decider: "never", "always" or "mlp"
    max_iter: int
    threshold: float
    last_logits: Tensor | None  # decider logits of the step's last decide()
    speculate: bool  # speculative depth 1 (speculate.py) ...
    speculate_mode: str  # ... for "greedy" requests or "all"
    draft: list[int | None]  # per decoding row, the draft that runs depth 1 this step
    residual: bool
    capture: tuple[int, ...]
    reads_previous: bool  # the decider also reads the previous token's features
    prev_feat: Tensor  # (rows, F) each row's last depth-1 decider features
    # rows: decoding prefix 0..n_dec-1, then prefilling rows up to n_rows
    rows: list[Request | None]
    n_dec: int
    n_rows: int
    lengths: list[int]
    phase: list[int]
    tok: Tensor
    pos: Tensor
    cum_buf: Tensor
    x_next: Tensor
    stats: dict[str, int]

    def cap_of(self, req: Request) -> int: ...

    def threshold_of(self, req: Request) -> float: ...

    def decide(
        self, cum: Tensor, feats: dict[int, Tensor], thr: Tensor, previous: Tensor | None = None
    ) -> Tensor: ...

    def soft_embedding(self, cum: Tensor) -> Tensor: ...

    def draw(self, logits: Tensor, rows: Tensor, reqs: list[Request]) -> Tensor: ...

    def sampling_weights(self, logits: Tensor, rows: Tensor, reqs: list[Request]) -> Tensor: ...

    def emit(self, req: Request, token: int, count: int, events: list[TokenEvent]) -> None: ...
