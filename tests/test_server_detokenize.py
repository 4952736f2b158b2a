"""Incremental detokenisation for streaming (tokenizers' DecodeStream): the streamed pieces add
up to the full decode, multi-byte characters included, without decoding everything each step."""

from __future__ import annotations

import random

import pytest

from conftest import QWEN3_SKIP, QWEN3_TOKENIZER, char_tokenizer
from tah.engine.detokenize import IncrementalDecoder


@pytest.fixture(scope="module")
def qwen3():
    if not QWEN3_TOKENIZER.is_dir():
        pytest.skip(QWEN3_SKIP)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN3_TOKENIZER)


TEXT = "héllo wörld — 世界 🎉 naïve ünïcödé, ½ ∑ 𝔘 done"


def stream(tok, ids, sizes) -> tuple[list[str], str]:
    decoder = IncrementalDecoder(tok)
    pieces, i = [], 0
    for size in sizes:
        pieces.append(decoder.add(ids[i : i + size]))
        i += size
    assert i == len(ids)
    return pieces, decoder.finish()


@pytest.mark.parametrize("chunking", ["one", "random"])
def test_streamed_text_equals_full_decode_qwen3(qwen3, chunking):
    tok = qwen3
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ids = tok.encode(TEXT, add_special_tokens=False) + [end] + tok.encode(" tail 你好")
    rng = random.Random(0)
    sizes = [1] * len(ids)
    if chunking == "random":
        sizes = []
        while sum(sizes) < len(ids):
            sizes.append(min(rng.randint(1, 4), len(ids) - sum(sizes)))
    pieces, rest = stream(tok, ids, sizes)
    full = tok.decode(ids, skip_special_tokens=True)
    assert "".join(pieces) + rest == full
    assert "<|im_end|>" not in full and "\ufffd" not in "".join(pieces)
    if chunking == "one":  # some tokens end inside a character: their text waits
        assert "" in pieces


def test_an_unfinished_character_at_the_end_is_flushed(qwen3):
    tok = qwen3
    ids = tok.encode("ok 𝔘", add_special_tokens=False)
    partial = ids[:-1]  # the last character is split over byte tokens
    pieces, rest = stream(tok, partial, [1] * len(partial))
    assert "".join(pieces) + rest == tok.decode(partial, skip_special_tokens=True)


def test_no_full_decode_per_step(qwen3, monkeypatch):
    tok = qwen3
    calls = []
    real = tok.decode
    monkeypatch.setattr(tok, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    ids = tok.encode(TEXT * 3, add_special_tokens=False)
    pieces, rest = stream(tok, ids, [1] * len(ids))
    assert len(calls) == 1  # once, by finish()
    assert "".join(pieces) + rest == real(ids, skip_special_tokens=True)


def test_char_tokenizer_and_slow_fallback():
    tok = char_tokenizer(64)
    ids = tok.encode("abc def<|im_end|>gh")
    pieces, rest = stream(tok, ids, [1] * len(ids))
    assert "".join(pieces) + rest == tok.decode(ids, skip_special_tokens=True) == "abc defgh"

    class Slow:  # no fast backend: decodes the whole sequence each step
        def decode(self, ids, skip_special_tokens=True):
            return tok.decode(ids, skip_special_tokens=skip_special_tokens)

    pieces, rest = stream(Slow(), ids, [1] * len(ids))
    assert "".join(pieces) + rest == "abc defgh"
