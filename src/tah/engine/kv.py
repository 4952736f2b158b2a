"""Preallocated per-depth key/value storage for the engine, indexed by (row, position).

Why our own store: the core's ``DepthKVCache`` grows by concatenation (a copy of the whole cache
per token) and keeps position/validity metadata per entry; a server needs fixed memory decided
at start-up and O(1) work per new token. Here every depth slot is one static tensor per layer,

    keys[slot] : (num_layers, max_rows, max_len + 1, n_kv_heads, head_dim)   (views of k_all)

and a token's entry at depth d lives at column = its position, in slot d - 1. Because each row
holds one request and positions count that request's tokens, there is no padding at all: a row
of length n has slot-0 entries at columns 0..n-1. Deep slots are sparse (only tokens that
iterated have an entry), so ``deep_valid[slot - 1]`` (max_rows, max_len + 1) marks which exist.
Column ``max_len`` is spare: padding queries of packed passes write there, and no query ever
reads it. Memory is static: ``depths`` slots of ``max_rows x max_len`` entries per layer.

The duo-causal rule (a query at (p, d) sees entries at (p' <= p, d' <= d)) becomes:
slot-0 columns <= p, plus deep-slot columns <= p that are marked valid, for slots < d, plus the
pass's own new entries (written before attending, at slot d - 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tah.model.kv import duo_visible


@dataclass
class Pass:
    """One pass through the decoder: which rows/positions it writes and what it may read.

    rows: a row-index tensor (R,) (gathered: deep passes), or a ``slice`` of consecutive rows
    (read as a view, no copy: decode over the prefix rows, prefill of one row).
    ``positions`` (R, T) of the new entries (padding entries: the spare column ``max_len``).
    """

    store: KVStore
    slot: int
    rows: Tensor | slice
    positions: Tensor
    key_len: int
    mask: Tensor | None
    is_causal: bool

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Store this layer's new keys/values, then attend over everything visible."""
        store = self.store
        kbuf, vbuf = store.keys[self.slot][layer], store.values[self.slot][layer]
        rows = self.rows
        if isinstance(rows, slice):
            idx = (store.row_ids[: k.shape[0], None], self.positions)
            kbuf[rows].index_put_(idx, k)
            vbuf[rows].index_put_(idx, v)
        else:
            idx = (rows[:, None], self.positions)
            kbuf.index_put_(idx, k)
            vbuf.index_put_(idx, v)
        key, value = store.gather(layer, rows, self.slot, self.key_len)
        return _sdpa(q, key, value, self.mask, self.is_causal)


