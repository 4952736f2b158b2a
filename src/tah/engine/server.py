"""OpenAI-compatible HTTP server over the engine: ``/v1/completions``, ``/v1/chat/completions``.

Why our own routes rather than an existing OpenAI server (vLLM, TGI): those run their own
model code, which knows nothing of TaH's per-token depth. FastAPI does the HTTP work; this
module only translates requests to :class:`~tah.engine.engine.Engine` requests and tokens back
to OpenAI JSON / server-sent events, plus the TaH extras:

* request fields ``tah_threshold`` (decider threshold for this request) and ``max_iter`` (cap
  on its depth; 1 = the plain model), and the usual ``top_k`` / ``min_p`` / ``seed``;
* ``usage`` adds ``total_iterations`` (passes run for the completion tokens), ``avg_depth``
  and ``iterated_tokens``; every choice / chunk carries ``tah.token_ids`` and
  ``tah.iter_counts``;
* ``tah_iter_budget`` (a compute budget that steers τ, ``tah.model.budget``), ``logprobs`` /
  ``top_logprobs`` / ``echo`` and ``tah_decider_probs`` (``tah.engine.trace`` records them,
  ``tah.engine.extras`` formats them); the playground page at ``/`` (``playground.py``).

Robustness: bad JSON, unknown model, invalid values and prompts that do not fit the context
get a 4xx with an OpenAI-style ``{"error": {...}}`` body; bodies over ``max_request_bytes`` get
413; more than ``max_concurrency`` requests in flight get 429; a client that disconnects has
its request aborted, which frees its engine row; on shutdown new requests get 503, requests in
flight finish (uvicorn's graceful timeout bounds that), then the engine thread stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tah.engine.engine import Engine
from tah.engine.extras import RunExtras
from tah.engine.playground import add_playground
from tah.engine.protocol import APIError, error_response, parse_body, prepare, sse_event
from tah.engine.request import TokenEvent
from tah.errors import TaHError

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.5


# ---------------------------------------------------------------------- the app
class ServerState:
    def __init__(
        self,
        engine: Engine,
        model_name: str,
        max_concurrency: int,
        max_request_bytes: int,
        shutdown_timeout: float,
    ) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.model_name = model_name
        self.max_concurrency = max_concurrency
        self.max_request_bytes = max_request_bytes
        self.shutdown_timeout = shutdown_timeout
        self.active = 0
        self.closing = False
        self.created = int(time.time())
        self.served = 0


def create_app(
    engine: Engine,
    model_name: str | None = None,
    max_concurrency: int = 64,
    max_request_bytes: int = 1 << 20,
    shutdown_timeout: float = 30.0,
) -> FastAPI:
    """The FastAPI app serving ``engine``; the engine's thread starts and stops with the app."""
    state = ServerState(
        engine,
        model_name or engine.model_name,
        max_concurrency,
        max_request_bytes,
        shutdown_timeout,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            state.closing = True
            deadline = time.monotonic() + state.shutdown_timeout
            while state.active and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            engine.stop()

    app = FastAPI(title="tah", lifespan=lifespan)
    app.state.tah = state

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.code, exc.param)

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
        return {
            "object": "list",
            "data": [
                {
                    "id": state.model_name,
                    "object": "model",
                    "created": state.created,
                    "owned_by": "tah",
                    "max_model_len": engine.max_len,
                    "tah": {
                        "max_iter": engine.max_iter,
                        "decider": engine.kind,
                        "threshold": engine.threshold,
                    },
                }
            ],
        }

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
    if state.active >= state.max_concurrency:
        return error_response(
            429,
            f"too many requests in flight (limit {state.max_concurrency}); retry later",
            "rate_limited",
        )
    state.active += 1
    handed_off = False
    try:
        body = await _read_json(state, request)
        parsed = parse_body(body, chat)
        prompt_ids, params = prepare(state, parsed, chat)
        stop = [parsed.stop] if isinstance(parsed.stop, str) else list(parsed.stop or [])
        run = _Run(state, prompt_ids, params, stop, chat, parsed)
        run.submit()
        if parsed.stream:
            handed_off = True  # the response releases the slot when it ends, however it ends
            return _StreamResponse(run, run.sse(request))
        return await run.complete(request)
    except APIError as exc:
        return error_response(exc.status, exc.message, exc.code, exc.param)
    finally:
        if not handed_off:
            state.active -= 1


async def _read_json(state: ServerState, request: Request) -> Any:
    limit = state.max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", "invalid_json") from None


