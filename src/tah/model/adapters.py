"""LoRA for the deeper passes: built with peft, switched on and off per depth.

We let peft create and save the adapter (PEFT directory layout, ``all-linear`` targets). The
per-depth switch is ours: peft's public toggle (``enable_adapters``) also rewrites
``requires_grad`` of the adapter weights, which would silently unfreeze a frozen adapter in
stage 2 and re-walk every adapter on each pass. A TaH forward flips the switch twice per depth,
so :class:`LoraSwitch` flips only the per-layer "disabled" flag that peft's forward reads.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from tah.config import TaHConfig
from tah.errors import CheckpointError, UnsupportedModelError


class LoraSwitch:
    """Turns every LoRA layer of a model on or off without touching gradients."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        for layer in self.layers:
            if not hasattr(layer, "_disable_adapters"):
                raise UnsupportedModelError(
                    "this peft version has no per-layer adapter switch (_disable_adapters); "
                    "install a peft release >= 0.17"
                )
        self.enabled: bool | None = None

    def set(self, enabled: bool) -> None:
        if enabled == self.enabled:
            return
        for layer in self.layers:
            layer._disable_adapters = not enabled
        self.enabled = enabled


@contextlib.contextmanager
def _quiet_peft():
    """peft calls transformers' deprecated ``is_gradient_checkpointing``; that FutureWarning is
    for peft's maintainers, not for our users, so it is silenced around peft's wrapping only."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        yield


def add_lora(model: nn.Module, config: TaHConfig) -> PeftModel:
    """Wrap ``model`` with a fresh LoRA adapter as configured."""
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        bias="none",
    )
    with _quiet_peft():
        return get_peft_model(model, lora_config)


def load_lora(model: nn.Module, lora_dir: str | Path) -> PeftModel:
    """Wrap ``model`` with the adapter saved in ``lora_dir`` (PEFT layout)."""
    lora_dir = Path(lora_dir)
    if not (lora_dir / "adapter_config.json").is_file():
        raise CheckpointError(
            f"{lora_dir} has no adapter_config.json: the LoRA adapter of this TaH checkpoint is "
            "missing (expected a PEFT adapter directory)"
        )
    with _quiet_peft():
        return PeftModel.from_pretrained(model, lora_dir, is_trainable=True)


def lora_settings(peft_model: PeftModel) -> dict:
    """r, alpha, dropout and targets of the active adapter, as TaHConfig fields."""
    cfg = peft_model.peft_config[peft_model.active_adapter]
    targets = cfg.target_modules
    if isinstance(targets, set):
        targets = sorted(targets)
    return {
        "lora_r": int(cfg.r),
        "lora_alpha": int(cfg.lora_alpha),
        "lora_dropout": float(cfg.lora_dropout),
        "lora_target_modules": targets,
    }
