"""Load test of ``tah serve``: N concurrent streaming clients over loopback, bounded in count
and time.

    python bench/load_test.py [--clients 16] [--requests 200] [--time-limit 120]
    python bench/load_test.py --url http://127.0.0.1:8000 --model NAME   # a running server

Without ``--url`` it starts the server in this process on a free loopback port, serving a
small random-weight TaH model (MLP decider) with a trained task tokenizer, so the whole HTTP
path runs: text prompts, streaming detokenisation, stop handling. Each client loops: a
streaming completion with a random prompt, counting chunks until ``[DONE]``. A share of the
clients disconnect after their first chunk (``--disconnect-rate``) and a share send invalid
requests (``--bad-rate``), to exercise slot freeing and error paths under load.

Checks (exit status 1 if any fails): every request sent is accounted for exactly once as
completed / disconnected on purpose / rejected with a 4xx as expected (none lost, none failed);
completed streams end with ``[DONE]`` and report as many tokens as they streamed; after the run
no request is left in flight; resident memory after the run is within ``--rss-slack-mb`` of
its level after warm-up. Reported: requests/s, p50/p99 latency, p50 time to first token,
tokens/s, memory. Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
from urllib.parse import urlparse

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def rss_mb() -> float:
    """Resident set size of this process (the in-process server lives here)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def start_server(args):
    """A random-weight TaH model behind uvicorn on a free loopback port, in a thread."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tah import TaHConfig, TaHForCausalLM
    from tah.data.tokenizer import build_task_tokenizer
    from tah.engine.engine import Engine
    from tah.engine.server import create_app
    from tah.engine.serving import make_server

    torch.manual_seed(0)
    tok = build_task_tokenizer(n=400, vocab_size=640)
    config = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    tah_config = TaHConfig(
        max_iter=2,
        decider="mlp",
        threshold=0.7,
        decider_layers=[0, 2, 4],
        decider_hidden_dims=[64, 64],
    )
    model = TaHForCausalLM.from_base(Qwen3ForCausalLM(config).eval(), tah_config, tokenizer=tok)
    engine = Engine.from_tah_model(
        model.eval(), max_batch=args.max_batch, max_len=512, model_name="load"
    )
    app = create_app(engine, max_concurrency=args.max_concurrency)
    server = make_server(app, host="127.0.0.1", port=0, log_level="error")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, app, f"http://127.0.0.1:{port}"


WORDS = "the sum of 3 and 4 is 7 so we add carry 1 then multiply 12 by 5 answer".split()


class Stats:
    def __init__(self) -> None:
        self.sent = self.completed = self.disconnected = self.rejected = self.failed = 0
        self.latencies: list[float] = []
        self.ttft: list[float] = []
        self.tokens = 0
        self.failures: list[str] = []


async def one_request(client, args, stats: Stats, rng: random.Random) -> None:
    kind = rng.random()
    bad = kind < args.bad_rate
    leave = not bad and kind < args.bad_rate + args.disconnect_rate
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))
    body = {
        "model": args.model,
        "prompt": prompt,
        "max_tokens": rng.randint(4, args.max_tokens),
        "temperature": rng.choice([0.0, 0.8]),
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    if bad:
        body[rng.choice(["max_tokens", "temperature", "top_p"])] = -1
    stats.sent += 1
    start = time.perf_counter()
    first = None
    streamed = 0
    usage = None
    done = False
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if bad:
                await r.aread()
                if 400 <= r.status_code < 500 and "error" in json.loads(r.text):
                    stats.rejected += 1
                else:
                    stats.failed += 1
                    stats.failures.append(f"bad request got {r.status_code}")
                return
            if r.status_code != 200:
                await r.aread()
                stats.failed += 1
                stats.failures.append(f"status {r.status_code}: {r.text[:200]}")
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(chunk["error"]["message"])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk["choices"]:
                    n = len(choice["tah"]["token_ids"])
                    if n and first is None:
                        first = time.perf_counter() - start
                    streamed += n
                if leave and streamed:
                    stats.disconnected += 1
                    return  # leaving the context manager closes the connection
    except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
        stats.failed += 1
        stats.failures.append(f"{type(exc).__name__}: {exc}")
        return
    if done and usage is not None and usage["completion_tokens"] == streamed == body["max_tokens"]:
        stats.completed += 1
        stats.latencies.append(time.perf_counter() - start)
        stats.tokens += streamed
        if first is not None:
            stats.ttft.append(first)
    else:
        stats.failed += 1
        stats.failures.append(f"incomplete stream: done={done} streamed={streamed} usage={usage}")


async def drive(args, url: str) -> tuple[Stats, float]:
    import httpx

    stats = Stats()
    rng = random.Random(args.seed)
    remaining = [args.requests]
    deadline = time.monotonic() + args.time_limit
    limits = httpx.Limits(max_connections=args.clients * 2)
    timeout = httpx.Timeout(args.request_timeout)
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:

        async def worker(seed: int) -> None:
            local = random.Random(seed)
            while remaining[0] > 0 and time.monotonic() < deadline:
                remaining[0] -= 1
                await one_request(client, args, stats, local)

        await asyncio.gather(*(worker(rng.randrange(2**31)) for _ in range(args.clients)))
    return stats, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="a running server (loopback only)")
    parser.add_argument("--model", default=None, help="model id to send (default: the server's)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds, then stop")
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--disconnect-rate", type=float, default=0.1)
    parser.add_argument("--bad-rate", type=float, default=0.05)
    parser.add_argument("--max-batch", type=int, default=8, help="in-process server: engine rows")
    parser.add_argument("--max-concurrency", type=int, default=64)
    parser.add_argument("--rss-slack-mb", type=float, default=64.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    if args.clients > args.max_concurrency and args.url is None:
        parser.error("--clients must not exceed --max-concurrency (else 429s count as failures)")

    server = app = None
    if args.url:
        host = urlparse(args.url).hostname
        if host not in LOOPBACK:
            parser.error(f"--url must be a loopback address ({sorted(LOOPBACK)}), got {host!r}")
        url = args.url.rstrip("/")
    else:
        server, thread, app, url = start_server(args)
    import httpx

    if args.model is None:
        args.model = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]

    # Warm-up, then the memory baseline.
    warm = argparse.Namespace(
        **{**vars(args), "requests": 2 * args.clients, "disconnect_rate": 0.1}
    )
    asyncio.run(drive(warm, url))
    rss_start = rss_mb()
    samples: list[float] = []
    sampling = threading.Event()

    def sample_rss() -> None:  # resident memory every half second while the load runs
        while not sampling.wait(0.5):
            samples.append(rss_mb())

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    stats, elapsed = asyncio.run(drive(args, url))
    sampling.set()
    sampler.join()
    time.sleep(0.5)
    health = httpx.get(f"{url}/health", timeout=10).json()
    rss_end = rss_mb()
    leaked = health["active_requests"] != 0 or health["running"] != 0 or health["waiting"] != 0
    if app is not None:
        engine = app.state.tah.engine
        leaked = leaked or bool(engine.requests) or engine.n_rows != 0
    accounted = stats.completed + stats.disconnected + stats.rejected + stats.failed
    checks = {
        "none lost": accounted == stats.sent,
        "none failed": stats.failed == 0,
        "no request left in flight": not leaked,
        "memory flat": (rss_end - rss_start) <= args.rss_slack_mb if app is not None else True,
    }
    result = {
        "sent": stats.sent,
        "completed": stats.completed,
        "disconnected_on_purpose": stats.disconnected,
        "rejected_4xx_on_purpose": stats.rejected,
        "failed": stats.failed,
        "seconds": elapsed,
        "requests_per_s": stats.sent / elapsed,
        "completed_tokens_per_s": stats.tokens / elapsed,
        "latency_p50_s": percentile(stats.latencies, 0.5),
        "latency_p99_s": percentile(stats.latencies, 0.99),
        "ttft_p50_s": percentile(stats.ttft, 0.5),
        "rss_after_warmup_mb": rss_start if app is not None else None,
        "rss_end_mb": rss_end if app is not None else None,
        # peak RSS in each quarter of the run: a leak shows as a steady climb
        "rss_quarter_peaks_mb": [
            max(samples[i * len(samples) // 4 : (i + 1) * len(samples) // 4] or [0.0])
            for i in range(4)
        ]
        if app is not None and len(samples) >= 4
        else None,
        "checks": checks,
        "failures": stats.failures[:10],
    }
    print(json.dumps(result, indent=1))
    if args.out:
        from tah.io import write_json

        write_json(args.out, result)
    if server is not None:
        server.should_exit = True
        thread.join(30)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