class _Run:
    """One request in flight: engine events in, OpenAI JSON / SSE out."""

    def __init__(
        self, state: ServerState, prompt_ids, params, stop: list[str], chat: bool, body
    ) -> None:
        self.state, self.prompt_ids, self.params, self.stop, self.chat = (
            state,
            prompt_ids,
            params,
            stop,
            chat,
        )
        self.include_usage = bool((body.stream_options or {}).get("include_usage"))
        self.echo = bool(getattr(body, "echo", False))
        self.extras = RunExtras()  # logprobs, decider probabilities, echo (extras.py)
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self.token_ids: list[int] = []
        self.iter_counts: list[int] = []
        self.text = ""  # decoded so far (without held-back text)
        self.sent = 0  # characters of ``text`` already sent
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.req = None
        self.released = False
        self.checked = time.monotonic()

    def release(self) -> None:
        """Abort the engine request if still running and give the concurrency slot back."""
        self.abort()
        if not self.released:
            self.released = True
            self.state.active -= 1

    def submit(self) -> None:
        loop = asyncio.get_running_loop()

        def callback(event: TokenEvent) -> None:
            loop.call_soon_threadsafe(self.queue.put_nowait, event)

        try:
            self.req = self.state.engine.add_request(
                self.prompt_ids, self.params, callback=callback
            )
        except TaHError as exc:
            raise APIError(400, str(exc), "invalid_value") from None

    def abort(self) -> None:
        if self.req is not None and not self.req.finished:
            self.state.engine.abort(self.req.request_id)

    async def _next(self, request: Request) -> TokenEvent | None:
        """The next engine event, or None if the client went away (checked every
        ``DISCONNECT_POLL_S`` seconds, whether or not tokens keep coming)."""
        while True:
            now = time.monotonic()
            if now - self.checked >= DISCONNECT_POLL_S:
                self.checked = now
                if await request.is_disconnected():
                    return None
            try:
                return await asyncio.wait_for(self.queue.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                continue

    def _absorb(self, event: TokenEvent) -> str:
        """Take an event's tokens; return the newly visible text (stop strings applied)."""
        self.token_ids.extend(event.token_ids)
        self.iter_counts.extend(event.iter_counts)
        self.extras.absorb(event)
        if event.finished:
            self.finish_reason = event.finish_reason
            self.error = event.error
        tok = self.state.tokenizer
        if tok is None:
            return ""
        full = tok.decode(self.token_ids, skip_special_tokens=True)
        final = event.finished
        if full.endswith("\ufffd") and not final:
            full = full[:-1]  # an incomplete UTF-8 sequence: wait for the next token
        for s in self.stop:
            at = full.find(s)
            if s and at != -1:
                full, final = full[:at], True
                self.finish_reason = "stop"
                self.abort()
        visible = full
        if not final and self.stop:  # hold back a possible start of a stop string
            hold = max(len(s) for s in self.stop) - 1
            for k in range(min(hold, len(full)), 0, -1):
                if any(s.startswith(full[-k:]) for s in self.stop):
                    visible = full[:-k]
                    break
        new = visible[self.sent :]
        self.sent = len(visible)
        self.text = visible
        return new

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def usage(self) -> dict[str, Any]:
        n = len(self.token_ids)
        total = sum(self.iter_counts)
        return {
            "prompt_tokens": len(self.prompt_ids),
            "completion_tokens": n,
            "total_tokens": len(self.prompt_ids) + n,
            "total_iterations": total,
            "iterated_tokens": sum(c > 1 for c in self.iter_counts),
            "avg_depth": total / n if n else 0.0,
            **self.extras.usage(self.params, self.iter_counts),
        }

    def _reason(self) -> str | None:
        return self.finish_reason  # stop | length | abort (server shutdown) | error

    async def complete(self, request: Request):
        try:
            while not self.done:
                event = await self._next(request)
                if event is None:
                    self.abort()
                    raise APIError(499, "client disconnected", "client_disconnected")
                self._absorb(event)
        finally:
            self.abort()
        if self.finish_reason == "error":
            raise APIError(500, f"generation failed: {self.error}", "engine_error")
        tah = {"token_ids": self.token_ids, "iter_counts": self.iter_counts}
        tah.update(self.extras.tah_fields())
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": self.text},
                "logprobs": self.extras.chat_logprobs(self),
                "finish_reason": self._reason(),
                "tah": tah,
            }
        else:
            choice = {
                "index": 0,
                "text": self.extras.echo_text(self) + self.text,
                "logprobs": self.extras.completion_logprobs(self),
                "finish_reason": self._reason(),
                "tah": tah,
            }
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.state.model_name,
            "choices": [choice],
            "usage": self.usage(),
        }

    def _chunk(
        self,
        text: str | None,
        tokens: list[int],
        iters: list[int],
        reason=None,
        role=False,
        event: TokenEvent | None = None,
    ):
        tah = {"token_ids": tokens, "iter_counts": iters}
        if event is not None and event.decider_probs is not None:
            tah["decider_probs"] = event.decider_probs
            tah["decider_thresholds"] = event.decider_thresholds
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {
                "index": 0,
                "delta": delta,
                "logprobs": self.extras.chunk_logprobs(self, event),
                "finish_reason": reason,
                "tah": tah,
            }
        else:
            choice = {
                "index": 0,
                "text": text or "",
                "logprobs": self.extras.chunk_logprobs(self, event),
                "finish_reason": reason,
                "tah": tah,
            }
        return {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.state.model_name,
            "choices": [choice],
        }

    async def sse(self, request: Request) -> AsyncIterator[str]:
        try:
            if self.chat:
                yield sse_event(self._chunk("", [], [], role=True))
            while not self.done:
                event = await self._next(request)
                if event is None:
                    return
                text = self._absorb(event)
                if self.finish_reason == "error":
                    message = f"generation failed: {self.error}"
                    yield sse_event(
                        {
                            "error": {
                                "message": message,
                                "type": "server_error",
                                "code": "engine_error",
                            }
                        }
                    )
                    break
                if text or event.token_ids or self.done:
                    reason = self._reason() if self.done else None
                    ids, iters = event.token_ids, event.iter_counts
                    yield sse_event(self._chunk(text, ids, iters, reason, event=event))
            if self.include_usage:
                chunk = self._chunk(None, [], [])
                chunk["choices"] = []
                chunk["usage"] = self.usage()
                yield sse_event(chunk)
            yield "data: [DONE]\n\n"
        finally:
            self.release()


class _StreamResponse(StreamingResponse):
    """Server-sent events that always release their request, even if the client leaves
    before the first chunk (then the body generator never starts, so its ``finally`` would
    not run)."""

    def __init__(self, run: _Run, body: AsyncIterator[str]) -> None:
        super().__init__(
            body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
        self.run = run

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.release()
