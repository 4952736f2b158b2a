"""Helpers shared by the tests/test_train_*.py files (no tests here).

Tiny random-weight Qwen3 models built from a config dict inside the recipe (``model.init_config``),
labelled rows written as JSON Lines, and an in-process ``tah`` CLI runner.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
import yaml

torch.set_flush_denormal(True)

VOCAB = 64
REPO = Path(__file__).resolve().parents[1]


def tiny_init_config(vocab: int = VOCAB, layers: int = 2, hidden: int = 32) -> dict[str, Any]:
    return {
        "model_type": "qwen3",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": hidden // 4,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
    }


def random_rows(
    n: int, vocab: int = VOCAB, seed: int = 0, hard_p: float = 0.3, lo: int = 10, hi: int = 24
) -> list[dict[str, Any]]:
    """Labelled rows: a short prompt (mask 0) then a response with random hard tokens."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        length, prompt = rng.randint(lo, hi), rng.randint(2, 5)
        ids = [rng.randrange(vocab) for _ in range(length)]
        mask = [0] * prompt + [1] * (length - prompt)
        mismatch = [int(rng.random() < hard_p) for _ in range(length)]
        mismatch[prompt] = 1  # every row has a supervised hard token
        rows.append({"data_id": i, "input_ids": ids, "mask": mask, "mismatch": mismatch})
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def recipe_dict(
    stage: str, train_path: Path, out_dir: Path, **sections: dict[str, Any]
) -> dict[str, Any]:
    """A tiny CPU recipe; ``sections`` are merged into the defaults section by section."""
    recipe: dict[str, Any] = {
        "stage": stage,
        "model": {"init_config": tiny_init_config()},
        "data": {"train": str(train_path), "max_length": 64},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0},
        "train": {"epochs": 1, "per_device_batch_size": 2, "global_batch_size": 4, "seed": 7},
        "output": {"dir": str(out_dir), "progress": False},
    }
    if stage != "standard":
        recipe["model"]["tah"] = {"max_iter": 2, "topk": 8, "lora_r": 4, "lora_alpha": 8}
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values)
    return recipe


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def train_records(out: Path) -> list[dict[str, Any]]:
    lines = (out / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "train"]
