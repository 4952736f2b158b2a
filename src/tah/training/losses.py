"""Loss sums for the training stages, normalised by the caller over the *global* batch.

Why sums rather than ``out.loss`` (a per-forward mean): with gradient accumulation and several
processes, a mean per micro-batch weights short micro-batches too much. Like HF's
``num_items_in_batch``, we return the *sum* over a micro-batch plus its item count; the trainer
divides by the item count of the whole global step (summed over micro-batches and processes),
so the loss and its gradient do not depend on how the global batch is split.

Conventions (HF): ``labels`` are the unshifted input ids with -100 = ignore, position ``t``'s
logits predict ``labels[t + 1]``. ``iter_labels`` hold the number of passes each position should
run (1..D), -100 = ignore / padding, aligned with the predicting position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: positions whose next token is supervised (their logits enter the CE)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE
    return mask


def next_token_ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over supervised positions, in fp32, and their count.

    Only the supervised rows of ``logits`` are upcast, not the whole (B, T, V) tensor.
    """
    sel = supervised_positions(labels)
    targets = labels[:, 1:][sel[:, :-1]]
    picked = logits[sel].float()
    count = int(targets.numel())
    if count == 0:
        return logits.sum() * 0.0, 0
    return F.cross_entropy(picked, targets, reduction="sum"), count


def decider_targets_mask(
    iter_labels: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    targets: str = "all",
) -> torch.Tensor:
    """(B, T) bool: positions the decider is trained on.

    ``"all"``: every valid position with an iteration label (prompt tokens act as negatives, as
    in the reference); ``"response"``: only positions inside the supervised span
    (``labels != -100``), where hard labels can occur.
    """
    rows = (iter_labels != IGNORE) & (attention_mask != 0)
    if targets == "response":
        rows &= labels != IGNORE
    return rows


@dataclass
class DeciderCounts:
    """Confusion counts of the decider's continue decision after depth 1."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def add(self, other: DeciderCounts) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.tn += other.tn
        self.fn += other.fn

    def as_list(self) -> list[int]:
        return [self.tp, self.fp, self.tn, self.fn]

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def rates(self) -> dict[str, float | None]:
        """accuracy, precision and recall (None when undefined)."""
        total = self.total
        predicted = self.tp + self.fp
        actual = self.tp + self.fn
        return {
            "decider_accuracy": (self.tp + self.tn) / total if total else None,
            "decider_precision": self.tp / predicted if predicted else None,
            "decider_recall": self.tp / actual if actual else None,
        }


def decider_bce_sum(
    continue_logits: torch.Tensor,
    iter_labels: torch.Tensor,
    rows: torch.Tensor,
    pos_weight: float,
    threshold: float,
    depth: int = 1,
) -> tuple[torch.Tensor, int, DeciderCounts]:
    """Pos-weighted BCE-with-logits of "continue after ``depth``" summed over ``rows``.

    Target: ``iter_labels > depth``. Returns the sum, the row count and the confusion counts of
    ``sigmoid(logit) > threshold`` against the target.
    """
    logits = continue_logits[rows].float()
    target = (iter_labels[rows] > depth).float()
    count = int(target.numel())
    if count == 0:
        return continue_logits.nan_to_num().sum() * 0.0, 0, DeciderCounts()
    weight = torch.tensor(float(pos_weight), device=logits.device)
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight, reduction="sum")
    with torch.no_grad():
        pred = torch.sigmoid(logits) > threshold
        truth = target > 0.5
        counts = DeciderCounts(
            tp=int((pred & truth).sum()),
            fp=int((pred & ~truth).sum()),
            tn=int((~pred & ~truth).sum()),
            fn=int((~pred & truth).sum()),
        )
    return loss, count, counts
