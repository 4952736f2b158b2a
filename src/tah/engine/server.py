"""OpenAI-compatible HTTP server over the engine: ``/v1/completions``, ``/v1/chat/completions``.

Why our own routes rather than an existing OpenAI server (vLLM, TGI): those run their own
model code, which knows nothing of TaH's per-token depth. FastAPI does the HTTP work; this
module only translates requests to :class:`~tah.engine.engine.Engine` requests and tokens back
to OpenAI JSON / server-sent events (one request in flight: ``inflight.py``), plus the TaH
extras:

* request fields ``tah_threshold`` (decider threshold for this request) and ``max_iter`` (cap
  on its depth; 1 = the plain model; deeper than the model is a 400, never a silent clamp),
  and the usual ``top_k`` / ``min_p`` / ``seed``;
* ``usage`` adds ``total_iterations`` (passes run for the completion tokens), ``avg_depth``
  and ``iterated_tokens``; every choice / chunk carries ``tah.token_ids`` and
  ``tah.iter_counts``;
* ``tah_iter_budget`` (a compute budget that steers τ, ``tah.model.budget``), ``logprobs`` /
  ``top_logprobs`` / ``echo`` and ``tah_decider_probs`` (``tah.engine.trace`` records them,
  ``tah.engine.extras`` formats them); the playground page at ``/`` (``playground.py``).

A request's prompt is tokenized in a worker thread, never on the event loop, and a prompt
whose size alone proves it cannot fit the context is refused before tokenizing
(``prompt_bound.py``), so a flood of megabyte prompts does not hold up other clients.

Robustness: every error, from bad JSON to an unknown route, is a 4xx with an OpenAI-style
``{"error": {...}}`` body (:func:`~tah.engine.protocol.install_error_handlers`). A body is read
(within ``body_timeout`` seconds, at most ``max_request_bytes``) *before* the request takes one
of the ``max_concurrency`` slots, so clients that stall mid-body cannot starve the others;
more requests than slots get 429. A client that disconnects has its request aborted, which
frees its engine row. A request whose sampling fails ends alone with a 500 (the engine isolates
it). On shutdown (:func:`tah.engine.serving.serve`) new requests get 503, requests in flight get
``shutdown_timeout`` seconds to finish, then end with finish reason ``abort`` (streams still
send ``[DONE]``), and the engine thread stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from tah.engine.engine import Engine
from tah.engine.inflight import InFlight, StreamResponse
from tah.engine.playground import add_playground
from tah.engine.prompt_bound import TokenFloor
from tah.engine.protocol import (
    APIError,
    error_response,
    install_error_handlers,
    parse_body,
    parse_json,
    prepare,
    read_body,
)

logger = logging.getLogger(__name__)

# Threads that validate and tokenize request bodies (the tokenizer releases the GIL). Bodies
# over LARGE_BODY_BYTES get threads of their own, so short prompts never queue behind them.
PREPARE_THREADS, LARGE_PREPARE_THREADS, LARGE_BODY_BYTES = 4, 2, 64 << 10
# uvicorn's own cut-off comes this long after ours, so aborted requests can still answer.
SHUTDOWN_GRACE_S = 5.0


# ---------------------------------------------------------------------- the app
class ServerState:
    def __init__(
        self,
        engine: Engine,
        model_name: str,
        max_concurrency: int,
        max_request_bytes: int,
        shutdown_timeout: float,
        body_timeout: float,
    ) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.token_floor = TokenFloor(engine.tokenizer)
        self.preparers: dict[bool, ThreadPoolExecutor] = {}  # large body? -> its threads
        self.model_name = model_name
        self.max_concurrency = max_concurrency
        self.max_request_bytes = max_request_bytes
        self.shutdown_timeout = shutdown_timeout
        self.body_timeout = body_timeout
        self.active = 0
        self.runs: set[InFlight] = set()
        self.closing = False
        self.created = int(time.time())

    def preparer(self, body_bytes: int) -> ThreadPoolExecutor:
        """The threads that prepare a request of this size (made on first use, so an app
        whose lifespan runs twice gets fresh ones)."""
        large = body_bytes > LARGE_BODY_BYTES
        if large not in self.preparers:
            threads = LARGE_PREPARE_THREADS if large else PREPARE_THREADS
            self.preparers[large] = ThreadPoolExecutor(
                threads, thread_name_prefix="tah-prepare-large" if large else "tah-prepare"
            )
        return self.preparers[large]

    def close_preparers(self) -> None:
        for pool in self.preparers.values():
            pool.shutdown(wait=False, cancel_futures=True)
        self.preparers.clear()

    def model_card(self) -> dict[str, Any]:
        engine = self.engine
        return {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "tah",
            "max_model_len": engine.max_len,
            "tah": {
                "max_iter": engine.max_iter,
                "decider": engine.kind,
                # the decider keeps it in float32: 0.95 would show as 0.949999988
                "threshold": float(f"{engine.threshold:.6g}"),
            },
        }

    async def drain(self) -> None:
        """Refuse new requests, give those in flight ``shutdown_timeout`` seconds, then end
        the rest with finish reason 'abort' and wait (briefly) until they have answered."""
        self.closing = True
        deadline = time.monotonic() + self.shutdown_timeout
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if not self.active:
            return
        logger.warning("shutdown: aborting %d request(s) still in flight", len(self.runs))
        for run in list(self.runs):
            run.cut("abort")
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.02)


def create_app(
    engine: Engine,
    model_name: str | None = None,
    max_concurrency: int = 64,
    max_request_bytes: int = 1 << 20,
    shutdown_timeout: float = 30.0,
    body_timeout: float = 30.0,
) -> FastAPI:
    """The FastAPI app serving ``engine``; the engine's thread starts and stops with the app."""
    state = ServerState(
        engine,
        model_name or engine.model_name,
        max_concurrency,
        max_request_bytes,
        shutdown_timeout,
        body_timeout,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            await state.drain()
            engine.stop()
            state.close_preparers()

    app = FastAPI(title="tah", lifespan=lifespan)
    app.state.tah = state
    install_error_handlers(app)

    @app.get("/health")
    async def health():
        alive = engine._thread is not None and engine._thread.is_alive()
        body = {
            "status": "ok" if alive and not state.closing else "unavailable",
            "active_requests": state.active,
            "running": engine.n_rows,
            "waiting": len(engine.waiting),
        }
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [state.model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str):
        if model_id != state.model_name:
            raise APIError(
                404,
                f"model '{model_id}' does not exist; this server serves '{state.model_name}'",
                "model_not_found",
                "model",
            )
        return state.model_card()

    add_playground(app)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _handle(state, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _handle(state, request, chat=True)

    return app


# ---------------------------------------------------------------------- request handling
async def _handle(state: ServerState, request: Request, chat: bool):
    if state.closing:
        return error_response(503, "the server is shutting down", "shutting_down")
    try:
        raw = await read_body(request, state.max_request_bytes, state.body_timeout)
        body = parse_json(raw)
    except APIError as exc:
        return error_response(exc.status, exc.message, exc.code, exc.param)
    except ClientDisconnect:  # gone before sending its body: nobody to answer
        return Response(status_code=499)
    if state.closing:
        return error_response(503, "the server is shutting down", "shutting_down")
    if state.active >= state.max_concurrency:
        return error_response(
            429,
            f"too many requests in flight (limit {state.max_concurrency}); retry later",
            "rate_limited",
        )
    state.active += 1  # given back by run.release(), or below if no run starts
    run, handed_off = None, False
    try:
        parsed = parse_body(body, chat)
        # off the event loop: tokenizing a long prompt takes seconds, and every other
        # client (streams, /health) would wait for it
        loop = asyncio.get_running_loop()
        pool = state.preparer(len(raw))
        prompt_ids, params = await loop.run_in_executor(pool, prepare, state, parsed, chat)
        stop = [parsed.stop] if isinstance(parsed.stop, str) else list(parsed.stop or [])
        run = InFlight(state, prompt_ids, params, stop, chat, parsed)
        run.submit()
        if parsed.stream:
            handed_off = True  # the response releases the run when it ends, however it ends
            return StreamResponse(run, run.sse(request))
        return await run.complete(request)
    except APIError as exc:
        return error_response(exc.status, exc.message, exc.code, exc.param)
    finally:
        if run is not None and not handed_off:
            run.release()
        elif run is None:
            state.active -= 1
