"""Records rendered by the chat template, and the supervised span found by comparing prefixes.

The span (the assistant turn, from ``<think>`` when the template has one) is located by
rendering the conversation with and without the answer and comparing token prefixes, so no
token id is hard-coded and any chat template works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tah.data.records import Record
from tah.errors import DataError

LENGTH_ACTIONS = ("truncate", "drop")


@dataclass
class EncodedSample:
    """A record rendered by the chat template; positions >= ``span_start`` are supervised."""

    data_id: int
    record_id: str
    input_ids: np.ndarray
    span_start: int
    truncated: bool = False


def _common_prefix(a: Sequence[int], b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != b[:n])
    return int(diff[0]) if diff.size else n


def special_token_id(tokenizer: Any, token: str | None) -> int | None:
    """The id of ``token`` if the tokenizer knows it as one token, else None."""
    if not token:
        return None
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id):
        return None
    return int(tid)


def encode_records(
    tokenizer: Any,
    records: Sequence[Record],
    *,
    think_token: str | None = "<think>",
    chunk: int = 256,
) -> list[EncodedSample]:
    """Render records as [user: question, assistant: solution] and locate the supervised span.

    The assistant turn starts where the full rendering stops agreeing (token by token) with the
    rendering of the user turn alone; content starts where it stops agreeing with the user turn
    plus the generation prompt. The span is from the first ``think_token`` inside the assistant
    turn when there is one (docs/method.md §8), otherwise from the first assistant-content token.
    Token prefixes (not string offsets) make this robust to merges at the boundary.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; "
            "pass one with --chat-template FILE"
        )
    think_id = special_token_id(tokenizer, think_token)
    out: list[EncodedSample] = []
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        users = [[{"role": "user", "content": r.question}] for r in part]
        fulls = [u + [{"role": "assistant", "content": r.solution}] for u, r in zip(users, part)]
        try:
            texts = {
                "full": tokenizer.apply_chat_template(fulls, tokenize=False),
                "user": tokenizer.apply_chat_template(users, tokenize=False),
                "prompt": tokenizer.apply_chat_template(
                    users, tokenize=False, add_generation_prompt=True
                ),
            }
        except Exception as exc:  # jinja raises its own types (TemplateError, TypeError, ...)
            raise DataError(
                f"the chat template of {getattr(tokenizer, 'name_or_path', '?')!r} failed on "
                f"records {part[0].origin or part[0].index}..: {type(exc).__name__}: {exc}; "
                "fix the template or pass --chat-template"
            ) from None
        ids = {k: tokenizer(v, add_special_tokens=False)["input_ids"] for k, v in texts.items()}
        for i, rec in enumerate(part):
            full = np.asarray(ids["full"][i], dtype=np.int32)
            turn = _common_prefix(ids["user"][i], full)
            content = _common_prefix(ids["prompt"][i], full)
            span = content
            if think_id is not None:
                hits = np.flatnonzero(full[turn:] == think_id)
                if hits.size:
                    span = turn + int(hits[0])
            out.append(EncodedSample(rec.index, rec.record_id, full, span))
    return out


@dataclass
class LengthReport:
    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_span: int = 0


def apply_length_policy(
    samples: Sequence[EncodedSample], max_length: int | None, truncate: bool
) -> tuple[list[EncodedSample], LengthReport]:
    """Truncate or drop over-long samples; drop samples left without a supervised token."""
    kept: list[EncodedSample] = []
    rep = LengthReport()
    for s in samples:
        if max_length is not None and len(s.input_ids) > max_length:
            if not truncate:
                rep.dropped_too_long += 1
                continue
            s = EncodedSample(s.data_id, s.record_id, s.input_ids[:max_length], s.span_start, True)
            rep.truncated += 1
        if s.span_start >= len(s.input_ids):
            rep.dropped_no_span += 1
            continue
        kept.append(s)
    rep.kept = len(kept)
    return kept, rep
