"""A bounded fuzz test of the live server on loopback (issue 12's acceptance test): a few
hundred generated malformed requests, sent concurrently with good ones, never get a 5xx, never
log an error, and never stop the good requests from succeeding."""

from __future__ import annotations

import json
import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from test_server_live import LiveServer, wait_for

N_CASES = 300
SEED = 12

FIELDS = [
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "stream", "stream_options",
    "n", "ignore_eos", "tah_threshold", "max_iter", "logprobs", "top_logprobs", "echo",
    "suffix", "presence_penalty", "frequency_penalty", "logit_bias", "tools", "tool_choice",
    "response_format", "unknown_field",
]  # fmt: skip
VALUES = [
    None, True, False, 0, 1, -1, 3, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30,
    1e30, 1e-300, -1e-300, 0.5, 1.5, 100.0, 1e308, "", "x", "\ud800", "a\udfffb", "\x00",
    "é世🎉", [], [1, 2], [-5], [2**70], [[1]], ["a", "b"], [None], {}, {"a": 1},
    {"include_usage": True}, {"type": "json_object"}, {"type": "text"},
    [{"role": "user", "content": "hi"}], [{"role": "user", "content": [{"type": "text"}]}],
    [{"role": "user", "content": [{"type": "text", "text": 5}]}], [{"role": 1}],
]  # fmt: skip
RAW_BODIES = [
    b"", b"{", b"}", b"null", b"[]", b"1", b'"x"', b"{not json", b"\xff\xfe\x00",
    b'{"prompt": "a", "temperature": NaN}', b'{"prompt": "a", "top_p": -Infinity}',
    b'{"prompt": "a", "max_tokens": 1e999}', b'{"prompt": "\\ud800"}',
    b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    b'{"prompt": "' + b"a" * 300_000 + b'"}',
]  # fmt: skip
ROUTES = ["/v1/completions", "/v1/chat/completions"]
ODD = [
    ("GET", "/v1/completions"), ("PUT", "/v1/chat/completions"), ("DELETE", "/v1/models"),
    ("GET", "/v1/models/nope"), ("GET", "/v1/models/%ff"), ("POST", "/v1/models"),
    ("GET", "/v2/anything"), ("POST", "/health"), ("GET", "/v1/models/tiny/extra"),
]  # fmt: skip


def generate_cases(rng: random.Random, n: int) -> list[tuple[str, str, bytes, dict]]:
    cases = []
    for _ in range(n):
        kind = rng.random()
        headers = {"content-type": "application/json"}
        if kind < 0.65:  # a sensible body with one to three fields set to odd values
            chat = rng.random() < 0.5
            body = {"max_tokens": 3, "ignore_eos": True}
            if chat:
                body["messages"] = [{"role": "user", "content": "hi"}]
            else:
                body["prompt"] = "abc"
            for _ in range(rng.randint(1, 3)):
                body[rng.choice(FIELDS)] = rng.choice(VALUES)
            raw = json.dumps(body).encode()
            cases.append(("POST", ROUTES[chat], raw, headers))
        elif kind < 0.85:
            cases.append(("POST", rng.choice(ROUTES), rng.choice(RAW_BODIES), headers))
        elif kind < 0.93:
            method, path = rng.choice(ODD)
            cases.append((method, path, b"", {}))
        else:  # random bytes under a random content type
            raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
            headers = {"content-type": rng.choice(["text/plain", "application/json", "x/y"])}
            cases.append(("POST", rng.choice(ROUTES), raw, headers))
    return cases


def test_fuzzed_requests_get_no_5xx_and_good_requests_succeed(caplog):
    caplog.set_level(logging.WARNING)
    cases = generate_cases(random.Random(SEED), N_CASES)
    with LiveServer(max_concurrency=64, step_delay=0.0, max_request_bytes=200_000) as live:
        statuses: list[int] = []
        good_results: list[tuple[int, int]] = []
        stop = threading.Event()

        def good_loop(i: int) -> None:
            body = {"prompt": f"good {i}", "max_tokens": 6, "temperature": 0.8, "seed": i}
            body["ignore_eos"] = True
            with httpx.Client(base_url=live.url, timeout=30) as client:
                while not stop.is_set() or len(good_results) < 8:
                    r = client.post("/v1/completions", json=body)
                    tokens = r.json()["usage"]["completion_tokens"] if r.is_success else -1
                    good_results.append((r.status_code, tokens))

        local = threading.local()
        clients: list[httpx.Client] = []

        def send(case) -> int:
            if not hasattr(local, "client"):  # one client per thread (making one is slow)
                local.client = httpx.Client(base_url=live.url, timeout=30)
                clients.append(local.client)
            method, path, raw, headers = case
            return local.client.request(method, path, content=raw, headers=headers).status_code

        good = [threading.Thread(target=good_loop, args=(i,)) for i in range(3)]
        for t in good:
            t.start()
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(send, cases))
        stop.set()
        for client in clients:
            client.close()
        for t in good:
            t.join(30)
        assert wait_for(lambda: live.app.state.tah.active == 0)
        assert httpx.get(f"{live.url}/health").json()["status"] == "ok"
    server_errors = [(c[:2], s) for c, s in zip(cases, statuses) if s >= 500]
    assert not server_errors, server_errors[:5]
    assert sum(400 <= s < 500 for s in statuses) > N_CASES // 2  # most cases really are bad
    print(f"{N_CASES} fuzz cases, statuses {sorted(set(statuses))}, {len(good_results)} good")
    assert good_results and all(r == (200, 6) for r in good_results), good_results[:5]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors[:3]]
