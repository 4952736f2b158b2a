"""A certain lower bound on a text's token count, found without tokenizing it.

Why: tokenizing a megabyte takes seconds, and a prompt that long cannot fit any context we
serve. The server refuses such a prompt by its size first, and only when the bound is certain:
for a byte-level BPE tokenizer (the vocabulary holds all 256 byte symbols, so nothing is
dropped) every token stands for at most ``max_bytes`` bytes of the normalized text, so a text
of ``b`` bytes has at least ``ceil(b / max_bytes)`` tokens. The normalizer, when there is one,
is the tokenizer's own (the bytes counted are those the model sees). Any other tokenizer
(word-level, one whose pre-tokenizer or normalizer may drop characters, or a slow Python one)
gets no bound, so nothing is refused early; the server still tokenizes off its event loop.
"""

from __future__ import annotations

import json
import logging
from typing import Any

logger = logging.getLogger(__name__)

# Pre-tokenizers that split text without dropping any of it (Split / Punctuation may drop:
# they are allowed only with a behaviour other than "removed").
_KEEPING_PRE_TOKENIZERS = {"ByteLevel", "Digits", "Split", "Punctuation", "UnicodeScripts"}
_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD"}


class TokenFloor:
    """``floor(text)``: a number of tokens the tokenizer surely produces for ``text`` at least
    (0 when this tokenizer allows no certain bound)."""

    def __init__(self, tokenizer: Any) -> None:
        self.max_bytes: int | None = None
        self.normalizer = None
        try:
            self._derive(tokenizer)
        except Exception as exc:  # an unusual tokenizer: no bound, never a failure to serve
            logger.debug("no token-count bound for this tokenizer: %s", exc)
            self.max_bytes = None

    def _derive(self, tokenizer: Any) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return
        spec = json.loads(backend.to_str())
        model, normalizer = spec.get("model") or {}, spec.get("normalizer")
        if model.get("type") != "BPE" or not _keeps_text(spec.get("pre_tokenizer")):
            return
        if normalizer is not None:
            if not _is_unicode_form(normalizer):
                return
            self.normalizer = backend.normalizer
        vocab: dict[str, int] = model.get("vocab") or {}
        if not _byte_level(spec.get("pre_tokenizer")) or not _has_all_bytes(vocab):
            return
        # byte-level vocabulary entries spell one byte per character
        longest = max((len(piece) for piece in vocab), default=0)
        for added in spec.get("added_tokens") or ():
            longest = max(longest, len(str(added.get("content", "")).encode("utf-8")))
        self.max_bytes = longest or None

    def floor(self, text: str) -> int:
        if self.max_bytes is None or not text:
            return 0
        if self.normalizer is not None:
            text = self.normalizer.normalize_str(text)
        size = len(text.encode("utf-8", errors="surrogatepass"))
        return -(-size // self.max_bytes)


def _pieces(spec: dict[str, Any] | None) -> list[dict[str, Any]]:
    if spec is None:
        return []
    if spec.get("type") == "Sequence":
        inner = spec.get("pretokenizers") or spec.get("normalizers") or []
        return [p for s in inner for p in _pieces(s)]
    return [spec]


def _keeps_text(pre_tokenizer: dict[str, Any] | None) -> bool:
    for piece in _pieces(pre_tokenizer):
        if piece.get("type") not in _KEEPING_PRE_TOKENIZERS:
            return False
        if str(piece.get("behavior", "")).lower() == "removed":
            return False
    return True


def _byte_level(pre_tokenizer: dict[str, Any] | None) -> bool:
    return any(p.get("type") == "ByteLevel" for p in _pieces(pre_tokenizer))


def _is_unicode_form(normalizer: dict[str, Any]) -> bool:
    pieces = _pieces(normalizer)
    return bool(pieces) and all(p.get("type") in _NORMALIZERS for p in pieces)


def _has_all_bytes(vocab: dict[str, int]) -> bool:
    from tokenizers.pre_tokenizers import ByteLevel

    return all(symbol in vocab for symbol in ByteLevel.alphabet())
