"""The OpenAI wire format: request bodies, their validation, errors and server-sent events.

Why pydantic models of our own rather than the ``openai`` package's types: the server must
accept the TaH fields (``tah_threshold``, ``max_iter``) and the common extensions (``top_k``,
``min_p``, ``ignore_eos``, ``stop_token_ids``), treat ``null`` as "default" the way OpenAI
clients send it, and turn every invalid value into a 4xx whose message names the field.

OpenAI features the engine does not implement (tools, ``response_format``, penalties,
``logit_bias``) are rejected with a 400 that says so when a request asks for them, rather than
silently ignored; their neutral values (``presence_penalty: 0``, ``tools: []`` ...) are accepted.
So are fields one endpoint has and the other lacks (``echo`` on chat, ``top_logprobs`` on
completions), ``best_of`` above 1, ``min_tokens`` above 0 (the engine cannot mask the end of
the answer yet) and a ``max_iter`` deeper than the model: refused, never ignored or clamped.

Types are strict (pydantic's strict mode): a boolean is not a number (``"max_tokens": true``)
and a string is not a boolean (``"echo": "yes"``); an integer is a number where a float is
expected (``"temperature": 1``), as in JSON.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from tah.errors import TaHError
from tah.model.sampling import MAX_TOP_LOGPROBS, SamplingParams

# Stop strings are searched (and a possible start of one held back) after every token.
MAX_STOP_STRINGS, MAX_STOP_CHARS = 16, 1000


class APIError(Exception):
    """A client error, answered as an OpenAI-style ``{"error": {...}}`` body."""

    def __init__(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_response(status: int, message: str, code: str | None = None, param: str | None = None):
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error, from any route or from the router itself (404, 405), in the OpenAI
    error shape instead of FastAPI's ``{"detail": ...}``."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.code, exc.param)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        message = f"{exc.detail}: {request.method} {request.url.path}"
        if exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        response = error_response(exc.status_code, message, _HTTP_CODES.get(exc.status_code))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # a bug: logged by the server too
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", "internal_error")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(400, f"invalid '{where}': {first.get('msg')}", "invalid_value")


# ---------------------------------------------------------------------- request bytes -> JSON
async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The whole body, or a 413 past ``limit`` bytes / a 408 past ``timeout`` seconds (so a
    client that stalls mid-body cannot hold the server's attention for long)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise APIError(
            408, f"the request body did not arrive within {timeout:g} s", "request_timeout"
        ) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes) -> Any:
    """Decode a request body; every way it can be malformed is a 400 naming the problem."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(
            400, f"request body is not valid JSON: it is not UTF-8 text ({exc})", "invalid_json"
        ) from None
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise APIError(
            400, "request body is not valid JSON: it is nested too deeply", "invalid_json"
        ) from None
    except ValueError as exc:  # JSONDecodeError, NaN / Infinity
        raise APIError(400, f"request body is not valid JSON: {exc}", "invalid_json") from None
    if "\\u" in text:  # only \uXXXX escapes can make a lone surrogate (UTF-8 text cannot)
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            code = ord(exc.object[exc.start])
            raise APIError(
                400,
                f"request body holds a lone UTF-16 surrogate (\\u{code:04x}), which is not "
                "text: send valid Unicode",
                "invalid_json",
            ) from None
        except RecursionError:
            raise APIError(
                400, "request body is not valid JSON: it is nested too deeply", "invalid_json"
            ) from None
    return body


# ---------------------------------------------------------------------- request bodies
class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    max_tokens: int | None = None
    # OpenAI clients send null for "use the default": None means the default here too.
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    n: int | None = 1
    ignore_eos: bool | None = False
    tah_threshold: float | None = None
    max_iter: int | None = None
    logprobs: Any = None
    # Compute budget: target share of completion tokens that iterate (steers τ).
    tah_iter_budget: float | None = None
    # Stream each token's decider probabilities in ``tah.decider_probs`` (the playground).
    tah_decider_probs: bool | None = False
    # Not implemented: accepted only at their neutral values (see _reject_unsupported).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    best_of: int | None = None
    min_tokens: int | None = None
    # A field of the other endpoint: refused by name (see _reject_unsupported).
    echo: Any = None
    top_logprobs: Any = None


