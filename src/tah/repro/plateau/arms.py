"""The arms of the plateau study: which checkpoint each row evaluates, and which rows are compared.

One layer below the job graph and the report, so that neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ARMS", "COMPARISONS", "GATE_ARMS", "ROUTING_ROWS", "Arm", "arm_dir"]


@dataclass(frozen=True)
class Arm:
    key: str
    label: str
    job: str  # the training job whose output/final is the evaluated model
    description: str


ARMS: tuple[Arm, ...] = (
    Arm("standard", "Standard", "standard", "base, fine-tuned (one pass)"),
    Arm("standard_2x", "Standard, 2x steps", "standard_2x", "Standard with twice the steps"),
    Arm("deep", "Deep (2x layers)", "deep", "base grown to 2x layers (new ones = identity)"),
    Arm("standard_wide", "Standard-wide", "standard_wide", "wider MLP, >= TaH+'s parameters"),
    Arm("alwaysthink_plus", "AlwaysThink+", "alwaysthink_plus", "base + LoRA, every token 2x"),
    Arm("tahplus", "TaH+", "tahplus_stage2", "base + LoRA + the paper's one-token decider"),
    Arm(
        "tahplus_prev",
        "TaH+ (previous-token decider)",
        "decider_previous_token",
        "the same stage-1 weights; the decider also reads the previous token",
    ),
)

# The gate's arms: Standard-family models only, evaluated on the validation problems.
GATE_ARMS: tuple[str, ...] = ("standard", "standard_2x", "deep", "standard_wide")

# The TaH+ weights under other routing (shared by both deciders: same stage-1 weights).
ROUTING_ROWS: dict[str, str] = {
    "tahplus_oracle": "TaH+, oracle routing",
    "tahplus_depth1": "TaH+, depth 1 only",
}

# The registered paired comparisons (first vs second), McNemar per seed on the test problems.
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("tahplus", "standard"),
    ("tahplus", "deep"),
    ("tahplus", "standard_wide"),
    ("tahplus", "alwaysthink_plus"),
    ("tahplus_prev", "standard"),
    ("tahplus_prev", "tahplus"),
    ("deep", "standard"),
)


def arm_dir(out: Path, seed: int, arm: Arm) -> Path:
    return Path(out) / f"seed{seed}" / arm.job / "final"
