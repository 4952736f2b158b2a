"""One sampling rule: core ``generate``, the engine (and so the server) and ``tah eval`` draw the
same tokens from the same logits and seeds, min-p included; the filters follow the documented
order (checked against a brute-force loop)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tah.engine.engine import Engine
from tah.engine.protocol import parse_body, prepare
from tah.evaluation.sampling import RowSampler, make_hf_processor, paper_sampling
from tah.model.generation import sample_next
from tah.model.sampling import SamplingParams, filter_probs_for
from test_engine_equality import VOCAB, tah_model

SETTINGS = [
    dict(temperature=0.8, top_k=0, top_p=1.0, min_p=0.0),
    dict(temperature=1.3, top_k=7, top_p=1.0, min_p=0.0),
    dict(temperature=0.9, top_k=0, top_p=0.8, min_p=0.05),
    dict(temperature=1.0, top_k=20, top_p=0.9, min_p=0.1),
    dict(temperature=2.0, top_k=5, top_p=0.5, min_p=0.3),
]
SEEDS = [3, 17, 2**40, 5, 99, 12345, *range(100, 118)]


def _logits(seed: int = 0, rows: int = len(SEEDS)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, VOCAB, generator=gen)  # flat enough that draws vary


def _core(logits, kw, seeds):
    """As core ``generate`` draws with one seed per row (a generator each, one row at a time)."""
    out = []
    for i, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(seed)
        out.append(int(sample_next(logits[i : i + 1], True, generator=gen, **kw)))
    return out


def _engine(engine, logits, params_list):
    """As the engine (and the server on it) draws: requests admitted into rows."""
    reqs = [engine.add_request([1, 2, 3], p) for p in params_list]
    engine._drain_inbox([])
    engine._admit()
    rows = torch.tensor([r.row for r in reqs])
    tokens = engine.draw(logits, rows, reqs).tolist()
    for r in reqs:
        engine.abort(r.request_id)
    engine.step()
    return tokens


@pytest.fixture(scope="module")
def engine():
    return Engine.from_tah_model(tah_model("mlp"), max_batch=len(SEEDS), max_len=32)


@pytest.mark.parametrize("kw", SETTINGS)
def test_every_caller_draws_the_same_tokens(engine, kw):
    logits = _logits()
    core = _core(logits, kw, SEEDS)
    params = [SamplingParams(max_tokens=4, seed=s, **kw) for s in SEEDS]
    assert _engine(engine, logits, params) == core
    # The server: a request body through the protocol's validation, then the engine.
    state = SimpleNamespace(engine=engine, tokenizer=None, model_name="m")
    bodies = [{"model": "m", "prompt": [1, 2, 3], "max_tokens": 4, "seed": s, **kw} for s in SEEDS]
    served = [prepare(state, parse_body(b, chat=False), chat=False)[1] for b in bodies]
    assert _engine(engine, logits, served) == core
    # tah eval: the row sampler (core, softthink, oracle backends) and the HF processor.
    eval_params = paper_sampling(**kw)
    assert RowSampler(SEEDS, "cpu").sample(logits, eval_params).tolist() == core
    scores = make_hf_processor(SEEDS, eval_params, "cpu")(None, logits.clone())
    assert scores.argmax(dim=-1).tolist() == core


def _brute_force(row: list[float], t: float, k: int, p: float, m: float) -> list[float]:
    """The documented order on one row, in plain Python: softmax(l / T) -> min-p -> top-k ->
    top-p (renormalised; a token stays while the mass before it is < p)."""
    import math

    top = max(row)
    weights = [math.exp((x - top) / t) for x in row]
    total = sum(weights)
    probs = [w / total for w in weights]
    best = max(probs)
    probs = [q if q >= m * best else 0.0 for q in probs]
    if 0 < k < len(probs):
        kth = sorted(probs, reverse=True)[k - 1]
        probs = [q if q >= kth else 0.0 for q in probs]
    if p < 1:
        total = sum(probs)
        order = sorted(range(len(probs)), key=lambda i: -probs[i])
        before, kept = 0.0, [0.0] * len(probs)
        for rank, i in enumerate(order):
            if rank == 0 or before < p:
                kept[i] = probs[i] / total
            before += probs[i] / total
        probs = kept
    total = sum(probs)
    return [q / total for q in probs]


@pytest.mark.parametrize("kw", SETTINGS)
def test_filters_follow_the_documented_order(kw):
    logits = _logits(seed=1)
    ours = filter_probs_for(logits, SamplingParams(**kw))
    ours = ours / ours.sum(dim=-1, keepdim=True)
    for i, row in enumerate(logits.tolist()):
        ref = _brute_force(row, kw["temperature"], kw["top_k"], kw["top_p"], kw["min_p"])
        assert torch.allclose(ours[i], torch.tensor(ref), atol=1e-5), i


def test_min_p_comes_before_top_k_and_top_p():
    # Top-p keeps 0.5 of [0.4, 0.3, 0.2, 0.1]: {0.4, 0.3}. Min-p 0.6 first drops 0.2 and 0.1
    # (below 0.24) and renormalises: [4/7, 3/7], so top-p 0.5 keeps 4/7 alone. Applied last
    # (as transformers does), min-p would leave both.
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    probs = filter_probs_for(logits, SamplingParams(temperature=1.0, top_p=0.5, min_p=0.6))
    assert (probs[0] > 0).tolist() == [True, False, False, False]


def test_sampling_params_read_the_older_spelling():
    params = SamplingParams.from_dict({"temperature": 0.6, "max_new_tokens": 9})
    assert params.max_tokens == params.max_new_tokens == 9
    assert SamplingParams.from_dict(params.to_dict()) == params
