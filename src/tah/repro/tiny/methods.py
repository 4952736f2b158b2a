"""The rows of the tiny reproduction's table and where each row's model lives in a run folder.

This is the piece shared by the job graph (:mod:`tah.repro.tiny.graph`), the report
(:mod:`tah.repro.tiny.report`) and the export (:mod:`tah.repro.export`); it sits one layer below
them so that none of them imports another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "COMPARISONS",
    "DATASET",
    "METHODS",
    "ROUTING_ROWS",
    "Method",
    "method_by_key",
    "model_dir",
]

DATASET = "synthetic"  # tah eval names a results dataset after the folder of test.jsonl


@dataclass(frozen=True)
class Method:
    """One row of the table: which checkpoint, evaluated how."""

    key: str
    label: str
    final_job: str  # the job whose output is the evaluated model
    description: str


METHODS: tuple[Method, ...] = (
    Method("standard", "Standard", "standard", "base, fine-tuned (one pass)"),
    Method(
        "standard_wide",
        "Standard-wide",
        "standard_wide",
        "base with a wider MLP (>= TaH+'s parameters), fine-tuned (one pass)",
    ),
    Method(
        "alwaysthink",
        "AlwaysThink",
        "alwaysthink",
        "pruned base + LoRA, every token (prompt included) 2 passes",
    ),
    Method(
        "alwaysthink_plus",
        "AlwaysThink+",
        "alwaysthink_plus",
        "base + LoRA (unpruned), every token (prompt included) 2 passes",
    ),
    Method("tah", "TaH", "tah_stage2", "pruned base + LoRA + decider (parameter-matched)"),
    Method("tahplus", "TaH+", "tahplus_stage2", "base + LoRA + decider"),
)

# Answer accuracy of the TaH models under other routing (same weights, same test problems):
# key -> (label, model key, how)
ROUTING_ROWS: dict[str, tuple[str, str, str]] = {
    "tah_oracle": ("TaH, oracle routing", "tah", "oracle"),
    "tah_depth1": ("TaH, depth 1 only", "tah", "depth1"),
    "tahplus_oracle": ("TaH+, oracle routing", "tahplus", "oracle"),
    "tahplus_depth1": ("TaH+, depth 1 only", "tahplus", "depth1"),
    "tahplus_val": ("TaH+, decider and τ chosen on validation", "tahplus", "validation"),
}

# The pre-registered paired comparisons (first vs second), in the order they are reported.
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("tahplus", "standard"),
    ("tahplus", "standard_wide"),
    ("tahplus", "alwaysthink_plus"),
    ("tah", "standard"),
    ("tah", "alwaysthink"),
    ("tahplus_val", "standard"),
)


def method_by_key(key: str) -> Method:
    for method in METHODS:
        if method.key == key:
            return method
    raise KeyError(key)


def model_dir(out: Path, seed: int, method: Method) -> Path:
    return Path(out) / f"seed{seed}" / method.final_job / "final"
