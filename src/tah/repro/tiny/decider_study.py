"""How good is the learned decider, and can another decider do better? (validation data only)

* :data:`VARIANTS` are the other stage-2 deciders the reproduction trains on the same TaH+
  stage-1 model (same rows, steps and lr as the default decider): the reference's fixed
  ``pos_weight`` 5.4 instead of "auto" (negatives / positives), training only on response
  tokens, and a wider / deeper MLP.
* :func:`decider_scores` reads held-out labelled solutions teacher-forced and scores the
  depth-1 "continue" probability against the labels: precision and recall at τ, and the AUC
  (threshold-free: the probability that a random hard token scores above a random easy one).
* :func:`select_on_validation` applies the pre-registered rule: among every decider and every
  τ of the sweep, the highest *validation* answer accuracy (ties: the default decider, then the
  larger τ). The test problems are never read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_VARIANT",
    "VARIANTS",
    "auc",
    "decider_scores",
    "evaluate_selected",
    "select_on_validation",
]

DEFAULT_VARIANT = "default"

# name -> (what it changes, recipe overrides: {"loss": {...}, "tah": {...}})
VARIANTS: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {
    "pos_weight_5.4": (
        "BCE pos_weight fixed at 5.4 (the reference's)",
        {"loss": {"pos_weight": 5.4}},
    ),
    "response_only": (
        "trained on response tokens only (prompt tokens not used as negatives)",
        {"loss": {"decider_targets": "response"}},
    ),
    "wider": (
        "capacity: MLP hidden dims [128, 128, 128], expansion 4",
        {"tah": {"decider_hidden_dims": [128, 128, 128], "decider_expansion": 4}},
    ),
    "previous_token": (
        "also reads the previous token's depth-1 features (our extension; the paper's reads one)",
        {"tah": {"decider_previous_token": True}},
    ),
}


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties counted half."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def decider_scores(
    model_path: str | os.PathLike,
    labels_dir: str | os.PathLike,
    *,
    threshold: float | None = None,
    batch_size: int = 32,
    limit: int | None = None,
) -> dict[str, Any]:
    """Precision, recall and AUC of a TaH checkpoint's decider on labelled held-out solutions.

    Scored tokens are the supervised (response) positions; a position is positive when the
    labeller mispredicted its next token (the stage-1 oracle iterates exactly these).
    """
    import torch

    from tah.model.loading import load_model
    from tah.repro.tiny.token_accuracy import labelled_batches

    model = load_model(model_path, threshold=threshold)
    model.eval()
    tau = float(model.config.threshold)
    probs: list[np.ndarray] = []
    hard: list[np.ndarray] = []
    with torch.inference_mode():
        for chunk, seqs, ids, attn in labelled_batches(model, labels_dir, limit, batch_size):
            out = model(ids, attention_mask=attn)
            logits = out.decider_logits[..., 0].float()
            for b, s in enumerate(seqs):
                n = len(s)
                mask = np.asarray(chunk["mask"][b])[: n - 1] == 1
                p = torch.sigmoid(logits[b, : n - 1]).numpy()[mask]
                probs.append(p)
                hard.append(np.asarray(chunk["mismatch"][b])[: n - 1][mask] >= 1)
    p = np.concatenate(probs) if probs else np.zeros(0)
    y = np.concatenate(hard) if hard else np.zeros(0, dtype=bool)
    go = p > tau
    tp = int((go & y).sum())
    return {
        "model": str(model_path),
        "labels": str(labels_dir),
        "threshold": tau,
        "tokens": int(len(y)),
        "hard": int(y.sum()),
        "base_rate": float(y.mean()) if len(y) else float("nan"),
        "predicted_share": float(go.mean()) if len(y) else float("nan"),
        "precision": tp / int(go.sum()) if go.any() else float("nan"),
        "recall": tp / int(y.sum()) if y.any() else float("nan"),
        "auc": auc(p, y),
    }


def scores_to_json(model_path: str, labels_dir: str, output: str, **kwargs: Any) -> dict:
    """:func:`decider_scores` written atomically as JSON (a reproduction step)."""
    from tah.io import write_json

    record = decider_scores(model_path, labels_dir, **kwargs)
    write_json(output, record)
    return record


def select_on_validation(sweeps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The pre-registered choice: ``sweeps`` maps a decider name to its ``tah sweep`` JSON on
    the validation problems. Highest mean accuracy wins; ties go to the default decider, then
    to the larger τ (fewer tokens iterating)."""
    best: tuple[float, int, float] | None = None
    choice: dict[str, Any] = {}
    for name, sweep in sweeps.items():
        for point in sweep.get("points", []):
            acc = point.get("mean_accuracy")
            if acc is None:
                continue
            key = (float(acc), int(name == DEFAULT_VARIANT), float(point["tau"]))
            if best is None or key > best:
                best = key
                choice = {
                    "decider": name,
                    "tau": float(point["tau"]),
                    "validation_accuracy": float(acc),
                    "validation_iter_share": point.get("mean_iter_share"),
                }
    if not choice:
        from tah.errors import TaHError

        raise TaHError("no validation sweep has an accuracy to select from")
    return choice


def evaluate_selected(
    models: dict[str, str],
    sweep_files: dict[str, str],
    output: str,
    eval_args: list[str],
    command: Callable[[list[str]], int],
) -> dict[str, Any]:
    """Select a decider and τ on validation (:func:`select_on_validation`), then run ``tah eval``
    with them on the test problems into ``output`` (a reproduction step); ``command`` is the
    ``tah`` entry point (passed in: nothing below the CLI imports it)."""
    from tah.errors import TaHError
    from tah.io import write_json

    sweeps = {
        name: json.loads(Path(path).read_text(encoding="utf-8"))
        for name, path in sweep_files.items()
    }
    choice = select_on_validation(sweeps)
    choice["model"] = models[choice["decider"]]
    out = Path(output)
    argv = [
        "eval",
        "--model",
        choice["model"],
        "--threshold",
        f"{choice['tau']:g}",
        "--output",
        str(out),
        *eval_args,
    ]
    if command is None:
        raise TaHError("evaluate_selected needs the tah command to run 'tah eval'")
    if command(argv) != 0:
        raise TaHError(f"tah {' '.join(argv)} failed")
    write_json(out / "selection.json", choice)
    return choice
