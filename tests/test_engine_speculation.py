"""Speculative depth 1 (``tah.engine.speculate``) changes the number of steps, never the output.

* greedy: tokens and per-token iteration counts equal the core's ``generate`` (and the engine
  without speculation), for several batch sizes, prompts, EOS, token budgets, a compute budget
  and the decider that reads the previous token; drafts really run and some are kept;
* sampling: exact speculative sampling keeps the target distribution, checked by chi-square
  tests (fixed seeds; a p-value threshold of 1e-4 makes a false failure negligible), both for
  the acceptance rule alone and for the engine's tokens against the core model's exact
  next-token distribution.
"""

from __future__ import annotations

import pytest
import torch

from tah.engine.engine import Engine
from tah.model.sampling import SamplingParams, filter_probs_for, speculative_choice
from test_engine_equality import core_batched, core_single, make_prompts, tah_model

P_MIN = 1e-4


def _chi_square_p(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """Upper-tail p-value of Pearson's chi-square over cells with expected count >= 5."""
    keep = expected >= 5
    assert int(keep.sum()) >= 2
    obs, exp = observed[keep].double(), expected[keep].double()
    exp = exp * obs.sum() / exp.sum()
    stat = ((obs - exp) ** 2 / exp).sum()
    dof = torch.tensor(float(int(keep.sum()) - 1), dtype=torch.double)
    return float(torch.special.gammaincc(dof / 2, stat / 2))


def _run(engine: Engine, prompts, new, **params):
    outs = engine.generate(prompts, SamplingParams(max_tokens=new, **params))
    return [(o.token_ids, o.iter_counts) for o in outs]


@pytest.mark.parametrize(
    "decider, rows",
    [
        ("mlp", 2),
        pytest.param("mlp", 1, marks=pytest.mark.slow),
        pytest.param("mlp", 5, marks=pytest.mark.slow),
        pytest.param("always", 1, marks=pytest.mark.slow),
        pytest.param("always", 3, marks=pytest.mark.slow),
    ],
)
def test_greedy_outputs_and_counts_equal_the_core(decider, rows):
    model = tah_model(decider)
    prompts = make_prompts(4)
    new = 13
    free = core_batched(model, prompts, new, [])
    eos = [free[2][0][6]]  # ends one row mid-way
    expected = core_batched(model, prompts, new, eos)
    engine = Engine.from_tah_model(model, max_batch=rows, max_len=64, prefill_chunk=4)
    engine.eos_token_ids = tuple(eos)
    assert _run(engine, prompts, new) == expected
    assert engine.stats["drafts"] > 0 and 0 < engine.stats["accepted"] < engine.stats["drafts"]
    plain = Engine.from_tah_model(
        model, max_batch=rows, max_len=64, prefill_chunk=4, speculate_depth1="off"
    )
    plain.eos_token_ids = tuple(eos)
    assert _run(plain, prompts, new) == expected
    # A batch steps until its slowest row ends; one row alone saves every kept draft.
    assert engine.stats["steps"] <= plain.stats["steps"] - (
        engine.stats["accepted"] if rows == 1 else 0
    )
    assert plain.stats["drafts"] == 0


@pytest.mark.parametrize("new", [1, 2, pytest.param(3, marks=pytest.mark.slow)])
def test_short_token_budgets_stop_on_time(new):
    model = tah_model("always")
    prompts = make_prompts(5, (4, 7))
    engine = Engine.from_tah_model(model, max_batch=2, max_len=32, eos_token_ids=[])
    got = _run(engine, prompts, new)
    assert got == [core_single(model, p, new, []) for p in prompts]
    assert all(len(t) == new for t, _ in got)


def test_previous_token_decider_and_compute_budget_equal_the_core():
    model = tah_model("mlp", decider_previous_token=True)
    prompts = make_prompts(6)
    for rows in (3,):
        engine = Engine.from_tah_model(model, max_batch=rows, max_len=64, eos_token_ids=[])
        assert _run(engine, prompts, 12) == [core_single(model, p, 12, []) for p in prompts]
        assert engine.stats["accepted"] > 0
    model = tah_model("mlp")
    engine = Engine.from_tah_model(model, max_batch=2, max_len=64, eos_token_ids=[])
    got = _run(engine, prompts[:2], 16, iter_budget=0.3)
    assert got == [core_single(model, p, 16, [], iter_budget=0.3) for p in prompts[:2]]
    assert engine.stats["accepted"] > 0


def test_acceptance_rule_keeps_the_target_distribution():
    target = torch.tensor([0.05, 0.40, 0.10, 0.30, 0.15, 0.0])
    draft = torch.tensor([0.30, 0.10, 0.30, 0.05, 0.05, 0.20])
    gen = torch.Generator().manual_seed(0)
    n = 6000
    drafts = torch.multinomial(draft, n, replacement=True, generator=gen).tolist()
    tokens = [speculative_choice(target, draft, d, gen)[0] for d in drafts]
    counts = torch.bincount(torch.tensor(tokens), minlength=6)
    assert counts[5] == 0  # never a token outside the target's support
    assert _chi_square_p(counts, target * n) > P_MIN


@pytest.fixture(scope="module")
def sampled_pairs():  # about 10 s: used by a slow test
    """The first two sampled tokens of many seeded requests, speculation on and off (a draft
    for the second token needs room for a third)."""
    model = tah_model("always")
    prompt = make_prompts(7, (6,))[0]
    params = dict(temperature=1.0, top_k=6)
    pairs = {}
    for spec in ("all", "off"):
        engine = Engine.from_tah_model(
            model, max_batch=64, max_len=16, eos_token_ids=[], speculate_depth1=spec
        )
        outs = engine.generate(
            [prompt] * 800,
            [SamplingParams(max_tokens=3, seed=s, **params) for s in range(800)],
        )
        pairs[spec] = [tuple(o.token_ids[:2]) for o in outs]  # the second one is speculated
        if spec == "all":
            assert engine.stats["accepted"] > 0
            assert engine.stats["accepted"] < engine.stats["drafts"]
    return model, prompt, params, pairs


@pytest.mark.slow
def test_sampled_tokens_follow_the_core_distribution(sampled_pairs):
    """Second tokens (the speculated ones) against the exact next-token distribution."""
    model, prompt, params, pairs = sampled_pairs
    for spec in ("all", "off"):
        firsts = sorted({a for a, _ in pairs[spec]})
        observed, expected = [], []
        for a in firsts:
            seconds = [b for x, b in pairs[spec] if x == a]
            with torch.no_grad():
                logits = model(torch.tensor([[*prompt, a]])).logits[0, -1:]
            probs = filter_probs_for(logits, SamplingParams(**params))[0]
            probs = probs / probs.sum()
            vocab = probs.shape[0]
            observed.append(torch.bincount(torch.tensor(seconds), minlength=vocab))
            expected.append(probs * len(seconds))
        assert _chi_square_p(torch.cat(observed), torch.cat(expected)) > P_MIN, spec


def test_tah_eval_backend_option_sets_the_switch():
    from tah.errors import ConfigError
    from tah.evaluation.backends import BackendOptions, make_backend
    from tah.model.loading import bundled_model_path

    def backend(mode: str):
        extra = {"generator": "engine", "speculate_depth1": mode}
        return make_backend(
            "tah", str(bundled_model_path()), BackendOptions(device="cpu", extra=extra)
        )

    with pytest.raises(ConfigError, match="speculate_depth1"):
        backend("sometimes")
    engine = backend("off").engine_gen.make_engine(1, 8)
    assert engine.speculate_mode == "off" and not engine.speculate
