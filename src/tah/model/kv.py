"""The per-depth key/value store and the duo-causal mask.

Why our own store rather than a transformers ``Cache``: TaH needs one slot per depth, per-entry
positions and validity, and passes that run on a subset of the batch rows. transformers' cache
classes are internal API that changes between minor versions, so we keep a small store of our own
and hand it to the attention function through forward kwargs (see ``attention.py``).

Layout: for every layer and depth slot ``s`` the store holds keys and values of shape
``(B, n_kv_heads, L_s, head_dim)``; metadata shared by all layers holds each entry's position
``(B, L_s)`` and validity ``(B, L_s)``. Every row of a slot has the same number of columns; a pass
that runs on some rows only writes invalid (zero) columns for the others. Keys are stored after
RoPE, so an entry keeps the rotation of its own position at every depth.

Visibility rule (mode "duo"): a query at (position p, depth d) sees every valid entry at
(p' <= p, d' <= d). Entries of a query's own pass come last, so column order is
slot 0, ..., slot d (earlier entries), then the pass's new entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def duo_visible(
    q_pos: Tensor,
    k_pos: Tensor,
    k_valid: Tensor | None = None,
    q_depth: Tensor | int | None = None,
    k_depth: Tensor | int | None = None,
) -> Tensor:
    """The duo-causal visibility rule, for the core's masks and the engine's alike: a query at
    (position p, depth d) sees an entry at (p', d') iff the entry exists (``k_valid``), p' <= p
    and d' <= d. Arguments broadcast against each other; a None argument is not checked
    (callers that only gather slots <= d leave the depths out)."""
    visible = k_pos <= q_pos
    if k_valid is not None:
        visible = visible & k_valid
    if q_depth is not None and k_depth is not None:
        visible = visible & (torch.as_tensor(k_depth) <= torch.as_tensor(q_depth))
    return visible


@dataclass
class DepthPass:
    """What one pass through the network needs to know inside every attention call."""

    cache: DepthKVCache
    depth: int  # 0-based slot written by this pass (paper depth - 1)
    rows: Tensor | None  # batch rows taking part, None = all rows
    mask: Tensor | None  # (B', 1, A, L) boolean, True = visible; None with is_causal or no mask
    is_causal: bool
    store: bool  # keep the new entries for later passes
    batch_size: int  # rows of the whole batch (the store's batch dimension)


class DepthKVCache:
    """Keys and values of every (token, depth) pair computed so far, grouped by depth slot."""

    def __init__(self, num_layers: int, max_iter: int, attention_mode: str = "duo") -> None:
        self.num_layers = num_layers
        self.max_iter = max_iter
        self.attention_mode = attention_mode
        self.keys: list[list[Tensor | None]] = [[None] * max_iter for _ in range(num_layers)]
        self.values: list[list[Tensor | None]] = [[None] * max_iter for _ in range(num_layers)]
        self.positions: list[Tensor | None] = [None] * max_iter
        self.valid: list[Tensor | None] = [None] * max_iter
        self.seen: Tensor | None = None  # (B,) valid tokens written to slot 0 so far
        # (B, F) depth-1 decider features of each row's last token, for a decider that reads
        # the previous token (see TaHForCausalLM.forward)
        self.last_features: Tensor | None = None

    # ------------------------------------------------------------------ bookkeeping
    def slot_length(self, depth: int) -> int:
        pos = self.positions[depth]
        return 0 if pos is None else pos.shape[1]

    def next_positions(self, valid: Tensor) -> Tensor:
        """Position ids for new depth-1 tokens: valid tokens count up from what was seen."""
        offset = 0 if self.seen is None else self.seen[:, None]
        return ((valid.long().cumsum(1) - 1).clamp(min=0) + offset) * valid

    def reorder(self, rows: Tensor) -> None:
        """Keep only ``rows`` of the batch (drop finished requests)."""
        for layer in range(self.num_layers):
            for s in range(self.max_iter):
                if self.keys[layer][s] is not None:
                    self.keys[layer][s] = self.keys[layer][s].index_select(0, rows)
                    self.values[layer][s] = self.values[layer][s].index_select(0, rows)
        for s in range(self.max_iter):
            if self.positions[s] is not None:
                self.positions[s] = self.positions[s].index_select(0, rows)
                self.valid[s] = self.valid[s].index_select(0, rows)
        if self.seen is not None:
            self.seen = self.seen.index_select(0, rows)
        if self.last_features is not None:
            self.last_features = self.last_features.index_select(0, rows)

    # ------------------------------------------------------------------ passes
    def begin_pass(
        self,
        depth: int,
        q_pos: Tensor,
        q_valid: Tensor,
        rows: Tensor | None,
        batch_size: int,
        store: bool = True,
    ) -> DepthPass:
        """Register a pass's queries (packed as ``(B', A)``) and build its attention mask."""
        past_pos = [self._rows(self.positions[s], rows) for s in range(depth + 1)]
        past_valid = [self._rows(self.valid[s], rows) for s in range(depth + 1)]
        past_slot = [
            torch.full((p.shape[1],), s, dtype=torch.long, device=q_pos.device)
            for s, p in enumerate(past_pos)
            if p is not None
        ]
        past_pos = [p for p in past_pos if p is not None]
        past_valid = [v for v in past_valid if v is not None]
        has_past = bool(past_pos)

        mask, is_causal = None, False
        if depth == 0 and not has_past and _is_prefix(q_valid):
            # Ordinary causal attention: no dense mask at all (SDPA / flash fast path).
            is_causal = q_pos.shape[1] > 1
        elif depth == 0 and has_past and q_pos.shape[1] == 1 and bool(q_valid.all()):
            # One new token per row: it sees every valid earlier entry.
            if not all(bool(v.all()) for v in past_valid):
                mask = torch.cat([*past_valid, q_valid], dim=1)[:, None, None, :]
        else:
            k_pos = torch.cat([*past_pos, q_pos], dim=1)
            k_valid = torch.cat([*past_valid, q_valid], dim=1)
            k_slot = torch.cat(
                [*past_slot, torch.full((q_pos.shape[1],), depth, device=q_pos.device)]
            )
            visible = duo_visible(q_pos[:, :, None], k_pos[:, None, :], k_valid[:, None, :])
            if depth > 0 and self.attention_mode == "root":
                visible = visible & (k_slot == 0)
            elif depth > 0 and self.attention_mode == "same_iter":
                visible = visible & (k_slot == depth)
            # Padding queries see everything: their output is discarded, and a fully masked
            # row would make SDPA return NaN.
            mask = (visible | ~q_valid[:, :, None])[:, None]

        if store:
            self._append_meta(depth, q_pos, q_valid, rows, batch_size)
            if depth == 0:
                self.seen = (0 if self.seen is None else self.seen) + self._expand(
                    q_valid.long().sum(1), rows, batch_size
                )
        return DepthPass(self, depth, rows, mask, is_causal, store, batch_size)

    def append_and_gather(self, layer: int, step: DepthPass, key: Tensor, value: Tensor):
        """Store this layer's new entries and return all keys/values the pass may attend to."""
        d, rows = step.depth, step.rows
        past_k = [self._rows(self.keys[layer][s], rows) for s in range(d + 1)]
        past_v = [self._rows(self.values[layer][s], rows) for s in range(d + 1)]
        past_k = [k for k in past_k if k is not None]
        past_v = [v for v in past_v if v is not None]
        if step.store:
            full_k = self._expand(key, rows, step.batch_size)
            full_v = self._expand(value, rows, step.batch_size)
            old_k, old_v = self.keys[layer][d], self.values[layer][d]
            self.keys[layer][d] = full_k if old_k is None else torch.cat([old_k, full_k], dim=2)
            self.values[layer][d] = full_v if old_v is None else torch.cat([old_v, full_v], dim=2)
            if rows is None and d == 0 and len(past_k) == 1:
                # Slot 0 only: the stored tensor is exactly what attention needs.
                return self.keys[layer][0], self.values[layer][0]
        if not past_k:
            return key, value
        return torch.cat([*past_k, key], dim=2), torch.cat([*past_v, value], dim=2)

    # ------------------------------------------------------------------ helpers
    def _append_meta(self, depth, q_pos, q_valid, rows, batch_size) -> None:
        pos = self._expand(q_pos, rows, batch_size)
        valid = self._expand(q_valid, rows, batch_size)
        if self.positions[depth] is None:
            self.positions[depth], self.valid[depth] = pos, valid
        else:
            self.positions[depth] = torch.cat([self.positions[depth], pos], dim=1)
            self.valid[depth] = torch.cat([self.valid[depth], valid], dim=1)

    @staticmethod
    def _rows(t: Tensor | None, rows: Tensor | None) -> Tensor | None:
        if t is None or rows is None:
            return t
        return t.index_select(0, rows)

    @staticmethod
    def _expand(t: Tensor, rows: Tensor | None, batch_size: int) -> Tensor:
        """Scatter a tensor of the participating rows into a zero tensor of the full batch."""
        if rows is None:
            return t
        full = t.new_zeros((batch_size, *t.shape[1:]))
        return full.index_copy(0, rows, t)


def _is_prefix(valid: Tensor) -> bool:
    """True if every row is valid up to some point and padding only after (right padding)."""
    if valid.shape[1] <= 1:
        return True
    return bool((valid[:, 1:] <= valid[:, :-1]).all())
