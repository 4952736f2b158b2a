"""The OpenAI-compatible server: routes, streaming, TaH fields, errors (in-process client)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from conftest import char_tokenizer
from tah.engine.engine import Engine
from tah.engine.server import create_app
from test_engine_equality import core_single, tah_model

EOS = 2  # <|im_end|> of the character tokenizer


@pytest.fixture(scope="module")
def served():
    model = tah_model("mlp")
    tok = char_tokenizer(64)
    model.tokenizer = tok
    engine = Engine.from_tah_model(model, max_batch=4, max_len=96, model_name="tiny")
    app = create_app(engine, max_concurrency=8, max_request_bytes=4096)
    with TestClient(app) as client:
        yield client, model, tok, engine


def sse_events(text: str) -> list:
    events = []
    for block in text.strip().split("\n\n"):
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_health_and_models(served):
    client, model, _, engine = served
    assert client.get("/health").json()["status"] == "ok"
    data = client.get("/v1/models").json()["data"]
    assert data[0]["id"] == "tiny"
    assert data[0]["max_model_len"] == engine.max_len
    assert data[0]["tah"]["max_iter"] == 2 and data[0]["tah"]["decider"] == "mlp"


def test_completion_matches_core_and_reports_iterations(served):
    client, model, tok, _ = served
    prompt = "hello world, how are you"
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 20, "temperature": 0}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    choice = out["choices"][0]
    tokens, counts = core_single(model, tok.encode(prompt), 20, [EOS])
    assert choice["tah"]["token_ids"] == tokens
    assert choice["tah"]["iter_counts"] == counts
    assert choice["text"] == tok.decode(tokens, skip_special_tokens=True)
    assert choice["finish_reason"] == ("stop" if tokens[-1] == EOS else "length")
    usage = out["usage"]
    assert usage["prompt_tokens"] == len(tok.encode(prompt))
    assert usage["completion_tokens"] == len(tokens)
    assert usage["total_iterations"] == sum(counts)
    assert usage["iterated_tokens"] == sum(c > 1 for c in counts)
    assert usage["avg_depth"] == pytest.approx(sum(counts) / len(counts))
    assert out["object"] == "text_completion" and out["model"] == "tiny"


def test_stream_equals_non_stream(served):
    client, *_ = served
    body = {"prompt": [5, 9, 14, 3, 22, 7], "max_tokens": 15, "temperature": 0}
    full = client.post("/v1/completions", json=body).json()
    r = client.post(
        "/v1/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    ids = [t for c in chunks for t in c["choices"][0]["tah"]["token_ids"]]
    assert text == full["choices"][0]["text"]
    assert ids == full["choices"][0]["tah"]["token_ids"]
    assert chunks[-1]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
    assert events[-2]["choices"] == [] and events[-2]["usage"] == full["usage"]


def test_chat_completion_stream_and_plain(served):
    client, model, tok, _ = served
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]
    body = {"messages": messages, "max_tokens": 12, "temperature": 0}
    out = client.post("/v1/chat/completions", json=body).json()
    ids = tok.encode(
        tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
        add_special_tokens=False,
    )
    tokens, counts = core_single(model, ids, 12, [EOS])
    msg = out["choices"][0]["message"]
    assert msg["role"] == "assistant"
    assert msg["content"] == tok.decode(tokens, skip_special_tokens=True)
    assert out["choices"][0]["tah"]["iter_counts"] == counts
    assert out["object"] == "chat.completion"
    events = sse_events(client.post("/v1/chat/completions", json={**body, "stream": True}).text)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == msg["content"]


def test_threshold_and_depth_cap_per_request(served):
    client, *_ = served
    body = {"prompt": "abc def", "max_tokens": 10, "temperature": 0, "ignore_eos": True}
    capped = client.post("/v1/completions", json={**body, "max_iter": 1}).json()
    always = client.post("/v1/completions", json={**body, "tah_threshold": 0.0}).json()
    assert capped["choices"][0]["tah"]["iter_counts"] == [1] * 10
    assert capped["usage"]["avg_depth"] == 1.0
    assert always["choices"][0]["tah"]["iter_counts"] == [2] * 10
    assert always["usage"]["avg_depth"] == 2.0


def test_stop_string_truncates(served):
    client, *_ = served
    body = {"prompt": "the quick brown fox", "max_tokens": 30, "temperature": 0, "ignore_eos": True}
    text = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert len(text) >= 8
    stop = text[4:6]
    cut = text.find(stop)
    out = client.post("/v1/completions", json={**body, "stop": [stop, "@@"]}).json()
    assert out["choices"][0]["text"] == text[:cut]
    assert out["choices"][0]["finish_reason"] == "stop"
    events = sse_events(
        client.post("/v1/completions", json={**body, "stop": stop, "stream": True}).text
    )
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == text[:cut]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ("{not json", 400, "JSON"),
        ("[1, 2]", 400, "object"),
        ({"model": "gpt-9", "prompt": "a"}, 404, "gpt-9"),
        ({"prompt": "a", "max_tokens": -3}, 400, "max_tokens"),
        ({"prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "a", "max_tokens": "many"}, 400, "max_tokens"),
        ({"prompt": "a" * 120}, 400, "context"),
        ({"prompt": "a", "max_tokens": 200}, 400, "context"),
        ({"prompt": "a", "temperature": -0.5}, 400, "temperature"),
        ({"prompt": "a", "top_p": 0}, 400, "top_p"),
        ({"prompt": "a", "min_p": 1.5}, 400, "min_p"),
        ({"prompt": "a", "top_k": -7}, 400, "top_k"),
        ({"prompt": "a", "tah_threshold": 3}, 400, "threshold"),
        ({"prompt": "a", "max_iter": 0}, 400, "max_iter"),
        ({"prompt": "a", "n": 2}, 400, "n=1"),
        ({"prompt": [1, 2, 999]}, 400, "vocabulary"),
        ({"max_tokens": 3}, 400, "prompt"),
        ({"prompt": "a" * 5000}, 413, "limit"),
    ],
)
def test_bad_requests_get_4xx_with_a_message(served, body, status, needle):
    client, *_ = served
    content = body if isinstance(body, str) else json.dumps(body)
    r = client.post(
        "/v1/completions", content=content, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle.lower() in error["message"].lower()


def test_bad_chat_requests(served):
    client, *_ = served
    r = client.post("/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "wizard", "content": "x"}]})
    assert r.status_code == 400 and "role" in r.json()["error"]["message"]
    # no slot is leaked by the failures above
    assert client.app.state.tah.active == 0


def test_stop_token_ids(served):
    client, *_ = served
    body = {"prompt": "count 1 2 3", "max_tokens": 20, "temperature": 0, "ignore_eos": True}
    ids = client.post("/v1/completions", json=body).json()["choices"][0]["tah"]["token_ids"]
    out = client.post("/v1/completions", json={**body, "stop_token_ids": [ids[4]]}).json()
    got = out["choices"][0]["tah"]["token_ids"]
    assert got == ids[: ids.index(ids[4])]  # the stop token is not part of the answer
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] == len(got)


def test_null_fields_mean_defaults(served):
    client, *_ = served
    body = {"prompt": "a b", "temperature": None, "top_p": None, "top_k": None, "min_p": None}
    body.update({"max_tokens": None, "stop": None, "n": None, "stream": None, "seed": None})
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 16  # OpenAI's default max_tokens


def test_sse_events_stay_on_one_line():
    """Decoded text may hold U+2028/U+0085, which some clients split lines on."""
    from tah.engine.protocol import sse_event

    text = "a\u2028b\x85c\u2029d\x1ce\nf"
    event = sse_event({"text": text})
    assert event.endswith("\n\n") and len(event[:-2].splitlines()) == 1
    assert json.loads(event[len("data: ") : -2])["text"] == text
