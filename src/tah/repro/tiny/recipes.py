"""The ``tah train`` recipes of the tiny reproduction, built from :class:`ReproConfig`.

Recipes are generated rather than shipped as YAML files because their paths and budgets depend
on the run folder, the seed and the settings; the generated files are written into
``<run>/recipes/seed<N>/`` so every training step can be inspected and rerun by hand with
``tah train <file>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tah.repro.tiny.config import ReproConfig

__all__ = ["recipes_for_seed"]


def _optim(config: ReproConfig, lr: float) -> dict[str, Any]:
    return {
        "lr": lr,
        "weight_decay": 0.01,
        "max_grad_norm": config.max_grad_norm,
        "scheduler": "cosine_with_min_lr",
        "warmup_ratio": config.warmup_ratio,
        "min_lr_ratio": config.min_lr_ratio,
    }


def _train_section(config: ReproConfig, steps: int, seed: int) -> dict[str, Any]:
    return {
        "max_steps": steps,
        "per_device_batch_size": config.batch_size,
        "grad_accum": 1,
        "mixed_precision": "no",
        "seed": seed,
    }


def _tah_section(config: ReproConfig) -> dict[str, Any]:
    return {
        "max_iter": 2,
        "topk": config.topk,
        "lora_r": config.lora_r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
    }


def _decider_section(config: ReproConfig) -> dict[str, Any]:
    section = {
        "decider": "mlp",
        "threshold": config.threshold,
        "decider_topk": config.decider_topk,
        "decider_hidden_dims": list(config.decider_hidden_dims),
        "decider_expansion": config.decider_expansion,
        "decider_dropout": config.decider_dropout,
    }
    if config.decider_layers is not None:
        section["decider_layers"] = list(config.decider_layers)
    return section


def _stage2_loss(config: ReproConfig) -> dict[str, Any]:
    return {"pos_weight": config.decider_pos_weight, "decider_targets": config.decider_targets}


def recipes_for_seed(config: ReproConfig, out: Path, seed: int, vocab: int) -> dict[str, dict]:
    """The ``tah train`` recipes of one seed, as dicts (written as YAML next to the run).

    Every fine-tuning recipe reads the same rows in the same order (``require_hard`` off, same
    seed and batch): Standard and the AlwaysThink models the unlabelled rows, the TaH models
    the same rows carrying the labeller's hard-token marks (checked identical when written).
    """
    from tah.repro.tiny.decider_study import VARIANTS

    sd = out / f"seed{seed}"
    plain_rows = str(out / "synthetic" / "ft_rows.jsonl")
    labelled_rows = str(sd / "rows" / "train.jsonl")
    special = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    output = {"log_every": 10, "progress": False}
    base_dir, pruned_dir = str(sd / "base" / "final"), str(sd / "pruned")

    def finetune(stage: str, base: str, name: str, rows: str, tah: bool) -> dict[str, Any]:
        model: dict[str, Any] = {"base": base, **special}
        if tah:
            model["tah"] = _tah_section(config)
        data: dict[str, Any] = {"train": rows, "max_length": 256, "require_hard": False}
        if stage == "alwaysthink":
            data["query_iter"] = 2  # prompt tokens iterate too, as the `always` decider does
        return {
            "stage": stage,
            "model": model,
            "data": data,
            "optim": _optim(config, config.finetune_lr),
            "train": _train_section(config, config.finetune_steps, seed),
            "output": {"dir": str(sd / name), **output},
        }

    def stage2(stage1: str, name: str, variant: dict[str, dict[str, Any]] | None = None) -> dict:
        tah = _decider_section(config) | (variant or {}).get("tah", {})
        return {
            "stage": "stage2",
            "model": {"init_from": str(sd / stage1 / "final"), "tah": tah},
            "data": {"train": labelled_rows, "max_length": 256, "require_hard": False},
            "loss": _stage2_loss(config) | (variant or {}).get("loss", {}),
            "optim": _optim(config, config.stage2_lr),
            "train": _train_section(config, config.stage2_steps, seed),
            "output": {"dir": str(sd / name), **output},
        }

    recipes = {
        "pretrain": {
            "stage": "standard",
            "model": {
                "init_config": config.model_config(vocab),
                "tokenizer": str(out / "tokenizer"),
                **special,
            },
            "data": {
                "train": str(out / "synthetic" / "pretrain_rows.jsonl"),
                "max_length": 256,
                "require_hard": False,
            },
            "optim": _optim(config, config.pretrain_lr),
            "train": _train_section(config, config.pretrain_steps, seed),
            "output": {"dir": str(sd / "base"), **output},
        },
        "standard": finetune("standard", base_dir, "standard", plain_rows, tah=False),
        "standard_wide": finetune(
            "standard", str(sd / "wide_base"), "standard_wide", plain_rows, tah=False
        ),
        "alwaysthink": finetune("alwaysthink", pruned_dir, "alwaysthink", plain_rows, tah=True),
        "alwaysthink_plus": finetune(
            "alwaysthink", base_dir, "alwaysthink_plus", plain_rows, tah=True
        ),
        "tah_stage1": finetune("stage1", pruned_dir, "tah_stage1", labelled_rows, tah=True),
        "tahplus_stage1": finetune("stage1", base_dir, "tahplus_stage1", labelled_rows, tah=True),
        "tah_stage2": stage2("tah_stage1", "tah_stage2"),
        "tahplus_stage2": stage2("tahplus_stage1", "tahplus_stage2"),
    }
    for name in config.decider_variants:
        recipes[f"decider_{name}"] = stage2("tahplus_stage1", f"decider_{name}", VARIANTS[name][1])
    return recipes
