"""Two-pass top-k values equal torch.topk's, ties included."""

from __future__ import annotations

import pytest
import torch

from tah.engine.topk import topk_values


@pytest.mark.parametrize("width,k", [(8192, 100), (2048, 16), (4096, 100), (640, 7), (100, 100)])
def test_topk_values_equal_torch(width, k):
    gen = torch.Generator().manual_seed(width + k)
    x = torch.randn(9, width, generator=gen)
    assert torch.equal(topk_values(x, k), x.topk(k, dim=-1).values)
    ties = torch.randint(0, 5, (9, width), generator=gen).float()  # many equal values
    assert torch.equal(topk_values(ties, k), ties.topk(k, dim=-1).values)
    peaked = x.clone()
    peaked[:, :k] += 10.0  # the whole top k inside the first chunks
    assert torch.equal(topk_values(peaked, k), peaked.topk(k, dim=-1).values)
