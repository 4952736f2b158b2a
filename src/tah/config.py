"""TaHConfig: every knob of a TaH model, as validated data with a JSON round-trip.

The config is read from and written to ``tah_config.json``. It also reads the published
layout's keys (``iter_decider``, ``iter_decider_kwargs``, ``input_updater_kwargs`` ...) so the
checkpoints released with the paper load; see :meth:`TaHConfig.from_published`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from tah.errors import ConfigError

DECIDERS = ("label", "mlp", "always", "never")
ATTENTION_MODES = ("duo", "root", "same_iter")
ADAPTERS = ("lora", "none")
FORMAT = "tah/1"
# Bounds that no sensible model exceeds; they keep a typo (max_iter: 1000000) from allocating
# terabytes of KV cache or printing megabytes of legend.
MAX_ITER = 16
MAX_VOCAB = 2**20
MAX_WIDTH = 2**16
MAX_LAYERS = 1024

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
    # Also read the depth-1 features of the previous token (zeros before a sequence's first).
    # Not in the paper: its decider reads one token. Where what makes a token hard is written one
    # position earlier (an operator before its argument), one token's state may not show it
    # (docs/repro-twohop/NOTES.md, sections 9 and 10).
    decider_previous_token: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field's type and range; a wrong one is a ConfigError naming it."""
        _integer("max_iter", self.max_iter, 1, MAX_ITER)
        _choice("decider", self.decider, DECIDERS)
        _number("threshold", self.threshold, 0.0, 1.0)
        if self.topk is not None:
            _integer("topk", self.topk, 1, MAX_VOCAB, "or null (full softmax)")
        _boolean("residual", self.residual)
        _choice("attention_mode", self.attention_mode, ATTENTION_MODES)
        _choice("adapter", self.adapter, ADAPTERS)
        _integer("lora_r", self.lora_r, 1, MAX_WIDTH)
        _number("lora_alpha", self.lora_alpha, 1e-6, 1e6)
        _number("lora_dropout", self.lora_dropout, 0.0, 0.99)
        targets = self.lora_target_modules
        if not isinstance(targets, str) and not (
            isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)
        ):
            raise ConfigError(
                f"lora_target_modules must be 'all-linear' or a list of module names, got "
                f"{targets!r}"
            )
        if self.decider_layers is not None:
            _int_list("decider_layers", self.decider_layers, 0, MAX_LAYERS)
        _integer("decider_topk", self.decider_topk, 1, MAX_VOCAB)
        _int_list("decider_hidden_dims", self.decider_hidden_dims, 1, MAX_WIDTH)
        _integer("decider_expansion", self.decider_expansion, 1, 64)
        _number("decider_dropout", self.decider_dropout, 0.0, 0.99)
        _boolean("decider_normalize_input", self.decider_normalize_input)
        _boolean("decider_previous_token", self.decider_previous_token)

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
        """Read the ``tah_config.json`` of the reference implementation (docs/method.md §12)."""
        decider_class = data.get("eval_iter_decider") or data.get("iter_decider")
        if decider_class == "iter_decider":  # alias used by the eval recipes
            decider_class = data.get("iter_decider")
        kwargs = _section(data, "iter_decider_kwargs")
        kwargs.update(_section(data, "eval_iter_decider_kwargs"))
        if decider_class not in _PUBLISHED_DECIDERS:
            raise ConfigError(
                f"published config names decider {decider_class!r}; supported: "
                f"{sorted(_PUBLISHED_DECIDERS)}"
            )
        decider = _PUBLISHED_DECIDERS[decider_class]
        if decider_class == "AlwaysWrapperIterDecider" and kwargs.get("mode") == "stop":
            decider = "never"
        adapter_kwargs = _section(data, "adapter_kwargs")
        values: dict[str, Any] = {
            "max_iter": data.get("max_iter", 2),
            "decider": decider,
            "adapter": "lora" if data.get("adapter", "lora") == "lora" else "none",
            "topk": _section(data, "input_updater_kwargs").get("topk", 100),
            "residual": data.get("output_updater", "AdditiveLogitsUpdater")
            == "AdditiveLogitsUpdater",
            "attention_mode": data.get("iter_attention_mode", "duo") or "duo",
        }
        if "threshold" in kwargs:
            values["threshold"] = kwargs["threshold"]
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
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path} is not UTF-8 text ({exc}); save it as UTF-8 JSON") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        try:
            saved = cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        return cls.from_dict(data, **overrides) if overrides else saved

    def replace(self, **changes: Any) -> TaHConfig:
        return dataclasses.replace(self, **changes)


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a JSON object, got {_describe(value)}")
    return dict(value)


def _describe(value: Any) -> str:
    kind = "null" if value is None else type(value).__name__
    return f"{value!r} ({kind})"


def _integer(name: str, value: Any, lo: int, hi: int, extra: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(
            f"{name} must be an integer from {lo} to {hi}{' ' + extra if extra else ''}, "
            f"got {_describe(value)}"
        )


def _number(name: str, value: Any, lo: float, hi: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not lo <= value <= hi
    ):
        raise ConfigError(f"{name} must be a number in [{lo:g}, {hi:g}], got {_describe(value)}")


def _boolean(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {_describe(value)}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {_describe(value)}")


def _int_list(name: str, value: Any, lo: int, hi: int) -> None:
    if (
        not isinstance(value, list)
        or not value
        or not all(not isinstance(v, bool) and isinstance(v, int) and lo <= v <= hi for v in value)
    ):
        raise ConfigError(
            f"{name} must be a non-empty list of integers from {lo} to {hi}, got {_describe(value)}"
        )
