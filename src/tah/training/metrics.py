"""Training metrics: per-step sums reduced over processes, the JSONL log, optional trackers.

Why not only ``accelerate``'s trackers: the JSONL log is the one artefact every run writes
(no extra package, greppable, read by our tests and reports), and it must survive ``--resume``
cleanly: lines written after the checkpoint we resume from are dropped, so the log of a resumed
run is the log of an uninterrupted one. TensorBoard and W&B go through ``accelerate`` when the
recipe asks for them (and are refused up front when not installed).
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from tah.errors import ConfigError
from tah.io import atomic_file
from tah.training.losses import DeciderCounts


@dataclass
class StepStats:
    """Sums over one optimiser step (or an evaluation pass) on one process."""

    loss: float = 0.0  # sum of normalised micro-batch losses = this process's share of the loss
    items: float = 0.0  # loss items: supervised tokens (CE) or decider rows (BCE)
    tokens: float = 0.0  # non-padding tokens processed
    depth_sum: float = 0.0  # passes summed over supervised positions
    depth_count: float = 0.0
    hard: float = 0.0  # supervised positions labelled to iterate
    tp: float = 0.0
    fp: float = 0.0
    tn: float = 0.0
    fn: float = 0.0

    def add(self, other: StepStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def add_counts(self, counts: DeciderCounts) -> None:
        self.tp += counts.tp
        self.fp += counts.fp
        self.tn += counts.tn
        self.fn += counts.fn

    def to_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.tensor(
            [getattr(self, f.name) for f in fields(self)], dtype=torch.float64, device=device
        )

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> StepStats:
        return cls(*[float(v) for v in values.tolist()])

    def summary(self, with_decider: bool, with_depth: bool) -> dict[str, Any]:
        """Means and rates: loss, average depth, hard share, decider accuracy/precision/recall."""
        out: dict[str, Any] = {"loss": self.loss, "items": int(self.items)}
        if with_depth and self.depth_count:
            out["avg_depth"] = self.depth_sum / self.depth_count
            out["hard_ratio"] = self.hard / self.depth_count
        if with_decider:
            counts = DeciderCounts(int(self.tp), int(self.fp), int(self.tn), int(self.fn))
            out.update(counts.rates())
        return out


def reduce_stats(stats: StepStats, accelerator: Any) -> StepStats:
    """Sum a process's stats over all processes (one collective call)."""
    if accelerator is None or accelerator.num_processes == 1:
        return stats
    total = accelerator.reduce(stats.to_tensor(accelerator.device), reduction="sum")
    return StepStats.from_tensor(total.cpu())


class JsonlLog:
    """Append-only JSON Lines log of training events (main process only)."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._handle = None

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (a resumed run continues from there)."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if int(rec.get("step", 0)) <= step:
                kept.append(line)
        with atomic_file(self.path, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{line}\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._handle.write(json.dumps(_clean(record)) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


_TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def check_trackers(report_to: list[str]) -> list[str]:
    """Refuse trackers whose package is missing, before any compute."""
    for name in report_to:
        modules = _TRACKER_MODULES[name]
        if not any(importlib.util.find_spec(m) for m in modules):
            raise ConfigError(
                f"output.report_to asks for {name!r} but {' / '.join(modules)} is not installed; "
                f"`pip install {modules[0]}` or remove it from output.report_to"
            )
    return list(report_to)
