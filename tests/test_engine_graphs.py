"""Decode steps padded to buckets (the CUDA-graph path, run eagerly on CPU) change nothing.

The padded path reads the same weights and cache but attends over padded key columns with
masks, pads rows and deep tokens with scratch entries, and applies LoRA by index. Greedy
tokens and per-token iteration counts must equal the unpadded eager engine's (and the core's).
"""

from __future__ import annotations

import pytest
import torch

from tah.engine.engine import Engine
from tah.engine.graphs import enable_decode_graphs, padded_shape
from tah.engine.sampling import SamplingParams
from tah.errors import ConfigError
from test_engine_equality import core_batched, make_prompts, tah_model


def test_padded_shape_buckets():
    # rows and deep tokens to powers of two; keys too, capped at max_len + 1
    s = padded_shape(3, 1, 20, max_rows=9, max_len=64)
    assert (s.rows, s.deep, s.keys) == (4, 1, 32)
    # three deep tokens pad to four: a scratch row is needed beyond the five real rows
    s = padded_shape(4, 3, 70, max_rows=9, max_len=64)
    assert (s.rows, s.deep, s.keys) == (8, 4, 65)
    # a full store: the last bucket is the store's row count (one scratch row)
    s = padded_shape(8, 3, 10, max_rows=9, max_len=64)
    assert (s.rows, s.deep) == (9, 4)
    assert padded_shape(9, 3, 10, max_rows=9, max_len=64) is None  # no scratch row left
    s = padded_shape(9, 0, 10, max_rows=9, max_len=64)
    assert (s.rows, s.deep, s.keys) == (9, 0, 16)


@pytest.mark.parametrize("decider", ["mlp", "always"])
def test_padded_decode_matches_eager(decider):
    model = tah_model(decider)
    prompts = make_prompts(6)
    params = SamplingParams(max_tokens=12)
    eager = Engine.from_tah_model(model, max_batch=4, max_len=64, prefill_chunk=5, eos_token_ids=[])
    padded = Engine.from_tah_model(
        model, max_batch=4, max_len=64, prefill_chunk=5, eos_token_ids=[]
    )
    graphs = enable_decode_graphs(padded, use_graphs=False)
    want = [(o.token_ids, o.iter_counts) for o in eager.generate(prompts, params)]
    got = [(o.token_ids, o.iter_counts) for o in padded.generate(prompts, params)]
    assert got == want
    assert got == core_batched(model, prompts, 12, [])
    assert graphs.stats["padded_eager"] > 10  # most decode steps took the padded path
    shapes = {shape for shape, _ in graphs.steps}
    assert any(s.deep for s in shapes) and len(shapes) >= 3
    if decider == "mlp":
        assert {c for _, cs in got for c in cs} == {1, 2}


def test_graphs_need_an_idle_engine_and_cuda():
    engine = Engine.from_tah_model(tah_model("never"), max_batch=2, max_len=32)
    with pytest.raises(ConfigError, match="CUDA device"):
        enable_decode_graphs(engine, use_graphs=True)
    engine.add_request([5, 6, 7])
    engine.step()
    with pytest.raises(ConfigError, match="before any"):
        enable_decode_graphs(engine, use_graphs=False)
    assert torch.is_tensor(engine.store.k_all)