class KVStore:
    """Static per-depth K/V tensors plus the validity of deep entries."""

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        max_rows: int,
        max_len: int,
        depths: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.max_rows, self.max_len, self.depths = max_rows, max_len, depths
        # One spare column (index max_len) takes the writes of padding queries; never read.
        shape = (num_layers, max_rows, max_len + 1, num_kv_heads, head_dim)
        # All slots in one tensor per layer, so a deep query's keys over slots 0..d are one
        # gather; ``keys[s]`` / ``values[s]`` are views of slot s.
        n_layers, rows, cols, heads, dim = shape
        full = (n_layers, rows, depths, cols, heads, dim)
        self.k_all = torch.zeros(full, device=device, dtype=dtype)
        self.v_all = torch.zeros(full, device=device, dtype=dtype)
        self.keys = [self.k_all[:, :, s] for s in range(depths)]
        self.values = [self.v_all[:, :, s] for s in range(depths)]
        self.deep_valid = torch.zeros(
            (max(depths - 1, 0), max_rows, max_len + 1), dtype=torch.bool, device=device
        )
        self.device = torch.device(device)
        self.row_ids = torch.arange(max_rows, device=device)
        self.columns = torch.arange(max_len + 1, device=device)

    @property
    def nbytes(self) -> int:
        return 2 * self.k_all.numel() * self.k_all.element_size() + self.deep_valid.numel()

    def gather(self, layer: int, rows: Tensor | slice, slot: int, key_len: int):
        """Keys and values of ``rows`` over slots 0..slot, columns 0..key_len-1, laid out as
        (R, (slot + 1) * key_len, heads, dim) in the mask's column order (a view when
        ``rows`` is a slice and only slot 0 is read)."""
        if slot == 0 and isinstance(rows, slice):
            return self.keys[0][layer][rows, :key_len], self.values[0][layer][rows, :key_len]
        k = self.k_all[layer][:, : slot + 1, :key_len]
        v = self.v_all[layer][:, : slot + 1, :key_len]
        if isinstance(rows, slice):
            k, v = k[rows], v[rows]
        else:
            k, v = k.index_select(0, rows), v.index_select(0, rows)
        shape = (k.shape[0], -1, *k.shape[3:])
        return k.reshape(shape), v.reshape(shape)

    # ------------------------------------------------------------------ rows
    def reset_row(self, row: int) -> None:
        """Forget the deep entries of a row before a new request uses it."""
        if self.depths > 1:
            self.deep_valid[:, row] = False

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` columns of row ``src`` to row ``dst`` (compaction)."""
        if src == dst:
            return
        self.k_all[:, dst, :, :length] = self.k_all[:, src, :, :length]
        self.v_all[:, dst, :, :length] = self.v_all[:, src, :, :length]
        if self.depths > 1:
            self.deep_valid[:, dst] = self.deep_valid[:, src]
            self.deep_valid[:, src] = False

    # ------------------------------------------------------------------ passes
    def prefill_pass(self, rows: Tensor, positions: Tensor, key_len: int, from_zero: bool) -> Pass:
        """Depth 1 for prompt chunks, one per row of ``positions`` (k, T), of store ``rows``
        (k,). Padding entries carry position ``max_len`` (the spare column, never read).
        ``from_zero``: every chunk starts at position 0, so plain causal attention is exact
        (padding only ever trails)."""
        if from_zero:
            return Pass(self, 0, rows, positions, key_len, None, positions.shape[1] > 1)
        mask = duo_visible(positions[:, :, None], self.columns[:key_len][None, None, :])[:, None]
        return Pass(self, 0, rows, positions, key_len, mask, False)

    def deep_pass(self, slot: int, rows: Tensor, positions: Tensor, key_len: int) -> Pass:
        """Depth ``slot + 1`` for the tokens at ``positions`` (R, T) of ``rows`` (R,)."""
        mask = self._deep_mask(slot, rows, positions, key_len)
        return Pass(self, slot, rows, positions, key_len, mask, False)

    def decode_pass(
        self,
        n: int,
        positions: Tensor,
        key_len: int,
        shallow: bool,
        write_pos: Tensor,
        need_mask: bool,
        groups: list[tuple[int, list[int]]],
    ) -> DecodePass:
        """One token per prefix row 0..n-1, each at its own depth.

        Rows at depth 1 (``shallow``) write slot 0 at ``write_pos`` (deeper rows are pointed at
        the spare column there) and attend over slot 0 as one batch. ``groups`` lists
        (slot, sorted row list) of the rows running a deeper pass: they are gathered (sliced,
        when consecutive: the common case of one deep row), write their slot and attend
        duo-causally; their results replace those rows of the batch output.
        """
        mask = None
        if shallow and need_mask:
            mask = duo_visible(positions[:, :, None], self.columns[:key_len][None, None, :])[
                :, None
            ]
        deep = []
        for slot, row_list in groups:
            rows: Tensor | slice = torch.tensor(row_list, dtype=torch.long, device=self.device)
            pos = positions.index_select(0, rows)
            mask_d = self._deep_mask(slot, rows, pos, key_len)
            if row_list[-1] - row_list[0] == len(row_list) - 1:
                rows = slice(row_list[0], row_list[-1] + 1)
            deep.append((slot, rows, pos, mask_d))
        return DecodePass(self, n, positions, key_len, shallow, write_pos, mask, deep)

    def _deep_mask(self, slot: int, rows: Tensor, positions: Tensor, key_len: int) -> Tensor:
        """Mark the new entries valid (each query sees its own entry), then build the mask
        over [slot 0 | slot 1 | ... | slot] columns 0..key_len-1, shape (R, 1, T, L * (slot+1))."""
        valid = self.deep_valid
        valid[slot - 1].index_put_(
            (rows[:, None], positions), torch.ones_like(positions, dtype=torch.bool)
        )
        cols = self.columns[:key_len]
        causal = duo_visible(positions[:, :, None], cols[None, None, :])  # (R, T, L): slot 0
        parts = [causal]
        for s in range(1, slot + 1):  # slots 1..slot: the entries that exist (depth <= ours)
            exists = valid[s - 1][:, :key_len].index_select(0, rows)  # (R, L)
            parts.append(causal & exists[:, None, :])
        return torch.cat(parts, dim=-1)[:, None]


@dataclass
class DecodePass:
    """A decode step mixing depths: see :meth:`KVStore.decode_pass`."""

    store: KVStore
    n: int
    positions: Tensor  # (n, 1)
    key_len: int
    shallow: bool
    write_pos: Tensor  # (n, 1)
    mask: Tensor | None
    deep: list[tuple[int, Tensor | slice, Tensor, Tensor]]  # (slot, rows, positions, mask)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        store, n, key_len = self.store, self.n, self.key_len
        out = None
        if self.shallow:
            kbuf, vbuf = store.keys[0][layer][:n], store.values[0][layer][:n]
            idx = (store.row_ids[:n, None], self.write_pos)
            kbuf.index_put_(idx, k)
            vbuf.index_put_(idx, v)
            out = _sdpa(q, kbuf[:, :key_len], vbuf[:, :key_len], self.mask, False)
        for slot, rows, pos, mask in self.deep:
            if isinstance(rows, slice):  # views instead of gathers, an in-place scatter
                qi, ki, vi = q[rows], k[rows], v[rows]
                idx = (store.row_ids[: ki.shape[0], None], pos)
                store.keys[slot][layer][rows].index_put_(idx, ki)
                store.values[slot][layer][rows].index_put_(idx, vi)
            else:
                qi, ki, vi = (
                    q.index_select(0, rows),
                    k.index_select(0, rows),
                    v.index_select(0, rows),
                )
                store.keys[slot][layer].index_put_((rows[:, None], pos), ki)
                store.values[slot][layer].index_put_((rows[:, None], pos), vi)
            keys, values = store.gather(layer, rows, slot, key_len)
            o = _sdpa(qi, keys, values, mask, False)
            if out is None:
                out = o.new_zeros((n, *o.shape[1:]))
            if isinstance(rows, slice):
                out[rows] = o  # ``out`` is this step's own fresh tensor
            else:
                out = out.index_copy(0, rows, o)
        return out


def _sdpa(q: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
    """Attention on (B, T, heads, head_dim) tensors; returns (B, T, heads * head_dim)."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        key.transpose(1, 2),
        value.transpose(1, 2),
        attn_mask=mask,
        is_causal=is_causal,
        enable_gqa=q.shape[2] != key.shape[2],
    )
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)


class Segments:
    """One forward over several passes: the flattened tokens are split into consecutive
    segments, each a (B, T) block handled by its own pass (decode rows, prompt chunks, prompt
    tokens running deeper). They share every matrix product; only attention is per segment."""

    def __init__(self) -> None:
        self.parts: list[tuple[int, int, int, Pass | DecodePass]] = []  # (start, B, T, pass)
        self.size = 0

    def add(self, b: int, t: int, step: Pass | DecodePass) -> int:
        """Append a (b, t) block; return the flat index of its first token."""
        start = self.size
        self.parts.append((start, b, t, step))
        self.size += b * t
        return start

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        outs = []
        for start, b, t, step in self.parts:
            end = start + b * t
            out = step.attend(
                layer,
                q[start:end].view(b, t, *q.shape[1:]),
                k[start:end].view(b, t, *k.shape[1:]),
                v[start:end].view(b, t, *v.shape[1:]),
            )
            outs.append(out.reshape(b * t, -1))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
