"""The engine's fused LoRA: every form of "which tokens" gives the per-projection formula."""

from __future__ import annotations

import torch

from tah.engine.lora import LoraGroup, LoraPair
from tah.engine.model import CompactDecoder
from tah.engine.step import lora_tokens, runs_of


def test_lora_group_forms_match_the_formula():
    gen = torch.Generator().manual_seed(0)

    def pair(r, out, scale):
        return LoraPair(torch.randn(r, 6, generator=gen), torch.randn(out, r, generator=gen), scale)

    # q and v adapted with different ranks and scales, k not adapted
    q, v = pair(2, 4, 2.0), pair(3, 5, 0.3)
    group = LoraGroup.build([q, None, v], [4, 3, 5])
    x = torch.randn(7, 6, generator=gen)
    base = torch.randn(7, 12, generator=gen)
    want_delta = torch.cat(
        [q.scale * x @ q.a.T @ q.b.T, torch.zeros(7, 3), v.scale * x @ v.a.T @ v.b.T], dim=-1
    )
    rows = [1, 2, 3, 5]
    want = base.clone()
    want[rows] += want_delta[rows]
    add = CompactDecoder._add_lora
    torch.testing.assert_close(add(base.clone(), x, group, True), base + want_delta)
    torch.testing.assert_close(add(base.clone(), x, group, torch.tensor(rows)), want)
    torch.testing.assert_close(add(base.clone(), x, group, ((1, 4), (5, 6))), want)
    torch.testing.assert_close(add(base.clone(), x, group, None), base)


def test_lora_tokens_prefers_few_runs():
    assert runs_of([0, 1, 2, 5, 7, 8]) == [(0, 3), (5, 6), (7, 9)]
    assert lora_tokens([], "cpu") is None
    assert lora_tokens([(3, 4), (4, 9)], "cpu") == ((3, 9),)  # touching runs join
    assert lora_tokens([(1, 2), (5, 6)], "cpu") == ((1, 2), (5, 6))
    many = lora_tokens([(0, 1), (2, 3), (4, 6)], "cpu")
    assert torch.equal(many, torch.tensor([0, 2, 4, 5]))
