"""Megabyte prompts must not stall the other clients (issue 26, item 1).

The bundled tiny model behind real loopback HTTP: eight ~1 MB prompts arrive while good
streams run; the streams' first tokens and ``/health`` must still answer within a second.
The size bound (``prompt_bound``) is checked against real tokenization: it must never refuse
a prompt that would fit.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from importlib.resources import files

import httpx
import pytest

from conftest import QWEN3_SKIP, QWEN3_TOKENIZER
from tah import TaHForCausalLM
from tah.engine.engine import Engine
from tah.engine.prompt_bound import TokenFloor
from tah.engine.server import create_app
from tah.engine.serving import make_server

BUNDLED = str(files("tah") / "assets" / "tiny-tah")
HUGE = "Tom has 17 apples. " * 54000  # ~1 MB, the prompt
GOOD = {
    "messages": [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many?"}],
    "max_tokens": 6,
    "temperature": 0,
    "stream": True,
}


@pytest.fixture(scope="module")
def bundled():
    return TaHForCausalLM.from_pretrained(BUNDLED)


class Live:
    def __init__(self, model) -> None:
        engine = Engine.from_tah_model(model, max_batch=8, model_name="tiny-tah")
        self.app = create_app(engine, max_request_bytes=2 << 20)
        self.server = make_server(self.app, host="127.0.0.1", port=0, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Live:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def first_token_after(url: str) -> float:
    """Seconds from sending a good stream to its first content chunk."""
    start = time.monotonic()
    with (
        httpx.Client(timeout=20) as client,
        client.stream("POST", f"{url}/v1/chat/completions", json=GOOD) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if (
                line.startswith("data: {")
                and json.loads(line[6:])["choices"][0]["tah"]["token_ids"]
            ):
                return time.monotonic() - start
    raise AssertionError("the stream sent no token")


def raw_post(path: str, body: dict) -> bytes:
    """A whole HTTP request, encoded once: the flood must cost the test's own process (which
    also runs the server) as little as possible."""
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


def flood_and_measure(url: str, n_huge: int = 8) -> tuple[list[dict], list[float]]:
    """Send ``n_huge`` huge prompts at once (completions and chat) and, while they arrive,
    three good streams and a /health probe; return the huge prompts' answers (status and
    error) and the good requests' latencies."""
    port = int(url.rsplit(":", 1)[1])
    floods = [
        raw_post("/v1/completions", {"prompt": HUGE, "max_tokens": 4})
        if i % 2
        else raw_post("/v1/chat/completions", {"messages": [{"role": "user", "content": HUGE}]})
        for i in range(n_huge)
    ]
    answers: list[dict] = []
    latencies: list[float] = []

    def huge(request: bytes) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(request)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        answers.append({"status": int(head.split()[1]), "body": json.loads(body)})

    def good() -> None:
        latencies.append(first_token_after(url))

    def health() -> None:
        start = time.monotonic()
        assert httpx.get(f"{url}/health", timeout=20).status_code == 200
        latencies.append(time.monotonic() - start)

    senders = [threading.Thread(target=huge, args=(r,)) for r in floods]
    for t in senders:
        t.start()
    time.sleep(0.2)  # the huge bodies are arriving / being handled
    probes = [threading.Thread(target=good) for _ in range(3)] + [threading.Thread(target=health)]
    for t in probes:
        t.start()
    for t in probes + senders:
        t.join(60)
    return answers, latencies


def allowed_latency(url: str) -> float:
    """1 s, or five times a good stream's first-token time alone if the machine is so loaded
    that this is more (before the fix, each huge prompt held every client for seconds)."""
    solo = sorted(first_token_after(url) for _ in range(3))[1]
    return max(1.0, 5 * solo)


def test_huge_prompts_are_refused_by_size_without_stalling_others(bundled):
    with Live(bundled) as live:
        first_token_after(live.url)  # warm up
        allowed = allowed_latency(live.url)
        answers, latencies = flood_and_measure(live.url)
    assert len(answers) == 8 and len(latencies) == 4
    for r in answers:
        assert r["status"] == 400, r
        assert r["body"]["error"]["code"] == "context_length_exceeded"
    assert max(latencies) < allowed, (latencies, allowed)


def test_tokenizing_runs_off_the_event_loop(bundled, monkeypatch):
    """A tokenizer with no size bound that takes 0.5 s per long prompt: the other clients
    must not wait for it."""
    with Live(bundled) as live:
        state = live.app.state.tah
        state.token_floor = TokenFloor(None)  # no bound: every prompt is tokenized
        tok = state.tokenizer
        encode = tok.encode

        def slow_encode(text, *args, **kwargs):
            if len(text) > 10_000:
                time.sleep(0.5)  # releases the GIL, as the real tokenizer does
                return list(range(600))
            return encode(text, *args, **kwargs)

        monkeypatch.setattr(tok, "encode", slow_encode)
        allowed = allowed_latency(live.url)
        answers, latencies = flood_and_measure(live.url)
    assert [r["status"] for r in answers] == [400] * 8, answers
    assert max(latencies) < allowed, (latencies, allowed)


# ---------------------------------------------------------------------- the bound is safe
PIECES = [
    "Tom has 17 apples. ",
    "  ",
    "\n\n",
    "1234567890",
    "é",
    "e\u0301",  # composes under NFC: fewer bytes after normalizing
    "\u1100\u1161\u11a8",  # Hangul jamo: three characters, one syllable under NFC
    "漢字",
    "🙂",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "----------------",
    "x",
]


def random_texts(n: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        yield "".join(rng.choice(PIECES) * rng.randint(1, 40) for _ in range(rng.randint(1, 30)))


def check_floor_never_exceeds_the_count(tok) -> None:
    floor = TokenFloor(tok)
    assert floor.max_bytes is not None, "this tokenizer should have a bound"
    for text in random_texts(300):
        count = len(tok.encode(text, add_special_tokens=False))
        assert floor.floor(text) <= count, (text[:80], floor.floor(text), count)


def test_floor_is_a_lower_bound_for_the_bundled_tokenizer(bundled):
    check_floor_never_exceeds_the_count(bundled.tokenizer)
    # and it is tight enough to refuse the prompt at once
    assert TokenFloor(bundled.tokenizer).floor(HUGE) > 512


@pytest.mark.slow  # loading the 150k-token tokenizer takes ~10 s here
@pytest.mark.skipif(not QWEN3_TOKENIZER.is_dir(), reason=QWEN3_SKIP)
def test_floor_is_a_lower_bound_for_qwen3_with_its_normalizer():
    from transformers import AutoTokenizer

    check_floor_never_exceeds_the_count(AutoTokenizer.from_pretrained(str(QWEN3_TOKENIZER)))


def test_tokenizers_without_a_certain_bound_get_none():
    from conftest import char_tokenizer

    assert TokenFloor(char_tokenizer(64)).floor(HUGE) == 0  # word-level: no bound
    assert TokenFloor(None).floor(HUGE) == 0
