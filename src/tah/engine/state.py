"""What one engine step reads and changes: the engine's state as the step module sees it.

Why a protocol here: ``step.py`` works on the engine's rows, buffers and TaH pieces, and
``engine.py`` runs the step; typing the step against this interface (one layer down) keeps
the two modules from importing each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from tah.engine.kv import KVStore
    from tah.engine.model import CompactDecoder, ModelShape
    from tah.engine.request import Request, TokenEvent


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
    kind: str
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

    def emit(self, req: Request, token: int, count: int, events: list[TokenEvent]) -> None: ...
