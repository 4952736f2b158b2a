"""One duo-causal visibility rule: the engine's attention masks equal
:func:`tah.model.kv.duo_visible` evaluated entry by entry over (position, depth)."""

from __future__ import annotations

import torch

from tah.engine.kv import KVStore
from tah.model.kv import duo_visible


def _store(seed: int = 0) -> KVStore:
    store = KVStore(1, 1, 2, max_rows=4, max_len=12, depths=3)
    gen = torch.Generator().manual_seed(seed)
    store.deep_valid.copy_(torch.rand(store.deep_valid.shape, generator=gen) < 0.4)
    return store


def test_deep_masks_follow_the_rule():
    for slot in (1, 2):
        store = _store(slot)
        rows = torch.tensor([2, 0])
        positions = torch.tensor([[3, 5, 9], [7, 8, 12]])  # 12: the spare column (padding)
        key_len = 10
        mask = store._deep_mask(slot, rows, positions, key_len)[:, 0]  # (R, T, (slot+1) L)
        for r, row in enumerate(rows.tolist()):
            for t, p in enumerate(positions[r].tolist()):
                for s in range(slot + 1):
                    for col in range(key_len):
                        exists = s == 0 or bool(store.deep_valid[s - 1, row, col])
                        want = duo_visible(
                            torch.tensor(p), torch.tensor(col), torch.tensor(exists), slot, s
                        )
                        assert bool(mask[r, t, s * key_len + col]) == bool(want), (r, t, s, col)


def test_prefill_and_decode_masks_follow_the_rule():
    store = _store()
    positions = torch.tensor([[4, 5, 6], [0, 1, 12]])
    mask = store.prefill_pass(torch.tensor([1, 3]), positions, 8, from_zero=False).mask[:, 0]
    step = store.decode_pass(2, torch.tensor([[3], [6]]), 8, True, None, True, [])
    for q_pos, m in ((positions, mask), (torch.tensor([[3], [6]]), step.mask[:, 0])):
        for r in range(q_pos.shape[0]):
            for t in range(q_pos.shape[1]):
                for col in range(8):
                    want = duo_visible(
                        torch.tensor(int(q_pos[r, t])), torch.tensor(col), None, 0, 0
                    )
                    assert bool(m[r, t, col]) == bool(want)
