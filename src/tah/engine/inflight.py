"""One request in flight on the server: engine events in, OpenAI JSON / server-sent events out.

Why apart from ``server.py``: the routes, limits and shutdown are one concern; turning one
request's token events into OpenAI's completion and chat shapes (stop strings, the stop token
left out of the answer, echo, logprobs, ``usage``) is another.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from tah.engine.detokenize import IncrementalDecoder
from tah.engine.extras import RunExtras
from tah.engine.protocol import APIError, sse_event
from tah.engine.request import TokenEvent
from tah.errors import TaHError

DISCONNECT_POLL_S = 0.5


class InFlight:
    """One request in flight: engine events in, OpenAI JSON / SSE out. ``state`` is the app's
    ``server.ServerState`` (not imported here: server imports this module)."""

    def __init__(self, state: Any, prompt_ids, params, stop: list[str], chat: bool, body) -> None:
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


class StreamResponse(StreamingResponse):
    """Server-sent events that always release their request, even if the client leaves
    before the first chunk (then the body generator never starts, so its ``finally`` would
    not run)."""

    def __init__(self, run: InFlight, body: AsyncIterator[str]) -> None:
        super().__init__(
            body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
        self.run = run

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.release()
