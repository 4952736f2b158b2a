"""A tiny tokenizer for the synthetic task, saved as an ordinary Hugging Face tokenizer.

Why we train one instead of reusing Qwen3's: a 150k-token vocabulary would dwarf a 0.8 M
parameter model, and multi-digit number tokens hide the interesting structure. Here the
``tokenizers`` library does all the work (byte-level BPE, digit splitting, serialisation); this
module only fixes the choices that matter for TaH experiments:

* every digit is its own token (``Digits(individual_digits=True)``), so a result like ``744`` is
  three next-token predictions and a carry shows up as one hard token;
* byte-level pre-tokenisation and decoding, so ``decode(encode(text)) == text`` for any text
  (spaces, newlines, ``\\boxed{}``), not only the task's;
* Qwen-style special tokens (``<|endoftext|>`` pad, ``<|im_start|>``, ``<|im_end|>`` eos,
  ``<think>``, ``</think>``) and a ChatML chat template, so the rest of ``tah`` (labelling,
  training, generation, serving) treats this tokenizer exactly like a real Qwen3 one.

The chat template marks assistant content (including its ``<|im_end|>``) with
``{% generation %}`` so ``apply_chat_template(..., return_assistant_tokens_mask=True)`` yields
the supervised span directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tah.errors import ConfigError, DataError
from tah.io import atomic_dir

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "build_task_tokenizer",
    "load_tokenizer",
    "save_tokenizer",
    "train_tokenizer",
]

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, IM_START, IM_END, "<think>", "</think>")

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('Unsupported chat role ' + message['role'] + "
    "'; use system, user or assistant') -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Words the chat template and common prompts use, so they are whole tokens even if the training
# texts never mention them.
_EXTRA_TEXTS: tuple[str, ...] = (
    "system\nuser\nassistant\n",
    "The answer is \\boxed{0}.\n#### 0",
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "You are a helpful assistant.",
)


def _check_texts(texts: Iterable[str]) -> Iterator[str]:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(
                f"train_tokenizer: texts[{i}] is a {type(text).__name__}, not a str; "
                "pass the problem and solution strings"
            )
        yield text


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 640,
    *,
    min_frequency: int = 2,
    model_max_length: int = 4096,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with single-digit tokens on ``texts``.

    ``vocab_size`` is a cap that counts the 256 byte symbols and the 5 special tokens, so at
    most ``vocab_size - 261`` merges are learned; merges seen fewer than ``min_frequency``
    times are not. On the synthetic task the default stops on its own near 514 tokens with
    every word whole. Training is deterministic for the same texts and settings.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    floor = len(alphabet) + len(SPECIAL_TOKENS)
    if not isinstance(vocab_size, int) or vocab_size < floor:
        raise ConfigError(
            f"vocab_size={vocab_size!r} is too small: the byte alphabet and special tokens "
            f"alone take {floor}; use at least {floor} (default 640)"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    corpus = list(_check_texts(texts))
    if not corpus:
        raise DataError("train_tokenizer got no texts; pass the task's problems and solutions")
    # Repeat the template words so they clear ``min_frequency`` and become whole tokens.
    extras = list(_EXTRA_TEXTS) * max(2, min_frequency)
    backend.train_from_iterator([*corpus, *extras], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )


def build_task_tokenizer(
    n: int = 4000, seed: int = 0, vocab_size: int = 640
) -> PreTrainedTokenizerFast:
    """Train the tokenizer on ``n`` synthetic records (all difficulty levels, all answer styles).

    A convenience for the laptop reproduction: the corpus is regenerated from ``seed``, so the
    same arguments always give the same vocabulary.
    """
    from tah.data.synthetic import generate_dataset

    texts: list[str] = []
    for style in ("hash", "both"):
        for record in generate_dataset(n // 2, seed, (1, 2, 3, 4), answer_style=style):
            texts += [record["problem"], record["solution"]]
    return train_tokenizer(texts, vocab_size=vocab_size)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | os.PathLike) -> Path:
    """Save with ``save_pretrained`` into a temporary folder renamed over ``directory``.

    The result loads offline with ``AutoTokenizer.from_pretrained(directory)``.
    """
    target = Path(directory)
    with atomic_dir(target) as tmp:
        tokenizer.save_pretrained(tmp)
    return target


def load_tokenizer(directory: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer from a local folder, never touching the network."""
    from transformers import AutoTokenizer

    path = Path(directory)
    if not (path / "tokenizer.json").is_file():
        raise ConfigError(
            f"{path} holds no tokenizer.json; create one with tah.data.tokenizer.save_tokenizer"
        )
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
