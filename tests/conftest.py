"""Shared fixtures: tiny random-weight decoders of the supported families (CPU, fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_flush_denormal(True)
# Tiny models run fastest (and least disturbed by other load) on one thread.
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
QWEN3_TOKENIZER = SHARED / "tokenizers" / "qwen3"
# The README section that says what ../shared is and how to run the tests without it.
SHARED_README_SECTION = "Tests that need ../shared"


def shared_skip_reason(relative: str, what: str) -> str:
    """Why a test that needs ``../shared/<relative>`` is skipped, and where to read more."""
    return (
        f"needs {what} in ../shared/{relative}, which is not next to this checkout (a folder "
        f"the maintainers lay beside the repository, not part of it; see '{SHARED_README_SECTION}' "
        "in README.md)"
    )


QWEN3_SKIP = shared_skip_reason("tokenizers/qwen3", "the real Qwen3 tokenizer")
DATA_SKIP = shared_skip_reason("data", "the benchmark data (or $TAH_DATA_DIR)")


def tiny_config(family: str = "qwen3", vocab_size: int = 64, layers: int = 3, **overrides):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    common.update(overrides)
    if family == "qwen3":
        return Qwen3Config(head_dim=8, **common)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "llama":
        return LlamaConfig(head_dim=8, **common)
    raise ValueError(family)


def tiny_model(family: str = "qwen3", seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides))
    return model.eval()


def randomize_lora(model, seed: int = 1, std: float = 0.2) -> None:
    """peft initialises LoRA B to zero; give the adapter real weights so depth 2 differs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.lora_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)


@pytest.fixture
def qwen3_tokenizer():
    if not QWEN3_TOKENIZER.is_dir():
        pytest.skip(QWEN3_SKIP)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN3_TOKENIZER)


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def char_tokenizer(vocab_size: int = 64):
    """A character-level tokenizer with ChatML specials, built offline."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789 .,?!+-*=\n#")
    tokens = (specials + chars)[:vocab_size]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok
