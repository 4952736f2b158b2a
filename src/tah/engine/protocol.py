"""The OpenAI wire format: request bodies, their validation, errors and server-sent events.

Why pydantic models of our own rather than the ``openai`` package's types: the server must
accept the TaH fields (``tah_threshold``, ``max_iter``) and the common extensions (``top_k``,
``min_p``, ``ignore_eos``, ``stop_token_ids``), treat ``null`` as "default" the way OpenAI
clients send it, and turn every invalid value into a 4xx whose message names the field.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tah.engine.sampling import SamplingParams
from tah.engine.trace import MAX_TOP_LOGPROBS
from tah.errors import TaHError


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


# ---------------------------------------------------------------------- request bodies
class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

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


class CompletionBody(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = ""


class ChatBody(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    top_logprobs: int | None = None


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
    if chat:
        ids = _chat_ids(tok, p)  # type: ignore[arg-type]
    else:
        if p.suffix:  # type: ignore[union-attr]
            raise APIError(400, "suffix is not supported", "unsupported", "suffix")
        if p.echo and p.stream:  # type: ignore[union-attr]
            raise APIError(400, "echo is not supported with stream", "unsupported", "echo")
        ids = _prompt_ids(tok, p.prompt)  # type: ignore[union-attr]
    max_tokens = p.max_tokens
    if chat and p.max_completion_tokens is not None:  # type: ignore[union-attr]
        max_tokens = p.max_completion_tokens  # type: ignore[union-attr]
    if max_tokens is None:
        max_tokens = 16 if not chat else max(engine.max_len - len(ids), 1)
    if max_tokens < 1:
        raise APIError(
            400, f"max_tokens must be >= 1, got {max_tokens}", "invalid_value", "max_tokens"
        )
    top_k = 0 if p.top_k in (None, -1) else p.top_k
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
        echo=bool(getattr(p, "echo", False)) and logprobs is not None,  # prompt logprobs
        decider_probs=bool(p.tah_decider_probs),
    )
    try:
        params.validate()
        engine.check_prompt(len(ids), max_tokens)
    except TaHError as exc:
        raise APIError(400, str(exc), "invalid_value") from None
    if len(ids) >= engine.max_len:
        raise APIError(
            400, f"prompt of {len(ids)} tokens exceeds the context", "context_length_exceeded"
        )
    return ids, params


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


def _prompt_ids(tok, prompt) -> list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if tok is None:
            raise APIError(
                400, "this model has no tokenizer: send the prompt as token ids", "no_tokenizer"
            )
        return list(tok.encode(prompt))
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    raise APIError(
        400,
        "batched prompts are not supported: send one prompt per request",
        "unsupported",
        "prompt",
    )


def _chat_ids(tok, p: ChatBody) -> list[int]:
    if tok is None or not getattr(tok, "chat_template", None):
        raise APIError(
            400, "this model has no chat template: use /v1/completions", "no_chat_template"
        )
    messages = []
    for m in p.messages:
        content = m.content
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(
                part.get("text", "") for part in content if part.get("type") == "text"
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
    return list(tok.encode(text, add_special_tokens=False))


# Characters that str.splitlines() (and so some SSE clients) treat as line breaks although JSON
# leaves them raw: escaped, so one event is always one line.
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def sse_event(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS)}\n\n"