class CompletionBody(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool | None = False
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = ""


class ChatBody(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    top_logprobs: int | None = None  # type: ignore[assignment]
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None


def _reject_unsupported(p: CompletionBody | ChatBody) -> None:
    """A 400 for a feature the request asks for that this server does not implement."""
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(p, name) not in (None, 0):
            raise APIError(
                400, f"{name} is not supported by this server (only 0)", "unsupported", name
            )
    if p.logit_bias:
        raise APIError(
            400, "logit_bias is not supported by this server", "unsupported", "logit_bias"
        )
    if p.best_of not in (None, 1):
        raise APIError(
            400, "best_of is not supported by this server (only 1)", "unsupported", "best_of"
        )
    if p.min_tokens not in (None, 0):
        raise APIError(
            400,
            "min_tokens is not supported by this server (only 0): the engine cannot hold "
            "back the end of the answer",
            "unsupported",
            "min_tokens",
        )
    if not isinstance(p, ChatBody):
        if p.top_logprobs is not None:
            raise APIError(
                400,
                "top_logprobs is a chat field; /v1/completions takes logprobs: <number of "
                "alternatives>",
                "unsupported",
                "top_logprobs",
            )
        return
    if p.echo not in (None, False):
        raise APIError(400, "echo is not supported on /v1/chat/completions", "unsupported", "echo")
    for name in ("tools", "functions"):
        if getattr(p, name):
            raise APIError(
                400,
                f"{name} (function calling) are not supported by this server",
                "unsupported",
                name,
            )
    for name in ("tool_choice", "function_call"):
        if getattr(p, name) not in (None, "none", "auto"):
            raise APIError(
                400, f"{name} is not supported by this server (tools are not)", "unsupported", name
            )
    kind = (p.response_format or {}).get("type", "text")
    if kind != "text":
        raise APIError(
            400,
            f"response_format {kind!r} is not supported by this server (only 'text')",
            "unsupported",
            "response_format",
        )


def parse_body(body: Any, chat: bool) -> CompletionBody | ChatBody:
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", "invalid_json")
    try:
        return (ChatBody if chat else CompletionBody).model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise APIError(
            400, f"invalid field '{where}': {first.get('msg')}", "invalid_value", where
        ) from None


def prepare(state, p: CompletionBody | ChatBody, chat: bool):
    """Validate a parsed body against the served model: (prompt token ids, SamplingParams)."""
    engine, tok = state.engine, state.tokenizer
    if p.model is not None and p.model != state.model_name:
        raise APIError(
            404,
            f"model '{p.model}' does not exist; this server serves '{state.model_name}'",
            "model_not_found",
            "model",
        )
    if p.n not in (None, 1):
        raise APIError(400, "only n=1 is supported", "unsupported", "n")
    logprobs = _logprobs(p, chat)
    _reject_unsupported(p)
    stops = [p.stop] if isinstance(p.stop, str) else p.stop or []
    if len(stops) > MAX_STOP_STRINGS or any(len(x) > MAX_STOP_CHARS for x in stops):
        raise APIError(
            400,
            f"stop takes at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_CHARS} "
            "characters each",
            "invalid_value",
            "stop",
        )
    fits = _SizeCheck(state)
    if chat:
        ids = _chat_ids(tok, p, fits)  # type: ignore[arg-type]
    else:
        if p.suffix:  # type: ignore[union-attr]
            raise APIError(400, "suffix is not supported", "unsupported", "suffix")
        ids = _prompt_ids(tok, p.prompt, fits)  # type: ignore[union-attr]
    echo = not chat and bool(p.echo)
    max_tokens = _max_tokens(p, chat, echo, engine.max_len - len(ids))
    if p.max_iter is not None and p.max_iter > engine.max_iter:
        raise APIError(
            400,
            f"max_iter {p.max_iter} exceeds this model's depth of {engine.max_iter}",
            "invalid_value",
            "max_iter",
        )
    top_k = 0 if p.top_k in (None, -1) else p.top_k
    vocab = engine.shape.vocab_size
    outside = [t for t in p.stop_token_ids or () if not 0 <= t < vocab]
    if outside:
        raise APIError(
            400,
            f"stop_token_ids {outside[:5]} are outside the vocabulary [0, {vocab})",
            "invalid_value",
            "stop_token_ids",
        )
    try:  # SamplingParams validates itself
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if p.temperature is None else p.temperature,
            top_k=top_k,
            top_p=1.0 if p.top_p is None else p.top_p,
            min_p=0.0 if p.min_p is None else p.min_p,
            seed=p.seed,
            ignore_eos=bool(p.ignore_eos),
            stop_token_ids=tuple(p.stop_token_ids) if p.stop_token_ids else None,
            threshold=p.tah_threshold,
            max_iter=p.max_iter,
            iter_budget=p.tah_iter_budget,
            logprobs=logprobs,
            echo=echo and logprobs is not None,  # prompt logprobs
            decider_probs=bool(p.tah_decider_probs),
        )
        engine.check_prompt(len(ids), max_tokens)
    except TaHError as exc:
        raise APIError(400, str(exc), "invalid_value") from None
    if len(ids) >= engine.max_len:
        raise APIError(
            400, f"prompt of {len(ids)} tokens exceeds the context", "context_length_exceeded"
        )
    return ids, params


def _max_tokens(p: CompletionBody | ChatBody, chat: bool, echo: bool, room: int) -> int:
    """The engine's max_tokens: OpenAI's default (16, or for chat the room the prompt leaves);
    0 with echo scores the prompt alone (the one token the engine draws is not returned)."""
    max_tokens = p.max_tokens
    if chat and p.max_completion_tokens is not None:  # type: ignore[union-attr]
        max_tokens = p.max_completion_tokens  # type: ignore[union-attr]
    if max_tokens is None:
        return 16 if not chat else max(room, 1)
    if max_tokens == 0 and echo:
        return 1
    if max_tokens < 1:
        hint = " (0 only with echo, to score the prompt alone)" if not chat else ""
        raise APIError(
            400, f"max_tokens must be >= 1{hint}, got {max_tokens}", "invalid_value", "max_tokens"
        )
    return max_tokens


def _logprobs(p: CompletionBody | ChatBody, chat: bool) -> int | None:
    """Alternatives per token (0 = the chosen token only) or None: completions take
    ``logprobs: int``, chat ``logprobs: bool`` plus ``top_logprobs: int``."""
    if chat:
        if p.logprobs in (None, False):
            if p.top_logprobs:  # type: ignore[union-attr]
                raise APIError(
                    400, "top_logprobs needs logprobs: true", "invalid_value", "top_logprobs"
                )
            return None
        if p.logprobs is not True:
            raise APIError(400, "logprobs must be true or false", "invalid_value", "logprobs")
        top, name = p.top_logprobs or 0, "top_logprobs"  # type: ignore[union-attr]
    elif p.logprobs is None:
        return None
    else:
        top, name = p.logprobs, "logprobs"
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
        message = f"{name} must be an integer in [0, {MAX_TOP_LOGPROBS}], got {top!r}"
        raise APIError(400, message, "invalid_value", name)
    return top


class _SizeCheck:
    """Refuses, before tokenizing, a text whose token count surely reaches the context."""

    def __init__(self, state) -> None:
        self.floor = getattr(state, "token_floor", None)
        self.max_len = state.engine.max_len

    def __call__(self, text: str) -> None:
        least = self.floor.floor(text) if self.floor is not None else 0
        if least >= self.max_len:
            raise APIError(
                400,
                f"prompt of {len(text)} characters is at least {least} tokens, beyond the "
                f"context of {self.max_len} tokens",
                "context_length_exceeded",
            )


def _prompt_ids(tok, prompt, fits) -> list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if tok is None:
            raise APIError(
                400, "this model has no tokenizer: send the prompt as token ids", "no_tokenizer"
            )
        fits(prompt)
        return list(tok.encode(prompt))
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    raise APIError(
        400,
        "batched prompts are not supported: send one prompt per request",
        "unsupported",
        "prompt",
    )


def _chat_ids(tok, p: ChatBody, fits) -> list[int]:
    if tok is None or not getattr(tok, "chat_template", None):
        raise APIError(
            400, "this model has no chat template: use /v1/completions", "no_chat_template"
        )
    messages = []
    for i, m in enumerate(p.messages):
        content = m.content
        if isinstance(content, list):  # OpenAI content parts: text ones only
            content = "".join(
                _text_part(part, f"messages.{i}.content.{j}") for j, part in enumerate(content)
            )
        messages.append(
            {"role": "system" if m.role == "developer" else m.role, "content": content or ""}
        )
    try:
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # jinja errors (unsupported roles, ...) are the caller's
        raise APIError(
            400, f"cannot apply the chat template: {exc}", "invalid_value", "messages"
        ) from None
    fits(text)
    return list(tok.encode(text, add_special_tokens=False))


def _text_part(part: dict[str, Any], where: str) -> str:
    if part.get("type") != "text":
        raise APIError(
            400,
            f"{where}: only text content parts are supported, got type {part.get('type')!r}",
            "unsupported",
            where,
        )
    text = part.get("text")
    if not isinstance(text, str):
        raise APIError(
            400, f"{where}.text must be a string, got {type(text).__name__}", "invalid_value", where
        )
    return text


# Characters that str.splitlines() (and so some SSE clients) treat as line breaks although JSON
# leaves them raw: escaped, so one event is always one line.
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def sse_event(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS)}\n\n"
