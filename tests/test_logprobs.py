"""Logprobs, echo and decider probabilities (tah.engine.trace), in the engine and the server,
checked against ``TaHForCausalLM``'s own logits for the same tokens and iteration pattern."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest
import torch
from fastapi.testclient import TestClient

from tah import TaHForCausalLM
from tah.engine.engine import Engine
from tah.engine.sampling import SamplingParams
from tah.engine.server import create_app

BUNDLED = str(files("tah") / "assets" / "tiny-tah")
TAU = 0.3  # low enough that the bundled decider sends some tokens deeper
PROMPT = "Question: Lily has 3 apples and buys 4 more. How many apples? Answer:"


@pytest.fixture(scope="module")
def bundled():
    return TaHForCausalLM.from_pretrained(BUNDLED, threshold=TAU)


@pytest.fixture(scope="module")
def client(bundled):
    engine = Engine.from_tah_model(bundled, max_batch=4, model_name="tiny-tah")
    with TestClient(create_app(engine)) as c:
        yield c


def reference(model, ids: list[int]):
    """Log-softmax of the model's logits over ``ids`` in one forward, and its pattern."""
    with torch.inference_mode():
        out = model(torch.tensor([ids]), threshold=TAU)
    return torch.log_softmax(out.logits[0].float(), -1), out.iter_counts[0].tolist()


def run(engine: Engine, prompt: list[int], params: SamplingParams):
    req = engine.add_request(prompt, params)
    events = []
    while not req.finished:
        events += [e for e in engine.step() if e.request_id == req.request_id]
    return req, [e for e in events if e.token_ids]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_engine_logprobs_and_echo_equal_model_logits(bundled, temperature):
    engine = Engine.from_tah_model(bundled, max_batch=2, prefill_chunk=7)  # several chunks
    prompt = bundled.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    params = SamplingParams(
        max_tokens=24, temperature=temperature, seed=3, logprobs=3, echo=True, ignore_eos=True
    )
    req, events = run(engine, prompt, params)
    full = prompt + req.output
    lp, pattern = reference(bundled, full)
    n = len(prompt)
    # the iteration pattern: prompt tokens, then the position producing each new token
    assert events[0].prompt_iter_counts == pattern[:n]
    assert req.iter_counts == pattern[n - 1 : len(full) - 1]
    assert max(pattern) == 2, "the test needs tokens that iterate"
    got = [e["logprob"] for e in events[0].prompt_logprobs[1:]]
    got += [e.logprobs[0]["logprob"] for e in events]
    want = [float(lp[i - 1, full[i]]) for i in range(1, len(full))]
    assert events[0].prompt_logprobs[0] is None
    assert got == pytest.approx(want, abs=1e-4)
    for i, e in enumerate(events):
        top_ids = [t for t, _ in e.logprobs[0]["top"]]
        assert top_ids == lp[n - 1 + i].topk(3).indices.tolist()


def test_completion_logprobs_in_lm_eval_shape(client, bundled):
    prompt = bundled.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    body = {"prompt": [prompt], "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": True}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lps = choice["logprobs"]
    n = len(prompt)
    assert len(lps["tokens"]) == len(lps["token_logprobs"]) == len(lps["top_logprobs"]) == n + 1
    assert lps["token_logprobs"][0] is None and lps["top_logprobs"][0] is None
    full = prompt + choice["tah"]["token_ids"]
    lp, pattern = reference(bundled, full)
    want = [float(lp[i - 1, full[i]]) for i in range(1, n + 1)]
    assert lps["token_logprobs"][1:] == pytest.approx(want, abs=1e-4)
    assert choice["tah"]["prompt_iter_counts"] == pattern[:n]
    # lm-eval's greedy check: the last (generated, greedy) token is the top alternative
    assert lps["token_logprobs"][-1] == pytest.approx(max(lps["top_logprobs"][-1].values()))
    assert choice["text"].startswith(bundled.tokenizer.decode(prompt, skip_special_tokens=True))


