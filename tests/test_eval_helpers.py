"""Helpers for the evaluation tests: a tiny offline tokenizer and random-weight checkpoints.

Imported by the other ``test_eval_*`` modules; its own test checks the tokenizer round trip.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<pad>", "<eos>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def tiny_tokenizer(chat: bool = True):
    """Character-level tokenizer (printable ASCII + ChatML/think specials), no network."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + list(string.printable))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<eos>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.add_tokens(["<think>", "</think>"])
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tiny_model(path: Path, seed: int = 0, chat: bool = True, layers: int = 2) -> Path:
    """A random Qwen3 (hidden 32) with the tiny tokenizer, saved with save_pretrained."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = tiny_tokenizer(chat)
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = Qwen3ForCausalLM(config).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_tiny_tah(path: Path, base: Path, decider: str = "mlp", threshold: float = 0.5) -> Path:
    """A TaH checkpoint around ``base`` with a random (untrained) MLP decider."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tah import TaHConfig, TaHForCausalLM

    torch.manual_seed(1)
    cfg = TaHConfig(
        max_iter=2,
        decider=decider,
        threshold=threshold,
        topk=10,
        decider_topk=10,
        decider_hidden_dims=[16, 16],
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
    )
    hf = AutoModelForCausalLM.from_pretrained(base)
    model = TaHForCausalLM.from_base(hf, cfg, tokenizer=AutoTokenizer.from_pretrained(base))
    # Non-zero LoRA B so depth 2 really differs from depth 1.
    with torch.no_grad():
        for p in model.lora_parameters():
            p.normal_(0, 0.05)
    model.save_pretrained(path)
    return path


def one_thread():
    """Context for tiny models: one intra-op thread (OpenMP spin-waits swamp tiny matmuls on a
    busy 2-core machine: 100x slower measured)."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def ctx():
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    return ctx()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_tiny_tokenizer_round_trip():
    tok = tiny_tokenizer()
    text = "What is 3/4? \\boxed{0.75}"
    assert tok.decode(tok(text)["input_ids"]) == text
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tok.convert_tokens_to_ids("<think>") != tok.unk_token_id
