"""Engine requests: per-request settings, sampling, aborts, loading, validation, threads."""

from __future__ import annotations

import threading

import pytest
import torch

from conftest import tiny_model
from tah import TaHConfig, TaHForCausalLM
from tah.engine.engine import Engine
from tah.engine.sampling import SamplingParams, filter_probs, sample_rows
from tah.errors import ConfigError, DataError
from tah.model.generation import sample_next
from test_engine_equality import VOCAB, core_single, make_prompts, tah_model


def test_per_request_threshold_and_depth_cap():
    model = tah_model("mlp")
    base = float(model.config.threshold)
    prompts = make_prompts(6, (6, 9, 4))
    settings = [{"threshold": base * 0.9}, {"threshold": min(1.0, base * 1.1)}, {"max_iter": 1}]
    engine = Engine.from_tah_model(model, max_batch=3, max_len=64, eos_token_ids=[])
    outs = engine.generate(prompts, [SamplingParams(max_tokens=10, **s) for s in settings])
    got = [(o.token_ids, o.iter_counts) for o in outs]
    assert got[0] == core_single(model, prompts[0], 10, [], threshold=settings[0]["threshold"])
    assert got[1] == core_single(model, prompts[1], 10, [], threshold=settings[1]["threshold"])
    # max_iter=1: the plain base model; threshold 1.0 (never continue) is the same in the core.
    assert got[2] == core_single(model, prompts[2], 10, [], threshold=1.0)
    assert got[2][1] == [1] * 10
    assert len(set(got[0][1])) == 2  # the lower threshold really iterates some tokens


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=0.8),
        dict(temperature=1.3, top_k=7),
        dict(temperature=0.9, top_p=0.8, min_p=0.05),
        dict(temperature=1.0, top_k=20, top_p=0.9, min_p=0.02),
    ],
)
def test_filter_and_draw_match_core_sampler(kw):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, VOCAB, generator=gen) * 3
    n = logits.shape[0]
    probs = filter_probs(
        logits,
        torch.full((n,), kw["temperature"]),
        torch.full((n,), kw.get("top_k", 0), dtype=torch.long),
        torch.full((n,), kw.get("top_p", 1.0)),
        torch.full((n,), kw.get("min_p", 0.0)),
    )
    for i in range(n):
        for seed in range(5):
            g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
            ours = sample_rows(probs[i : i + 1], [g1])
            ref = sample_next(logits[i : i + 1], True, generator=g2, **kw)
            assert ours.tolist() == ref.tolist()


def test_seeded_sampling_matches_core_and_ignores_batch():
    model = tah_model("mlp")
    prompt = make_prompts(7, (8,))[0]
    params = dict(temperature=0.9, top_k=30, top_p=0.95, min_p=0.01)
    ref = core_single(model, prompt, 12, [], do_sample=True, seed=5, **params)
    engine = Engine.from_tah_model(model, max_batch=4, max_len=64, eos_token_ids=[])
    alone = engine.generate([prompt], SamplingParams(max_tokens=12, seed=5, **params))[0]
    assert (alone.token_ids, alone.iter_counts) == ref
    others = make_prompts(8, (5, 13, 3))
    batch = engine.generate(
        [others[0], prompt, others[1], others[2]],
        [SamplingParams(max_tokens=12, seed=s, **params) for s in (1, 5, 2, 3)],
    )
    assert batch[1].token_ids == alone.token_ids