def test_chat_logprobs_and_stream(client, bundled):
    body = {
        "messages": [{"role": "user", "content": "What is 3 plus 4?"}],
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    out = client.post("/v1/chat/completions", json=body).json()
    content = out["choices"][0]["logprobs"]["content"]
    assert len(content) == len(out["choices"][0]["tah"]["token_ids"]) == 6
    for entry in content:
        assert len(entry["top_logprobs"]) == 2
        assert entry["logprob"] == pytest.approx(entry["top_logprobs"][0]["logprob"])  # greedy
    r = client.post("/v1/chat/completions", json={**body, "stream": True})
    chunks = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: {")]
    streamed = [c["choices"][0]["logprobs"]["content"][0] for c in chunks[1:]]
    assert [e["logprob"] for e in streamed] == pytest.approx([e["logprob"] for e in content])


def test_stream_carries_decider_probabilities(client):
    body = {
        "prompt": PROMPT,
        "max_tokens": 24,
        "temperature": 0,
        "stream": True,
        "tah_decider_probs": True,
        "tah_threshold": TAU,
        "stream_options": {"include_usage": True},
    }
    r = client.post("/v1/completions", json=body)
    chunks = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: {")]
    tah = [c["choices"][0]["tah"] for c in chunks if c["choices"]]
    tah = [t for t in tah if t["token_ids"]]
    assert len(tah) == 24
    for t in tah:
        (probs,) = t["decider_probs"]  # one token per chunk; max_iter 2: one decision
        assert len(probs) == 1 and t["decider_thresholds"] == [[TAU]]
        assert (probs[0] > TAU) == (t["iter_counts"][0] > 1)
    usage = chunks[-1]["usage"]
    assert usage["iter_share"] == pytest.approx(sum(t["iter_counts"][0] > 1 for t in tah) / 24)


def test_budget_steers_tau_per_token_and_usage_reports_the_share(client):
    body = {
        "prompt": PROMPT,
        "max_tokens": 48,
        "tah_iter_budget": 0.25,
        "ignore_eos": True,
        "stream": True,
        "tah_decider_probs": True,
        "stream_options": {"include_usage": True},
    }
    r = client.post("/v1/completions", json=body)
    chunks = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: {")]
    tah = [
        c["choices"][0]["tah"]
        for c in chunks
        if c["choices"] and c["choices"][0]["tah"]["token_ids"]
    ]
    taus = [t["decider_thresholds"][0][0] for t in tah]
    for t, tau in zip(tah, taus):
        assert (t["decider_probs"][0][0] > tau) == (t["iter_counts"][0] > 1)
    assert len(set(taus)) > 5  # τ moves from token to token
    usage = chunks[-1]["usage"]
    assert usage["iter_budget"] == 0.25
    assert usage["iter_share"] == pytest.approx(usage["iterated_tokens"] / 48)
    assert abs(usage["iter_share"] - 0.25) <= 0.1


@pytest.mark.parametrize(
    "body, field",
    [
        ({"prompt": "hi", "logprobs": 50}, "logprobs"),
        ({"prompt": "hi", "logprobs": "yes"}, "logprobs"),
        ({"prompt": "hi", "echo": True, "max_tokens": 0, "stream": True, "n": 2}, "n"),
        ({"prompt": "hi", "tah_iter_budget": 1.5}, None),
        ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_bad_logprob_and_budget_requests_get_400(client, body, field):
    url = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = client.post(url, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field or field is None


def test_echo_on_a_model_that_never_iterates():
    plain = TaHForCausalLM.from_pretrained(BUNDLED, decider="never")
    engine = Engine.from_tah_model(plain, max_batch=1, prefill_chunk=7)  # several chunks
    prompt = plain.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    req, events = run(engine, prompt, SamplingParams(max_tokens=3, logprobs=0, echo=True))
    full = prompt + req.output
    with torch.inference_mode():
        lp = torch.log_softmax(plain(torch.tensor([full])).logits[0].float(), -1)
    got = [e["logprob"] for e in events[0].prompt_logprobs[1:]]
    got += [e.logprobs[0]["logprob"] for e in events]
    assert got == pytest.approx([float(lp[i - 1, full[i]]) for i in range(1, len(full))], abs=1e-4)
    assert events[0].prompt_iter_counts == [1] * len(prompt)
    assert all(e.decider_probs is None for e in events)
