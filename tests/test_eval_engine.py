"""``tah eval`` on the engine (continuous batching) against the core generate path.

The core path (``--backend-option generator=core``: ``TaHForCausalLM.generate`` /
``AutoModelForCausalLM.generate`` on left-padded batches) is the independent reference:
greedy tokens and iteration counts must be equal for every problem at every batch size.
"""

from __future__ import annotations

import logging

import pytest

from tah.data.synthetic import generate_dataset
from tah.errors import ConfigError
from tah.evaluation.backends import BackendOptions, make_backend
from tah.evaluation.eval_config import EvalConfig
from tah.evaluation.prompts import render_prompt
from tah.evaluation.sampling import paper_sampling, sample_seed
from tah.evaluation.workers import generations
from tah.model.loading import bundled_model_path
from tah.model.sampling import SamplingParams
from test_eval_helpers import one_thread, save_tiny_model, save_tiny_tah

N_PROBLEMS = 24
NEW_TOKENS = 24
GREEDY = paper_sampling(temperature=0, max_tokens=NEW_TOKENS)
SAMPLED = paper_sampling(temperature=0.8, top_k=20, top_p=0.95, max_tokens=12)


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def plain_path(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("eval_engine") / "plain", seed=3)


def _backend(kind: str, path, generator: str = "auto", **options):
    extra = {"generator": generator}
    return make_backend(kind, str(path), BackendOptions(device="cpu", extra=extra, **options))


def _items(n: int = N_PROBLEMS) -> list[dict]:
    problems = generate_dataset(n, seed=11, difficulty=(1, 2))
    return [
        {"question": p["problem"], "seed": sample_seed(42, "word", p["id"], 0)} for p in problems
    ]


def _run(backend, items, batch_size: int, params: SamplingParams = GREEDY) -> list:
    """Every item through the worker's generation path, in item order."""
    prompts = [render_prompt(backend.tokenizer, it["question"]) for it in items]
    config = EvalConfig(
        model="m", datasets=["d"], output="", batch_size=batch_size, sampling=params
    )
    out: list = [None] * len(items)
    for i, gen in generations(backend, prompts, config, items):
        assert out[i] is None
        out[i] = gen
    return out


def _answers(gens) -> list:
    return [(g.token_ids, g.iter_counts, g.finish_reason) for g in gens]


@pytest.fixture(scope="module")
def bundled():
    path = bundled_model_path()
    return _backend("tah", path), _backend("tah", path, "core")


# The full grid is slow on a loaded CPU; batch 3 on fewer problems runs in the fast suite.
GRID = [pytest.param(b, N_PROBLEMS, marks=pytest.mark.slow) for b in (1, 3, 8)]
GRID.append(pytest.param(3, 8, id="fast"))


@pytest.mark.parametrize(("batch_size", "n_problems"), GRID)
def test_bundled_model_greedy_equals_core(bundled, batch_size, n_problems):
    engine, core = bundled
    assert engine.info()["generator"] == "engine" and core.info()["generator"] == "core"
    items = _items(n_problems)
    got, want = _run(engine, items, batch_size), _run(core, items, batch_size)
    assert _answers(got) == _answers(want)
    # the comparison means something: answers of different lengths, some tokens iterating
    assert len({g.n_tokens for g in got}) > 1
    assert sum(g.iter_counts["iter_share"] > 0 for g in got) >= 3


@pytest.mark.parametrize(("batch_size", "n_problems"), GRID)
def test_plain_model_greedy_equals_hf_generate(plain_path, batch_size, n_problems):
    engine, core = _backend("hf", plain_path), _backend("hf", plain_path, "core")
    items = _items(n_problems)
    got, want = _run(engine, items, batch_size), _run(core, items, batch_size)
    assert _answers(got) == _answers(want)
    # routing's difficulty score: the raw distribution's mean entropy, as the core records it
    for g, w in zip(got, want):
        assert g.extra["mean_entropy"] == pytest.approx(w.extra["mean_entropy"], rel=1e-4)


def test_a_threshold_and_a_budget_reach_the_engine(tmp_path, plain_path):
    tah = save_tiny_tah(tmp_path / "tah", plain_path, threshold=0.5)
    items = _items(6)
    params = paper_sampling(temperature=0, max_tokens=12)
    default = _answers(_run(_backend("tah", tah), items, 3, params))
    for options in ({"threshold": 0.3}, {"iter_budget": 0.25}):
        engine, core = _backend("tah", tah, **options), _backend("tah", tah, "core", **options)
        got = _answers(_run(engine, items, 3, params))
        assert got == _answers(_run(core, items, 3, params))
        assert [h for _, h, _ in got] != [h for _, h, _ in default]  # the option took effect


def test_sampled_answers_depend_on_their_own_seed_only(bundled):
    engine, core = bundled
    items = _items(6)
    alone = _answers(_run(engine, items, 1, SAMPLED))
    assert _answers(_run(engine, items, 5, SAMPLED)) == alone  # other rows beside it
    assert _answers(_run(engine, items[::-1], 5, SAMPLED)) == alone[::-1]
    # a sample's seed means the same on both generators (each row its own generator)
    assert _answers(_run(core, items, 4, SAMPLED)) == alone
    reseeded = [{**it, "seed": it["seed"] + 1} for it in items]
    assert _answers(_run(engine, reseeded, 5, SAMPLED)) != alone


def test_a_finished_row_is_refilled_at_once(bundled, monkeypatch):
    """Continuous batching: while prompts wait, every one of --batch-size rows is in use."""
    engine, _ = bundled
    admitted: list[tuple[int, int]] = []  # (rows in use, prompts waiting) after each admission
    original = type(engine.engine_gen)._engine_for

    def spy(self, max_batch, max_len):
        eng = original(self, max_batch, max_len)
        admit = eng._admit

        def counted_admit():
            admit()
            admitted.append((eng.n_rows, len(eng.waiting)))

        monkeypatch.setattr(eng, "_admit", counted_admit)
        return eng

    monkeypatch.setattr(type(engine.engine_gen), "_engine_for", spy)
    _run(engine, _items(8), 3, paper_sampling(temperature=0, max_tokens=12))
    assert max(n for n, _ in admitted) == 3
    assert all(n == 3 for n, waiting in admitted if waiting)
    assert sum(1 for _, waiting in admitted if waiting) >= 5  # it did refill, many times


def test_models_the_engine_cannot_run_fall_back_to_core(plain_path, tmp_path, caplog):
    tah = save_tiny_tah(tmp_path / "tah", plain_path)
    with caplog.at_level(logging.WARNING):
        backend = _backend("tah", tah, decider="label")
    assert backend.info()["generator"] == "core"
    assert "runs on the core generate" in caplog.text and "label" in caplog.text
    with pytest.raises(ConfigError, match="generator=engine: the engine cannot run"):
        _backend("tah", tah, "engine", decider="label")
    with pytest.raises(ConfigError, match="generator='fast'"):
        _backend("hf", plain_path, "fast")


def test_a_stream_left_early_leaves_no_work_behind(bundled):
    """A worker that stops reading (orphaned, an error) must not leave queued requests that
    the next call would run and mix in."""
    engine, _ = bundled
    items = _items(4)
    params = paper_sampling(temperature=0, max_tokens=12)
    before = _answers(_run(engine, items, 2, params))
    prompts = [render_prompt(engine.tokenizer, it["question"]) for it in items]
    stream = engine.stream(prompts, params, [0] * 4, [12] * 4, 2)
    next(stream)
    stream.close()
    left = engine.engine_gen.engine
    assert left is None or not left.has_work()
    assert _answers(_run(engine, items, 2, params)) == before
