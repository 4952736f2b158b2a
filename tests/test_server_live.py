"""The server over real loopback HTTP (uvicorn): disconnects, the concurrency limit, shutdown.

The engine is slowed down (a short sleep per step) so that requests stay in flight long
enough to disconnect from or to fill the concurrency limit deterministically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time

import httpx
import pytest

from conftest import char_tokenizer
from tah.engine.engine import Engine
from tah.engine.server import create_app
from tah.engine.serving import make_server
from test_engine_equality import tah_model

STEP_DELAY = 0.02


class LiveServer:
    def __init__(
        self, max_concurrency: int = 8, step_delay: float = STEP_DELAY, **app_options
    ) -> None:
        model = tah_model("mlp")
        model.tokenizer = char_tokenizer(64)
        self.engine = Engine.from_tah_model(model, max_batch=4, max_len=128, model_name="tiny")
        step = self.engine.step

        def slow_step():
            time.sleep(step_delay)
            return step()

        self.engine.step = slow_step
        app_options.setdefault("shutdown_timeout", 5)
        self.app = create_app(self.engine, max_concurrency=max_concurrency, **app_options)
        self.server = make_server(self.app, host="127.0.0.1", port=0, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


LONG = {"prompt": "abc", "max_tokens": 100, "temperature": 0, "ignore_eos": True, "stream": True}


def test_disconnect_frees_the_row(caplog):
    caplog.set_level(logging.INFO)
    with LiveServer() as live, httpx.Client(base_url=live.url, timeout=10) as client:
        with client.stream("POST", "/v1/completions", json=LONG) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["object"] == "text_completion"
            assert live.engine.n_rows == 1
        # The client closed the stream after one chunk: the request is aborted, row freed.
        assert wait_for(lambda: live.engine.n_rows == 0 and not live.engine.requests)
        assert wait_for(lambda: live.app.state.tah.active == 0)
        assert live.engine.stats["tokens"] < LONG["max_tokens"]
        # The server keeps serving.
        r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_non_streaming_disconnect_aborts(caplog):
    caplog.set_level(logging.INFO)
    with LiveServer() as live:
        body = {**LONG, "stream": False}
        with contextlib.suppress(httpx.TimeoutException), httpx.Client(timeout=0.3) as client:
            client.post(f"{live.url}/v1/completions", json=body)
        assert wait_for(lambda: live.engine.n_rows == 0 and not live.engine.requests)
        assert live.engine.stats["tokens"] < body["max_tokens"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_concurrency_limit_returns_429():
    with (
        LiveServer(max_concurrency=2) as live,
        httpx.Client(base_url=live.url, timeout=10) as client,
    ):
        with (
            client.stream("POST", "/v1/completions", json=LONG) as a,
            client.stream("POST", "/v1/completions", json=LONG) as b,
        ):
            assert a.status_code == b.status_code == 200
            r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
            assert r.status_code == 429
            assert "limit" in r.json()["error"]["message"]
        assert wait_for(lambda: live.app.state.tah.active == 0)
        r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 200


def test_graceful_shutdown_finishes_requests_in_flight():
    live = LiveServer()
    with live:
        body = {**LONG, "max_tokens": 40}
        received: list[str] = []

        def consume():
            with (
                httpx.Client(timeout=10) as client,
                client.stream("POST", f"{live.url}/v1/completions", json=body) as r,
            ):
                received.extend(line for line in r.iter_lines() if line.startswith("data: "))

        reader = threading.Thread(target=consume)
        reader.start()
        assert wait_for(lambda: live.engine.stats["tokens"] > 2)
        live.server.should_exit = True  # what SIGINT / SIGTERM do
        reader.join(10)
        live.thread.join(10)
    assert received[-1] == "data: [DONE]"
    chunks = [json.loads(x[6:]) for x in received[:-1]]
    assert sum(len(c["choices"][0]["tah"]["token_ids"]) for c in chunks) == 40
    assert live.engine._thread is None  # the engine loop stopped with the app
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{live.url}/health", timeout=1)


def stalled_body(port: int) -> socket.socket:
    """A connection that sends its headers and 10 of the 100 body bytes it announces."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"prompt":')
    return sock


def test_stalled_bodies_hold_no_slot_and_time_out(caplog):
    caplog.set_level(logging.INFO)
    with LiveServer(max_concurrency=1, body_timeout=1.0) as live:
        stalled = [stalled_body(live.port) for _ in range(3)]
        time.sleep(0.2)
        body = {"prompt": "x", "max_tokens": 3, "temperature": 0}
        r = httpx.post(f"{live.url}/v1/completions", json=body, timeout=10)
        assert r.status_code == 200, r.text  # the stalled bodies took no slot
        stalled.pop().close()  # a client that gives up mid-body: no traceback
        for sock in stalled:
            answer = b""
            while b"}}" not in answer and (chunk := sock.recv(4096)):
                answer += chunk
            answer = answer.decode()
            assert answer.startswith("HTTP/1.1 408"), answer
            assert '"error"' in answer and "did not arrive" in answer
            sock.close()
        assert wait_for(lambda: live.app.state.tah.active == 0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_shutdown_past_the_timeout_ends_requests_with_abort(caplog):
    caplog.set_level(logging.INFO)
    live = LiveServer(shutdown_timeout=0.3)
    received: list[str] = []
    plain: list[httpx.Response] = []
    with live:
        long = {**LONG, "max_tokens": 120}

        def consume():
            with (
                httpx.Client(timeout=20) as client,
                client.stream("POST", f"{live.url}/v1/completions", json=long) as r,
            ):
                received.extend(line for line in r.iter_lines() if line.startswith("data: "))

        def call():
            plain.append(httpx.post(f"{live.url}/v1/completions", json={**long, "stream": False}))

        readers = [threading.Thread(target=consume), threading.Thread(target=call)]
        for t in readers:
            t.start()
        assert wait_for(lambda: live.engine.n_rows == 2 and live.engine.stats["tokens"] > 4)
        live.server.should_exit = True
        for t in readers:
            t.join(15)
        live.thread.join(15)
    assert received[-1] == "data: [DONE]"
    last = json.loads(received[-2][6:])
    assert last["choices"][0]["finish_reason"] == "abort"
    assert plain[0].status_code == 200, plain[0].text
    out = plain[0].json()
    assert out["choices"][0]["finish_reason"] == "abort"
    assert 0 < out["usage"]["completion_tokens"] < 120
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
