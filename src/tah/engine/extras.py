"""What a server response carries beyond OpenAI's basics: the engine's log-probability
entries (``tah.engine.trace``) in OpenAI's two wire formats, the echoed prompt, each token's
decider probabilities and the compute budget's realised share in ``usage``.

Like OpenAI's, the alternatives of a token (``logprobs`` / ``top_logprobs`` of them) always
include the token itself: a sampled token outside the most probable ones is added as one more
entry (so up to ``logprobs + 1``).

``/v1/completions`` (the legacy format lm-evaluation-harness reads): parallel lists
``tokens``, ``token_logprobs``, ``top_logprobs`` (``{token text: logprob}``) and
``text_offset``; with ``echo`` the prompt's tokens come first and the first has no logprob
(``None``), as in OpenAI's API. ``/v1/chat/completions``: ``{"content": [{"token",
"logprob", "bytes", "top_logprobs": [...]}, ...]}``.
"""

from __future__ import annotations

from typing import Any


def token_text(tokenizer: Any, token: int) -> str:
    if tokenizer is None:
        return f"<{token}>"
    return tokenizer.decode([int(token)], skip_special_tokens=False)


def alternatives(entry: dict[str, Any]) -> list[list[Any]]:
    """The entry's ``[id, logprob]`` alternatives, with the chosen token added if it is not
    among them (none asked for: none given)."""
    top = entry["top"]
    if top and all(i != entry["token"] for i, _ in top):
        return [*top, [entry["token"], entry["logprob"]]]
    return top


def completion_logprobs(
    tokenizer: Any, entries: list[dict[str, Any] | None], tokens: list[int], offset: int = 0
) -> dict[str, list]:
    """Legacy format for ``tokens`` (one entry per token; None = no logprob, e.g. the first
    prompt token); ``offset`` is the character offset of the first token in the text."""
    out: dict[str, list] = {
        "tokens": [],
        "token_logprobs": [],
        "top_logprobs": [],
        "text_offset": [],
    }
    for token, entry in zip(tokens, entries):
        text = token_text(tokenizer, token)
        out["tokens"].append(text)
        out["text_offset"].append(offset)
        offset += len(text)
        if entry is None:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        out["token_logprobs"].append(entry["logprob"])
        top: dict[str, float] = {}
        for i, lp in alternatives(entry):
            top.setdefault(token_text(tokenizer, i), lp)
        out["top_logprobs"].append(top)
    return out


def chat_logprobs(tokenizer: Any, entries: list[dict[str, Any]]) -> dict[str, list]:
    content = []
    for entry in entries:
        text = token_text(tokenizer, entry["token"])
        content.append(
            {
                "token": text,
                "logprob": entry["logprob"],
                "bytes": list(text.encode("utf-8")),
                "top_logprobs": [
                    {
                        "token": (alt := token_text(tokenizer, i)),
                        "logprob": lp,
                        "bytes": list(alt.encode("utf-8")),
                    }
                    for i, lp in alternatives(entry)
                ],
            }
        )
    return {"content": content}


class RunExtras:
    """The extras of one request in flight, collected from its engine events."""

    def __init__(self) -> None:
        self.logprobs: list[dict[str, Any]] = []
        self.decider_probs: list[list[float]] = []
        self.prompt_logprobs: list[dict[str, Any] | None] | None = None
        self.prompt_iter_counts: list[int] | None = None

    def absorb(self, event: Any) -> None:
        if event.logprobs:
            self.logprobs.extend(event.logprobs)
        if event.decider_probs:
            self.decider_probs.extend(event.decider_probs)
        if event.prompt_logprobs is not None:
            self.prompt_logprobs = event.prompt_logprobs
            self.prompt_iter_counts = event.prompt_iter_counts

    def usage(self, params: Any, iter_counts: list[int]) -> dict[str, Any]:
        """``iter_share``: the realised share of completion tokens that iterated; with a
        budget, ``iter_budget`` is the target it tracked."""
        n = len(iter_counts)
        out: dict[str, Any] = {"iter_share": sum(c > 1 for c in iter_counts) / n if n else 0.0}
        if params.iter_budget is not None:
            out["iter_budget"] = params.iter_budget
        return out

    def tah_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.decider_probs:
            out["decider_probs"] = self.decider_probs
        if self.prompt_iter_counts is not None:
            out["prompt_iter_counts"] = self.prompt_iter_counts
        return out

    def echo_text(self, run: Any) -> str:
        if not run.echo or run.state.tokenizer is None:
            return ""
        return run.state.tokenizer.decode(run.prompt_ids, skip_special_tokens=True)

    def completion_logprobs(self, run: Any) -> dict[str, list] | None:
        if run.params.logprobs is None:
            return None
        tok = run.state.tokenizer
        entries: list[dict[str, Any] | None] = list(self.logprobs)
        tokens = list(run.token_ids[: len(entries)])
        if run.echo:
            prompt = list(self.prompt_logprobs or [None] * len(run.prompt_ids))
            entries, tokens = prompt + entries, list(run.prompt_ids) + tokens
        return completion_logprobs(tok, entries, tokens)

    def echo_logprobs(self, run: Any) -> dict[str, list] | None:
        """The echoed prompt's tokens alone (a stream's first chunk)."""
        if run.params.logprobs is None:
            return None
        entries = list(self.prompt_logprobs or [None] * len(run.prompt_ids))
        return completion_logprobs(run.state.tokenizer, entries, list(run.prompt_ids))

    def chat_logprobs(self, run: Any) -> dict[str, list] | None:
        if run.params.logprobs is None:
            return None
        return chat_logprobs(run.state.tokenizer, self.logprobs)

    def chunk_logprobs(self, run: Any, event: Any) -> dict[str, list] | None:
        if run.params.logprobs is None or event is None or not event.logprobs:
            return None
        if run.chat:
            return chat_logprobs(run.state.tokenizer, event.logprobs)
        return completion_logprobs(run.state.tokenizer, event.logprobs, event.token_ids)
