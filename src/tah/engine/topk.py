"""The k largest values per row, exactly, in two cheaper passes over a long row.

Why: the decider reads the top-k logit values of every token that may think again, every step;
over a large vocabulary ``torch.topk`` on the whole row is a visible share of a decode step on a
CPU (0.6 ms of a 37 ms step at vocabulary 8192, batch 16). Splitting the row into chunks,
every value of the top k lies in a chunk whose maximum is among the k largest chunk maxima (a
chunk holding one of them has its maximum at least as large, and fewer than k chunks can have
larger maxima), so the top k of those k chunks is the top k of the row: the same values,
ties included, in the same (descending) order. The indices may differ among equal values, so
this serves values only (the decider's input), not the soft embedding.
"""

from __future__ import annotations

import math

from torch import Tensor


def topk_values(x: Tensor, k: int) -> Tensor:
    """``x.topk(k, dim=-1).values`` for a 2-D ``x``, by chunk maxima when that is cheaper."""
    rows, width = x.shape
    # chunk ~ sqrt(width / k) balances the two passes (width / chunk maxima, k * chunk values)
    chunk = 1 << max(round(math.log2(math.sqrt(width / max(k, 1)))), 0)
    chunks = width // chunk
    if chunk < 4 or width % chunk or chunks <= k:
        return x.topk(k, dim=-1).values
    blocks = x.view(rows, chunks, chunk)
    best = blocks.amax(dim=-1).topk(k, dim=-1, sorted=False).indices
    picked = blocks.gather(1, best[:, :, None].expand(rows, k, chunk))
    return picked.view(rows, k * chunk).topk(k, dim=-1).values
