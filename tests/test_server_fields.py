"""Request fields a new user tried (issue 26): strict types, fields refused by name, the
sampled token among its own alternatives, stop tokens outside the answer, echo with a stream
and echo scoring a prompt alone; against the bundled tiny model, in-process."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest
from fastapi.testclient import TestClient

from tah import TaHForCausalLM
from tah.engine.engine import Engine
from tah.engine.server import create_app

BUNDLED = str(files("tah") / "assets" / "tiny-tah")
QUESTION = "Mia has 5 pens and buys 3 more. How many pens does Mia have now?"
CHAT = {"messages": [{"role": "user", "content": QUESTION}]}
PLAIN = "Question: Lily has 3 apples and buys 4 more. How many apples? Answer:"


@pytest.fixture(scope="module")
def bundled():
    return TaHForCausalLM.from_pretrained(BUNDLED)


@pytest.fixture(scope="module")
def client(bundled):
    engine = Engine.from_tah_model(bundled, max_batch=4, model_name="tiny-tah")
    with TestClient(create_app(engine)) as c:
        yield c


def chunks_of(text: str) -> list[dict]:
    return [json.loads(x[6:]) for x in text.split("\n\n") if x.startswith("data: {")]


# ---------------------------------------------------------------------- item 2
@pytest.mark.parametrize("seed", range(6))
def test_sampled_token_is_among_its_own_alternatives(client, seed):
    hot = {"temperature": 1.5, "top_k": 0, "seed": seed, "max_tokens": 15, "ignore_eos": True}
    r = client.post("/v1/completions", json={"prompt": PLAIN, "logprobs": 2, **hot})
    lps = r.json()["choices"][0]["logprobs"]
    for token, logprob, top in zip(lps["tokens"], lps["token_logprobs"], lps["top_logprobs"]):
        assert token in top and top[token] == logprob, (token, top)
        assert 2 <= len(top) <= 3
    r = client.post(
        "/v1/chat/completions", json={**CHAT, "logprobs": True, "top_logprobs": 2, **hot}
    )
    for entry in r.json()["choices"][0]["logprobs"]["content"]:
        alts = {a["token"]: a["logprob"] for a in entry["top_logprobs"]}
        assert alts.get(entry["token"]) == entry["logprob"], entry
        assert 2 <= len(entry["top_logprobs"]) <= 3


# ---------------------------------------------------------------------- item 3
@pytest.mark.parametrize(
    "route, field, value",
    [
        ("completions", "tah_iter_budget", True),
        ("completions", "max_tokens", True),
        ("completions", "temperature", False),
        ("completions", "echo", "yes"),
        ("completions", "stream", "true"),
        ("completions", "ignore_eos", 1),
        ("completions", "seed", 1.5),
        ("completions", "logprobs", True),
        ("chat", "top_logprobs", True),
        ("chat", "logprobs", "yes"),
        ("chat", "max_iter", True),
        ("chat", "tah_threshold", True),
    ],
)
def test_booleans_are_not_numbers_and_strings_not_booleans(client, route, field, value):
    body = {**CHAT} if route == "chat" else {"prompt": PLAIN}
    if field == "top_logprobs":
        body["logprobs"] = True
    r = client.post(
        f"/v1/{'chat/' if route == 'chat' else ''}completions", json={**body, field: value}
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"], err


def test_integers_are_numbers(client):
    body = {"prompt": PLAIN, "max_tokens": 2, "temperature": 1, "top_p": 1, "tah_threshold": 1}
    assert client.post("/v1/completions", json=body).status_code == 200


# ---------------------------------------------------------------------- item 4
@pytest.mark.parametrize(
    "route, field, value",
    [
        ("completions", "best_of", 3),
        ("completions", "min_tokens", 40),
        ("completions", "top_logprobs", 2),
        ("chat", "echo", True),
        ("chat", "max_iter", 1000),
        ("completions", "max_iter", 3),
    ],
)
def test_unsupported_fields_are_refused_by_name(client, route, field, value):
    body = {**CHAT} if route == "chat" else {"prompt": PLAIN}
    r = client.post(
        f"/v1/{'chat/' if route == 'chat' else ''}completions", json={**body, field: value}
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"], err


def test_neutral_values_of_refused_fields_pass(client):
    body = {"prompt": PLAIN, "max_tokens": 2, "best_of": 1, "min_tokens": 0, "max_iter": 2}
    assert client.post("/v1/completions", json=body).status_code == 200
    chat = {**CHAT, "max_tokens": 2, "echo": False, "max_iter": 1}
    assert client.post("/v1/chat/completions", json=chat).status_code == 200


# ---------------------------------------------------------------------- item 5
def test_echo_streams_the_prompt_first(client):
    body = {"prompt": PLAIN, "max_tokens": 5, "temperature": 0, "echo": True, "logprobs": 1}
    whole = client.post("/v1/completions", json=body).json()["choices"][0]
    chunks = chunks_of(client.post("/v1/completions", json={**body, "stream": True}).text)
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == whole["text"] and text.startswith(PLAIN)
    streamed: dict[str, list] = {"tokens": [], "token_logprobs": []}
    for c in chunks:
        for key in streamed:
            streamed[key] += (c["choices"][0]["logprobs"] or {}).get(key, [])
    assert streamed["tokens"] == whole["logprobs"]["tokens"]
    assert streamed["token_logprobs"] == pytest.approx(whole["logprobs"]["token_logprobs"])
    assert (
        chunks[0]["choices"][0]["tah"]["prompt_iter_counts"] == whole["tah"]["prompt_iter_counts"]
    )


def test_echo_with_max_tokens_0_scores_the_prompt_alone(client):
    body = {"prompt": PLAIN, "max_tokens": 0, "echo": True, "logprobs": 1}
    score = client.post("/v1/completions", json=body)
    assert score.status_code == 200, score.text
    choice, usage = score.json()["choices"][0], score.json()["usage"]
    n = usage["prompt_tokens"]
    assert usage["completion_tokens"] == 0 and choice["tah"]["token_ids"] == []
    assert choice["text"] == PLAIN and choice["finish_reason"] == "length"
    assert (
        len(choice["logprobs"]["tokens"]) == n and choice["logprobs"]["token_logprobs"][0] is None
    )
    longer = client.post("/v1/completions", json={**body, "max_tokens": 1}).json()["choices"][0]
    assert longer["logprobs"]["token_logprobs"][:n] == pytest.approx(
        choice["logprobs"]["token_logprobs"]
    )
    chunks = chunks_of(client.post("/v1/completions", json={**body, "stream": True}).text)
    assert "".join(c["choices"][0]["text"] for c in chunks) == PLAIN
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    no_echo = client.post("/v1/completions", json={"prompt": PLAIN, "max_tokens": 0})
    assert no_echo.status_code == 400 and no_echo.json()["error"]["param"] == "max_tokens"


# ---------------------------------------------------------------------- item 6
def test_the_stop_token_is_not_part_of_the_answer(client, bundled):
    body = {**CHAT, "max_tokens": 80, "temperature": 0, "logprobs": True}
    out = client.post("/v1/chat/completions", json=body).json()
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop", "the bundled model should end its answer"
    tokens = [e["token"] for e in choice["logprobs"]["content"]]
    assert "<|im_end|>" not in tokens
    assert "".join(tokens) == choice["message"]["content"]
    assert out["usage"]["completion_tokens"] == len(tokens) == len(choice["tah"]["token_ids"])
    chunks = chunks_of(client.post("/v1/chat/completions", json={**body, "stream": True}).text)
    streamed = [
        e["token"] for c in chunks for e in (c["choices"][0]["logprobs"] or {}).get("content", [])
    ]
    assert streamed == tokens
    plain = {"prompt": PLAIN, "max_tokens": 30, "temperature": 0, "logprobs": 0}
    ids = client.post("/v1/completions", json=plain).json()["choices"][0]["tah"]["token_ids"]
    cut = client.post("/v1/completions", json={**plain, "stop_token_ids": [ids[3]]}).json()
    choice = cut["choices"][0]
    assert choice["tah"]["token_ids"] == ids[: ids.index(ids[3])]
    assert "".join(choice["logprobs"]["tokens"]) == choice["text"]
    assert cut["usage"]["completion_tokens"] == len(choice["tah"]["token_ids"])
