"""TaHConfig: every knob of a TaH model, as validated data with a JSON round-trip.

The config is read from and written to ``tah_config.json``. It also reads the published
layout's keys (``iter_decider``, ``iter_decider_kwargs``, ``input_updater_kwargs`` ...) so the
checkpoints released with the paper load; see :meth:`TaHConfig.from_published`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from tah.errors import ConfigError

DECIDERS = ("label", "mlp", "always", "never")
ATTENTION_MODES = ("duo", "root", "same_iter")
ADAPTERS = ("lora", "none")
FORMAT = "tah/1"

# Published class names -> our decider names.
_PUBLISHED_DECIDERS = {
    "IterLabelDecider": "label",
    "MLPIterDecider": "mlp",
    "TrivialIterDecider": "never",
    "AlwaysWrapperIterDecider": "always",
}


@dataclass
class TaHConfig:
    """Configuration of a Think-at-Hard model.

    Depth counts from 1 (the ordinary forward pass). ``max_iter`` is D, the deepest depth.
    """

    max_iter: int = 2
    decider: str = "mlp"
    threshold: float = 0.9
    # Input of deeper passes: softmax over the top-k cumulative logits (None = full softmax).
    topk: int | None = 100
    # Output = sum of logits over depths (paper); False = the deepest pass's logits alone.
    residual: bool = True
    attention_mode: str = "duo"
    # LoRA adapter active at depth >= 2.
    adapter: str = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: str | list[str] = "all-linear"
    # MLP decider: indices into the HF hidden-state tuple (0 = embeddings, L = final norm).
    decider_layers: list[int] | None = None
    decider_topk: int = 100
    decider_hidden_dims: list[int] = field(default_factory=lambda: [512] * 6)
    decider_expansion: int = 4
    decider_dropout: float = 0.1
    decider_normalize_input: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ConfigError(f"max_iter must be an integer >= 1, got {self.max_iter!r}")
        if self.decider not in DECIDERS:
            raise ConfigError(f"decider must be one of {DECIDERS}, got {self.decider!r}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ConfigError(f"threshold must be in [0, 1], got {self.threshold!r}")
        if self.topk is not None and (not isinstance(self.topk, int) or self.topk < 1):
            raise ConfigError(f"topk must be a positive integer or None, got {self.topk!r}")
        if self.attention_mode not in ATTENTION_MODES:
            raise ConfigError(
                f"attention_mode must be one of {ATTENTION_MODES}, got {self.attention_mode!r}"
            )
        if self.adapter not in ADAPTERS:
            raise ConfigError(f"adapter must be one of {ADAPTERS}, got {self.adapter!r}")
        if self.lora_r < 1:
            raise ConfigError(f"lora_r must be >= 1, got {self.lora_r}")
        if self.decider_topk < 1:
            raise ConfigError(f"decider_topk must be >= 1, got {self.decider_topk}")
        if not self.decider_hidden_dims or any(d < 1 for d in self.decider_hidden_dims):
            raise ConfigError(
                f"decider_hidden_dims must be positive, got {self.decider_hidden_dims}"
            )
        if self.decider_layers is not None and not all(
            isinstance(i, int) for i in self.decider_layers
        ):
            raise ConfigError(f"decider_layers must be integers, got {self.decider_layers!r}")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> TaHConfig:
        if "iter_decider" in data and "format" not in data:
            return cls.from_published(data, **overrides)
        data = {k: v for k, v in data.items() if k != "format"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown TaHConfig keys {unknown}; known keys: {sorted(known)}")
        merged = {**data, **{k: v for k, v in overrides.items() if v is not None}}
        bad = sorted(set(merged) - known)
        if bad:
            raise ConfigError(f"unknown TaHConfig keys {bad}; known keys: {sorted(known)}")
        return cls(**merged)

    @classmethod
    def from_published(cls, data: dict[str, Any], **overrides: Any) -> TaHConfig:
        """Read the ``tah_config.json`` of the reference implementation (METHOD.md appendix K)."""
        decider_class = data.get("eval_iter_decider") or data.get("iter_decider")
        if decider_class == "iter_decider":  # alias used by the eval recipes
            decider_class = data.get("iter_decider")
        kwargs = dict(data.get("iter_decider_kwargs") or {})
        kwargs.update(data.get("eval_iter_decider_kwargs") or {})
        if decider_class not in _PUBLISHED_DECIDERS:
            raise ConfigError(
                f"published config names decider {decider_class!r}; supported: "
                f"{sorted(_PUBLISHED_DECIDERS)}"
            )
        decider = _PUBLISHED_DECIDERS[decider_class]
        if decider_class == "AlwaysWrapperIterDecider" and kwargs.get("mode") == "stop":
            decider = "never"
        adapter_kwargs = dict(data.get("adapter_kwargs") or {})
        values: dict[str, Any] = {
            "max_iter": int(data.get("max_iter", 2)),
            "decider": decider,
            "adapter": "lora" if data.get("adapter", "lora") == "lora" else "none",
            "topk": (data.get("input_updater_kwargs") or {}).get("topk", 100),
            "residual": data.get("output_updater", "AdditiveLogitsUpdater")
            == "AdditiveLogitsUpdater",
            "attention_mode": data.get("iter_attention_mode", "duo") or "duo",
        }
        if "threshold" in kwargs:
            values["threshold"] = float(kwargs["threshold"])
        for ours, theirs in (
            ("lora_r", "r"),
            ("lora_alpha", "lora_alpha"),
            ("lora_dropout", "lora_dropout"),
            ("lora_target_modules", "target_modules"),
        ):
            if theirs in adapter_kwargs:
                values[ours] = adapter_kwargs[theirs]
        for ours, theirs in (
            ("decider_layers", "hidden_states_layer_nums"),
            ("decider_topk", "topk"),
            ("decider_hidden_dims", "hidden_dims"),
            ("decider_expansion", "expansion_factor"),
            ("decider_dropout", "dropout_rate"),
            ("decider_normalize_input", "normalize_input"),
        ):
            if theirs in kwargs and kwargs[theirs] is not None:
                values[ours] = kwargs[theirs]
        if values.get("decider_layers") is not None:
            values["decider_layers"] = [int(i) for i in values["decider_layers"]]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def save(self, path: str | os.PathLike) -> None:
        from tah.io import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides: Any) -> TaHConfig:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"no TaH config at {path}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        return cls.from_dict(data, **overrides)

    def replace(self, **changes: Any) -> TaHConfig:
        return dataclasses.replace(self, **changes)