def test_abort_frees_the_row_and_others_are_unaffected():
    model = tah_model("mlp")
    prompts = make_prompts(10, (5, 9, 7))
    engine = Engine.from_tah_model(model, max_batch=3, max_len=64, eos_token_ids=[])
    reqs = [engine.add_request(p, SamplingParams(max_tokens=12)) for p in prompts]
    for _ in range(4):
        engine.step()
    queued = engine.add_request(prompts[1], SamplingParams(max_tokens=6))  # no free row
    engine.step()
    assert queued.state == "waiting"
    engine.abort(queued.request_id)
    engine.abort(reqs[0].request_id)
    waiting = engine.add_request(prompts[2], SamplingParams(max_tokens=6))  # takes the row
    while not all(r.finished for r in [*reqs, waiting]):
        engine.step()
    assert reqs[0].finish_reason == "abort" and len(reqs[0].output) < 12
    assert queued.finish_reason == "abort" and queued.output == []
    for r, p in zip(reqs[1:], prompts[1:]):
        assert (r.output, r.iter_counts) == core_single(model, p, 12, [])
    assert (waiting.output, waiting.iter_counts) == core_single(model, prompts[2], 6, [])
    assert engine.n_rows == 0 and not engine.requests and not engine.waiting


def test_invalid_requests_are_refused():
    engine = Engine.from_tah_model(tah_model("never"), max_batch=2, max_len=32)
    with pytest.raises(DataError, match="context"):
        engine.add_request(list(range(3, 30)), SamplingParams(max_tokens=8))
    with pytest.raises(DataError, match="vocabulary"):
        engine.add_request([1, 2, VOCAB + 5])
    with pytest.raises(DataError, match="empty"):
        engine.add_request([])
    for bad in (
        dict(max_tokens=0),
        dict(temperature=-1.0),
        dict(top_p=0.0),
        dict(min_p=2.0),
        dict(top_k=-3),
        dict(threshold=1.5),
        dict(max_iter=0),
    ):
        with pytest.raises(ConfigError):
            engine.add_request([3, 4], SamplingParams(**{"max_tokens": 4, **bad}))
    label = TaHForCausalLM.from_base(tiny_model(vocab_size=VOCAB), TaHConfig(decider="label"))
    with pytest.raises(ConfigError, match="label"):
        Engine.from_tah_model(label)


def test_from_pretrained_checkpoint_and_plain_directory(tmp_path):
    model = tah_model("mlp")
    model.save_pretrained(tmp_path / "tah")
    prompts = make_prompts(11, (6, 10))
    engine = Engine.from_pretrained(
        str(tmp_path / "tah"), max_batch=2, max_len=64, eos_token_ids=[]
    )
    outs = engine.generate(prompts, SamplingParams(max_tokens=8))
    assert [(o.token_ids, o.iter_counts) for o in outs] == [
        core_single(model, p, 8, []) for p in prompts
    ]
    hf = tiny_model("llama", vocab_size=VOCAB)
    hf.save_pretrained(tmp_path / "plain")
    plain = Engine.from_pretrained(
        str(tmp_path / "plain"), max_batch=2, max_len=64, eos_token_ids=[]
    )
    assert plain.max_iter == 1
    out = plain.generate([prompts[0]], SamplingParams(max_tokens=8))[0]
    ref = hf.generate(torch.tensor([prompts[0]]), max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert out.token_ids == ref[0, len(prompts[0]) :].tolist()


def test_background_thread_serves_concurrent_submitters():
    model = tah_model("mlp")
    engine = Engine.from_tah_model(model, max_batch=2, max_len=64, eos_token_ids=[])
    prompts = make_prompts(12, (4, 7, 5, 9, 6))
    streamed: dict[str, list[int]] = {}
    lock = threading.Lock()

    def callback(event):
        with lock:
            streamed.setdefault(event.request_id, []).extend(event.token_ids)

    engine.start()
    try:
        reqs = []
        threads = [
            threading.Thread(
                target=lambda p=p: reqs.append(
                    engine.add_request(p, SamplingParams(max_tokens=6), callback=callback)
                )
            )
            for p in prompts
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in reqs:
            assert r.done.wait(30)
    finally:
        engine.stop()
    for r in reqs:
        assert streamed[r.request_id] == r.output
        assert (r.output, r.iter_counts) == core_single(model, r.prompt, 6, [])
