"""AdamW with weight decay on matrices only, and the warmup + cosine-to-floor schedule.

The schedule itself is transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` (a
``LambdaLR``, so its state round-trips through ``state_dict``); this module only fixes the
choices the paper's recipes make (docs/method.md §10): HF-default AdamW betas/eps, decay on >= 2-D
tensors (not on biases, norms or the decider's LayerNorms), ``ceil(warmup_ratio * steps)``
warmup steps like HF Trainer, and the minimum-lr ratio.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from tah.training.recipe import OptimSection


def parameter_groups(
    named: Iterable[tuple[str, nn.Parameter]], weight_decay: float
) -> tuple[list[dict], list[str]]:
    """Two AdamW groups (matrices decay, vectors do not) over the trainable parameters.

    Also returns the parameter names in optimiser order, saved with checkpoints so a resume can
    verify that the optimiser state maps onto the same tensors.
    """
    decay, no_decay, names_decay, names_no = [], [], [], []
    for name, param in named:
        if not param.requires_grad:
            continue
        if param.ndim >= 2:
            decay.append(param)
            names_decay.append(name)
        else:
            no_decay.append(param)
            names_no.append(name)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]], names_decay + names_no


def build_optimizer(groups: list[dict], cfg: OptimSection) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimSection, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The recipe's schedule over ``total_steps`` optimiser steps."""
    from transformers.optimization import (
        get_constant_schedule_with_warmup,
        get_cosine_with_min_lr_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    warm = warmup_steps(total_steps, cfg.warmup_ratio)
    if cfg.scheduler == "cosine_with_min_lr":
        return get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, warm, total_steps, min_lr_rate=cfg.min_lr_ratio
        )
    if cfg.scheduler == "linear":
        return get_linear_schedule_with_warmup(optimizer, warm, total_steps)
    return get_constant_schedule_with_warmup(optimizer, warm)
