"""Prompt rendering, shared by training data and evaluation (docs/method.md, "Evaluation").

Two styles: ``bare`` (the paper: the question alone as the user turn) and ``boxed`` (the
question plus the common "reason step by step ... \\boxed{}" instruction, as in TaH2). The chat
template always comes from the tokenizer, so a model is evaluated in the format it was trained
on; a tokenizer without a template (or ``chat=False``) gets the raw text.
"""

from __future__ import annotations

from typing import Any

from tah.errors import ConfigError

BOXED_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
PROMPT_STYLES = ("bare", "boxed")


def user_message(question: str, style: str = "bare") -> str:
    """The user turn's text for a question in the given style."""
    if style == "bare":
        return question
    if style == "boxed":
        return f"{question}\n\n{BOXED_SUFFIX}"
    raise ConfigError(f"prompt style {style!r} unknown; use one of {PROMPT_STYLES}")


def has_chat_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def render_prompt(
    tokenizer: Any,
    question: str,
    style: str = "bare",
    chat: bool = True,
    enable_thinking: bool | None = None,
) -> str:
    """The full prompt text the model sees, generation prompt included.

    ``enable_thinking`` is passed to templates that understand it (Qwen3); None leaves the
    template default (thinking on), as in the paper.
    """
    text = user_message(question, style)
    if not chat or not has_chat_template(tokenizer):
        return text
    kwargs: dict[str, Any] = {}
    if enable_thinking is not None:
        kwargs["enable_thinking"] = enable_thinking
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True, **kwargs
    )
