"""Settings of the plateau study: the tiny study's settings plus the gate's, and two presets.

The study reuses the tiny reproduction's task, data, recipes and commands
(:class:`~tah.repro.tiny.config.ReproConfig`), so every field there means the same here; this
class adds what only the plateau study has: how far Standard trains past its steps to show a
plateau, how the depth control grows, and the gate's thresholds. The thresholds are the
issue's (23), fixed before the first run; the registered readout is in
:func:`tah.repro.plateau.report.preregistration`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tah.errors import ConfigError
from tah.repro.tiny.config import PRESETS as TINY_PRESETS
from tah.repro.tiny.config import ReproConfig

__all__ = ["PLATEAU_PRESETS", "PlateauConfig", "preset"]


@dataclass
class PlateauConfig(ReproConfig):
    """Everything of :class:`ReproConfig`, plus the gate."""

    preset: str = "plateau"
    # Standard is also fine-tuned for plateau_factor x finetune_steps ("standard_2x")
    plateau_factor: int = 2
    # the depth control: the pretrained base with deep_factor x its layers, every new layer
    # starting as the identity (tah.repro.deepen), fine-tuned like Standard; "cycle" = the
    # base's stack again after itself, the depth TaH's second pass has (as the two-hop study)
    deep_factor: int = 2
    deep_placement: str = "cycle"
    # gate (validation answer accuracy, points): Standard has plateaued on every seed when the
    # longer run gains at most plateau_max_gain; depth binds when the deep model beats the better
    # of the two Standard runs by at least deep_min_gain on every seed; width does not matter
    # when Standard-wide beats Standard by at most wide_max_gain on the mean over seeds
    plateau_max_gain: float = 2.0
    deep_min_gain: float = 5.0
    wide_max_gain: float = 2.0
    # "exploratory": a failed gate still runs the TaH arms, marked exploratory in the results
    # (issue 23 asks for the outcome either way); "stop": no TaH model after a failed gate
    on_gate_fail: str = "exploratory"
    # the second TaH+ decider: the same stage-1 weights with a previous-token decider
    decider_variants: list[str] = field(default_factory=lambda: ["previous_token"])

    def validate(self) -> None:
        super().validate()
        for name in ("plateau_factor", "deep_factor"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 2:
                raise ConfigError(f"{name} must be an integer >= 2, got {value!r}")
        from tah.repro.deepen import PLACEMENTS

        if self.deep_placement not in PLACEMENTS:
            raise ConfigError(
                f"deep_placement must be one of {', '.join(PLACEMENTS)}, got "
                f"{self.deep_placement!r}"
            )
        if self.on_gate_fail not in ("exploratory", "stop"):
            raise ConfigError(
                f"on_gate_fail must be 'exploratory' or 'stop', got {self.on_gate_fail!r}"
            )
        if self.decider_variants != ["previous_token"]:
            raise ConfigError(
                "the plateau study compares exactly two deciders: decider_variants must be "
                f"['previous_token'], got {self.decider_variants!r}"
            )


# The reported study. Chosen on validation problems only, before any TaH model: see
# docs/repro-plateau/attempts.md for every setting tried and why this one.
PLATEAU_PRESETS: dict[str, dict[str, Any]] = {
    "plateau": {
        "preset": "plateau",
        "difficulty": [1, 2],
        "hidden_size": 64,
        "intermediate_size": 192,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "head_dim": 16,
        "n_train": 8000,
        "n_val": 300,
        "n_test": 300,
        "pretrain_steps": 3000,
        "finetune_steps": 500,
        "lora_r": 8,
        "lora_alpha": 16,
        "decider_hidden_dims": [64, 64],
        "sweep_thresholds": [0.5, 0.8, 0.9, 0.99],
        "token_acc_limit": 100,
    },
    # CI smoke: the whole pipeline in a minute or two; the numbers mean nothing
    "quick": {
        **{k: v for k, v in TINY_PRESETS["quick"].items() if k != "decider_variants"},
        "preset": "plateau-quick",
        "num_layers": 2,
        "pretrain_steps": 30,
        "finetune_steps": 8,
        "stage2_steps": 6,
        "n_test": 12,
        "n_val": 12,
    },
}


def preset(name: str) -> PlateauConfig:
    if name not in PLATEAU_PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PLATEAU_PRESETS)}")
    config = PlateauConfig(**PLATEAU_PRESETS[name])
    config.validate()
    return config
