"""CUDA graphs for the engine's decode-only steps, over shapes padded to a few buckets.

Why: at small batch a decode step is hundreds of small kernels whose launch cost (on the host)
exceeds their run time on a GPU; a CUDA graph replays them all with one launch. A graph needs
fixed shapes, and an engine step's shapes change every step (rows join and leave, the key
length grows, tokens the decider sent deeper come and go), so the common step, decoding only
(no prompt work), is padded to buckets:

* rows to the next power of two (padding rows are free rows of the store: decode-only means no
  row is prefilling; they read position 0 and write the spare column ``max_len``, never read);
* deep tokens (rows running depth 2) to the next power of two, padding entries pointing at a
  scratch row (a padding row), so their LoRA delta and attention land where nothing reads;
* the key length to the next power of two (at most ``max_len + 1``), with masks instead of
  ragged lengths.

One graph is captured per (rows, deep, keys) bucket on first use. Steps that do not fit (prompt
work in the step, depth > 2, no scratch row free, CPU) run eagerly. On CPU the same padded
function runs eagerly: that is what the tests check against the unpadded eager step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tah.engine.kv import KVStore, _sdpa
from tah.engine.model import CompactDecoder
from tah.errors import ConfigError
from tah.model.kv import duo_visible


def enable_decode_graphs(engine, use_graphs: bool | None = None) -> DecodeGraphs:
    """Run ``engine``'s decode-only steps padded to buckets, as CUDA graphs on a CUDA device
    (``use_graphs`` None) or eagerly (False: the CPU check of the padding). Gives the store
    one scratch row, so a full batch can pad its deep tokens; call it before any request."""
    if engine.n_rows or engine.waiting:
        raise ConfigError("enable_decode_graphs: the engine has requests; call it before any")
    if use_graphs and engine.device.type != "cuda":
        raise ConfigError(f"CUDA graphs need a CUDA device, the engine is on {engine.device}")
    old = engine.store
    k = old.k_all
    engine.store = KVStore(
        k.shape[0], k.shape[4], k.shape[5], old.max_rows + 1, old.max_len, old.depths,
        device=k.device, dtype=k.dtype,
    )  # fmt: skip
    engine.graphs = DecodeGraphs(engine.decoder, engine.store, use_graphs)
    engine.speculate = False  # a draft's pass is not part of the padded decode graphs
    return engine.graphs


def bucket(n: int, least: int = 1) -> int:
    """The smallest power of two >= max(n, least)."""
    n = max(n, least)
    return 1 << (n - 1).bit_length()


@dataclass(frozen=True)
class Shape:
    """One padded decode step: rows, deep tokens, key columns (all buckets)."""

    rows: int
    deep: int
    keys: int


def padded_shape(n: int, deep: int, key_len: int, max_rows: int, max_len: int) -> Shape | None:
    """The bucket a decode step of ``n`` rows, ``deep`` deep tokens and ``key_len`` keys runs
    in, or None if it cannot be padded (padding deep tokens needs a scratch row < max_rows)."""
    d = bucket(deep) if deep else 0
    least = n + 1 if d > deep else n  # deep padding needs a scratch row beyond the real ones
    rows = min(bucket(least), max_rows)  # the store's row count is the last bucket
    if rows < least:
        return None
    keys = min(bucket(key_len, 16), max_len + 1)
    return Shape(rows, d, keys)


class PaddedDecode:
    """Static buffers and the fixed-shape forward of one :class:`Shape` (slots 0 and 1)."""

    def __init__(self, decoder: CompactDecoder, store: KVStore, shape: Shape, capture: tuple):
        dev = decoder.device
        self.decoder, self.store, self.shape, self.capture = decoder, store, shape, capture
        r, d = shape.rows, shape.deep
        self.x = torch.zeros((r, decoder.shape.hidden_size), dtype=decoder.dtype, device=dev)
        self.pos = torch.zeros(r, dtype=torch.long, device=dev)
        self.write_pos = torch.full((r,), store.max_len, dtype=torch.long, device=dev)
        self.deep_rows = torch.full((d,), r - 1, dtype=torch.long, device=dev)
        self.deep_pos = torch.full((d,), store.max_len, dtype=torch.long, device=dev)
        self.row_ids = torch.arange(r, device=dev)
        self.graph = None
        self.out: tuple[Tensor, dict[int, Tensor]] | None = None

    def load(self, x: Tensor, pos: Tensor, write_pos: Tensor, deep: list[int]) -> None:
        """Copy one step's inputs into the static buffers (padding reset to harmless values)."""
        n, max_len = x.shape[0], self.store.max_len
        self.x[:n].copy_(x)
        self.x[n:].zero_()
        self.pos[:n].copy_(pos)
        self.pos[n:].zero_()
        self.write_pos[:n].copy_(write_pos)
        self.write_pos[n:].fill_(max_len)
        k = len(deep)
        self.deep_rows.fill_(self.shape.rows - 1)
        self.deep_pos.fill_(max_len)
        if k:
            rows = torch.tensor(deep, dtype=torch.long, device=self.x.device)
            self.deep_rows[:k].copy_(rows)
            self.deep_pos[:k].copy_(pos.index_select(0, rows))

    def forward(self) -> tuple[Tensor, dict[int, Tensor]]:
        """The decoder on the static buffers; only fixed-shape operations (capturable)."""
        store, shape = self.store, self.shape
        cols = store.columns[: shape.keys]
        visible = duo_visible(self.pos[:, None], cols[None, :])  # never the spare max_len
        mask0 = visible[:, None, None, :]
        deep_mask = None
        if shape.deep:
            store.deep_valid[0].index_put_(
                (self.deep_rows, self.deep_pos), torch.ones_like(self.deep_pos, dtype=torch.bool)
            )
            seen = visible.index_select(0, self.deep_rows)
            exists = store.deep_valid[0][:, : shape.keys].index_select(0, self.deep_rows)
            deep_mask = torch.cat([seen, seen & exists], dim=-1)[:, None, None, :]
        rows, deep_rows, deep_pos = self.row_ids, self.deep_rows, self.deep_pos

        def attend(layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            kbuf, vbuf = store.keys[0][layer], store.values[0][layer]
            idx = (rows, self.write_pos)
            kbuf.index_put_(idx, k)
            vbuf.index_put_(idx, v)
            r = shape.rows
            out = _sdpa(q[:, None], kbuf[:r, : shape.keys], vbuf[:r, : shape.keys], mask0, False)
            if not shape.deep:
                return out.view(r, -1)
            qi, ki, vi = (t.index_select(0, deep_rows) for t in (q, k, v))
            store.keys[1][layer].index_put_((deep_rows, deep_pos), ki)
            store.values[1][layer].index_put_((deep_rows, deep_pos), vi)
            keys = store.k_all[layer][:, :2, : shape.keys].index_select(0, deep_rows)
            values = store.v_all[layer][:, :2, : shape.keys].index_select(0, deep_rows)
            flat = (shape.deep, 2 * shape.keys, *keys.shape[3:])
            o = _sdpa(qi[:, None], keys.reshape(flat), values.reshape(flat), deep_mask, False)
            return out.view(r, -1).index_copy(0, deep_rows, o.view(shape.deep, -1))

        lora = deep_rows if shape.deep else None
        return self.decoder.forward_hidden(
            self.x, self.pos, attend, lora_rows=lora, capture=self.capture
        )


class DecodeGraphs:
    """Padded decode steps per bucket; CUDA graphs of them where the device is CUDA."""

    def __init__(self, decoder: CompactDecoder, store: KVStore, use_graphs: bool | None = None):
        self.decoder, self.store = decoder, store
        self.use_graphs = decoder.device.type == "cuda" if use_graphs is None else use_graphs
        self.steps: dict[tuple[Shape, tuple], PaddedDecode] = {}
        self.pool = None
        self.stats = {"replays": 0, "captures": 0, "padded_eager": 0, "fallbacks": 0}

    def shape_for(self, n: int, deep: list[int], key_len: int, max_slot: int) -> Shape | None:
        if max_slot > 1 or self.store.depths < 2 and deep:
            return None
        return padded_shape(n, len(deep), key_len, self.store.max_rows, self.store.max_len)

    def run(
        self, x: Tensor, pos: Tensor, write_pos: Tensor, deep: list[int], shape: Shape,
        capture: tuple[int, ...],
    ) -> tuple[Tensor, dict[int, Tensor]]:  # fmt: skip
        """Hidden states (n, H) and captured states of the n real rows."""
        n = x.shape[0]
        step = self.steps.get((shape, capture))
        if step is None:
            step = self.steps[(shape, capture)] = PaddedDecode(
                self.decoder, self.store, shape, capture
            )
        step.load(x, pos, write_pos, deep)
        if not self.use_graphs:
            self.stats["padded_eager"] += 1
            hidden, captured = step.forward()
        else:
            if step.graph is None:
                self._capture(step)
            step.graph.replay()
            self.stats["replays"] += 1
            hidden, captured = step.out
        return hidden[:n], {i: c[:n] for i, c in captured.items()}

    def _capture(self, step: PaddedDecode) -> None:  # pragma: no cover - CUDA only
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the graph (allocator, lazy inits)
                step.forward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            step.out = step.forward()
        self.pool = graph.pool()
        step.graph = graph
        self.stats["captures"] += 1
