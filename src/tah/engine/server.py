"""OpenAI-compatible HTTP server over the engine: ``/v1/completions``, ``/v1/chat/completions``.

Why our own routes rather than an existing OpenAI server (vLLM, TGI): those run their own
model code, which knows nothing of TaH's per-token depth. FastAPI does the HTTP work; this
module only translates requests to :class:`~tah.engine.engine.Engine` requests and tokens back
to OpenAI JSON / server-sent events, plus the TaH extras:

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
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from tah.engine.detokenize import IncrementalDecoder
from tah.engine.engine import Engine
from tah.engine.extras import RunExtras
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
    sse_event,
)
from tah.engine.request import TokenEvent
from tah.errors import TaHError

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.5
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
        self.preparers = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="tah-prepare")
        self.large_preparers = ThreadPoolExecutor(
            LARGE_PREPARE_THREADS, thread_name_prefix="tah-prepare-large"
        )
        self.model_name = model_name
        self.max_concurrency = max_concurrency
        self.max_request_bytes = max_request_bytes
        self.shutdown_timeout = shutdown_timeout
        self.body_timeout = body_timeout
        self.active = 0
        self.runs: set[_Run] = set()
        self.closing = False
        self.created = int(time.time())

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
            for pool in (state.preparers, state.large_preparers):
                pool.shutdown(wait=False, cancel_futures=True)

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
        pool = state.large_preparers if len(raw) > LARGE_BODY_BYTES else state.preparers
        loop = asyncio.get_running_loop()
        prompt_ids, params = await loop.run_in_executor(pool, prepare, state, parsed, chat)
        stop = [parsed.stop] if isinstance(parsed.stop, str) else list(parsed.stop or [])
        run = _Run(state, prompt_ids, params, stop, chat, parsed)
        run.submit()
        if parsed.stream:
            handed_off = True  # the response releases the run when it ends, however it ends
            return _StreamResponse(run, run.sse(request))
        return await run.complete(request)
    except APIError as exc:
        return error_response(exc.status, exc.message, exc.code, exc.param)
    finally:
        if run is not None and not handed_off:
            run.release()
        elif run is None:
            state.active -= 1


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
        self.echo = not chat and bool(body.echo)
        # echo with max_tokens 0 scores the prompt alone: the engine draws one token (it
        # must draw one to score the prompt), which the client never sees
        self.score_only = self.echo and body.max_tokens == 0
        self.echoed = False  # the echo chunk of a stream is sent
        self.extras = RunExtras()  # logprobs, decider probabilities, echo (extras.py)
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self.token_ids: list[int] = []
        self.iter_counts: list[int] = []
        tok = state.tokenizer
        self.decoder = IncrementalDecoder(tok) if tok is not None else None
        self.decoded = ""  # all text decoded so far, stop strings applied
        self.searched = 0  # characters of ``decoded`` already searched for stop strings
        self.longest_stop = max((len(x) for x in stop), default=0)
        self.text = ""  # visible text (``decoded`` minus a possible start of a stop string)
        self.sent = 0  # characters of ``text`` already sent
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.req = None
        self.released = False
        self.checked = time.monotonic()
        state.runs.add(self)

    def release(self) -> None:
        """Abort the engine request if still running and give the concurrency slot back."""
        self.abort()
        if not self.released:
            self.released = True
            self.state.active -= 1
            self.state.runs.discard(self)

    def cut(self, reason: str) -> None:
        """End this request now with ``reason``, whatever the engine is doing (shutdown)."""
        request_id = self.req.request_id if self.req is not None else ""
        self.queue.put_nowait(TokenEvent(request_id, [], [], True, reason))
        self.abort()

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

    def _shape(self, event: TokenEvent) -> TokenEvent:
        """The event as the client sees it. A scoring request (echo, max_tokens 0) gets its
        prompt's logprobs and no generated token; the stop token that ended an answer
        (``<|im_end|>``, a ``stop_token_ids`` one) is not part of it: not in the text, the
        logprobs or ``completion_tokens``, as in OpenAI's API."""
        if self.score_only:
            kept = event.finished and event.finish_reason in ("error", "abort")
            self.abort()
            return replace(
                event,
                token_ids=[],
                iter_counts=[],
                logprobs=None,
                decider_probs=None,
                decider_thresholds=None,
                finished=True,
                finish_reason=event.finish_reason if kept else "length",
            )
        stops = self.req.stop_ids if self.req is not None else ()
        ended = event.finished and event.finish_reason == "stop" and event.token_ids
        if not ended or event.token_ids[-1] not in stops:
            return event

        def drop_last(per_token: list | None) -> list | None:
            return per_token[:-1] if per_token else per_token

        return replace(
            event,
            token_ids=event.token_ids[:-1],
            iter_counts=event.iter_counts[:-1],
            logprobs=drop_last(event.logprobs),
            decider_probs=drop_last(event.decider_probs),
            decider_thresholds=drop_last(event.decider_thresholds),
        )

    def _absorb(self, event: TokenEvent) -> str:
        """Take an event's tokens; return the newly visible text (stop strings applied)."""
        self.token_ids.extend(event.token_ids)
        self.iter_counts.extend(event.iter_counts)
        self.extras.absorb(event)
        if event.finished:
            self.finish_reason = event.finish_reason
            self.error = event.error
        if self.decoder is None:
            return ""
        final = event.finished
        full = self.decoded + self.decoder.add(event.token_ids)
        if final:
            full += self.decoder.finish()
        # a stop string can only newly appear where the new text, or its overlap, is
        start = max(0, self.searched - self.longest_stop + 1)
        for s in self.stop:
            at = full.find(s, start) if s else -1
            if at != -1:
                full, final = full[:at], True
                self.finish_reason = "stop"
                self.abort()
        self.decoded, self.searched = full, len(full)
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
                self._absorb(self._shape(event))
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

    def _echo_chunk(self) -> dict[str, Any]:
        chunk = self._chunk(self.extras.echo_text(self), [], [])
        choice = chunk["choices"][0]
        choice["logprobs"] = self.extras.echo_logprobs(self)
        if self.extras.prompt_iter_counts is not None:
            choice["tah"]["prompt_iter_counts"] = self.extras.prompt_iter_counts
        return chunk

    async def sse(self, request: Request) -> AsyncIterator[str]:
        try:
            if self.chat:
                yield sse_event(self._chunk("", [], [], role=True))
            while not self.done:
                event = await self._next(request)
                if event is None:
                    return
                event = self._shape(event)
                text = self._absorb(event)
                if self.echo and not self.echoed:  # the prompt first (its logprobs came now)
                    self.echoed = True
                    yield sse_event(self._echo_chunk())
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
