"""Incremental detokenisation: the text of a growing token sequence, one step at a time.

Why: decoding every generated token again at each step costs time quadratic in the output
length. ``tokenizers.decoders.DecodeStream`` (the tokenizer library's own incremental decoder)
keeps just enough context to turn each new token into its new text, and holds back a token
that ends inside a multi-byte character until the character is complete. Tokenizers without a
fast (Rust) backend fall back to decoding the whole sequence, as before.
"""

from __future__ import annotations

from typing import Any


class IncrementalDecoder:
    """Feed token ids with :meth:`add`, get the new text; :meth:`finish` at the end.

    The concatenation of everything returned equals ``tokenizer.decode(ids,
    skip_special_tokens=...)`` of all ids (tested for byte-level BPE and multi-byte text).
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""  # everything returned so far
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._stream = None
        if self._backend is not None:
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)

    def add(self, token_ids: list[int]) -> str:
        """Take new token ids; return the text they complete (possibly empty)."""
        self.ids.extend(token_ids)
        if self._stream is not None:
            pieces = (self._stream.step(self._backend, int(t)) for t in token_ids)
            new = "".join(p for p in pieces if p)
        else:
            full = self._decode()
            if full.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more tokens
                full = full[:-1]
            new = full[len(self.text) :] if full.startswith(self.text) else ""
        self.text += new
        return new

    def finish(self) -> str:
        """The text still held back at the end (an incomplete character, as U+FFFD)."""
        full = self._decode()
        rest = full[len(self.text) :] if full.startswith(self.text) else ""
        self.text += rest
        return rest

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
