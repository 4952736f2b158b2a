"""The settings of one evaluation run, and which of them a resumed run must share.

This module holds :class:`EvalConfig`, everything one ``tah eval`` needs as plain data (so it
travels to spawned worker processes as a dict and back), its checks of each setting with the
flag to fix, the name a run is shown and stored under, and its fingerprint: the settings that
change what a sample's output is, recorded in ``run.json`` and compared when a run resumes.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from tah.errors import ConfigError
from tah.evaluation.backend_base import BackendOptions
from tah.evaluation.backends import check_local_model
from tah.evaluation.prompts import PROMPT_STYLES
from tah.evaluation.sampling import decoding_settings, paper_sampling
from tah.model.loading import resolve_device, resolve_dtype
from tah.model.sampling import SamplingParams

# Backends that load the model in this process with torch (device and dtype apply to them).
LOCAL_BACKENDS = ("hf", "tah", "softthink", "oracle")

# Settings that change what a sample's output is: they must match when resuming a run.
_FINGERPRINT_KEYS = (
    "model",
    "backend",
    "seed",
    "prompt_style",
    "chat_template",
    "enable_thinking",
    "sampling",
    "backend_options",
    "grading",
)


@dataclass
class EvalConfig:
    """Everything one ``tah eval`` needs; plain data so it can travel to worker processes."""

    model: str
    datasets: list[str]
    output: str
    backend: str = "hf"
    samples: int = 1
    jobs: int = 1
    limit: int | None = None
    batch_size: int = 16
    seed: int = 42
    prompt_style: str = "bare"
    chat_template: bool = True
    enable_thinking: bool | None = None
    sampling: SamplingParams = field(default_factory=paper_sampling)
    backend_options: BackendOptions = field(default_factory=BackendOptions)
    devices: list[str] | None = None
    data_dir: str | None = None
    answer_type: str | None = None
    grade_time_limit: float = 10.0
    grading: str = "default"
    name: str | None = None
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        check_local_model(self.backend, self.model)  # before any output directory is made
        if self.samples < 1:
            raise ConfigError(f"--samples must be >= 1, got {self.samples}")
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {self.jobs}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.prompt_style not in PROMPT_STYLES:
            raise ConfigError(f"--prompt-style {self.prompt_style!r}: use one of {PROMPT_STYLES}")
        if not self.datasets:
            raise ConfigError("no datasets given (--datasets gsm8k,math500)")
        if self.data_dir is not None and not os.path.isdir(self.data_dir):
            raise ConfigError(f"--data-dir {self.data_dir}: no such folder")
        options = self.backend_options
        threshold = options.threshold
        if threshold is not None and not (0.0 <= threshold <= 1.0):
            raise ConfigError(f"--threshold must be in [0, 1], got {threshold:g}")
        if self.backend in LOCAL_BACKENDS:
            resolve_dtype(options.dtype, resolve_device(options.device))
            for device in self.devices or []:
                resolve_device(device)

    def fingerprint(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        fp = {k: data[k] for k in _FINGERPRINT_KEYS}
        if "sampling" in fp:  # the recorded names, so runs from before stay resumable
            fp["sampling"] = decoding_settings(self.sampling)
        # Where it runs does not change what it computes (beyond float noise).
        fp["backend_options"] = {k: v for k, v in fp["backend_options"].items() if k != "device"}
        if fp["backend_options"].get("iter_budget") is None:  # runs from before the option
            fp["backend_options"].pop("iter_budget", None)
        return fp

    def display_name(self) -> str:
        if self.name:
            return self.name
        base = os.path.basename(os.path.normpath(self.model)) or self.model
        name = f"{base}-{self.backend}"
        if self.backend_options.decider:
            name += f"-{self.backend_options.decider}"
        if self.backend_options.threshold is not None:
            name += f"-tau{self.backend_options.threshold:g}"
        if self.backend_options.iter_budget is not None:
            name += f"-budget{self.backend_options.iter_budget:g}"
        return name

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalConfig:
        data = dict(data)
        data["sampling"] = SamplingParams.from_dict(data["sampling"])
        data["backend_options"] = BackendOptions(**data["backend_options"])
        return cls(**data)
