"""Pick the decider threshold τ of a stage-2 TaH checkpoint on held-out hard-token labels.

The paper evaluates at a fixed τ = 0.9 after training the decider with a positive-class weight;
with a much smaller decider and training budget the calibration moves, so a fixed τ can make the
model iterate on almost every token or on none. Here τ is chosen on labels the decider never
saw: the decider's continue-probability after depth 1 is computed (depth 1 only, as in stage-2
training) for every supervised (response) token of a held-out ``tah label`` directory.

Criteria (``--criterion``):

* ``share`` (default): the τ at which the decider iterates on the same share of tokens as the
  oracle labels mark hard (a quantile of the probabilities). The compute cost is then the
  oracle's, and the decider's quality shows in its precision/recall, not in a shifted budget.
  This stays meaningful for a weak decider, where the next one does not.
* ``f1``: the grid τ with the best F1 against the hard labels. With an uninformative decider the
  best F1 is "iterate on everything" (F1 = 2p / (1 + p) at hard share p), so use it only with a
  well-trained decider.

Every grid τ's iterate share, precision, recall and F1 are saved with the choice.

    python recipes/smollm2_135m_gsm8k/tune_threshold.py --model runs/.../stage2/final \
        --labels runs/.../labels/heldout --output runs/.../tune/threshold.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_GRID = [round(0.05 * i, 2) for i in range(1, 20)]


def decider_scores(model: Any, labels_dir: str, max_length: int | None = None) -> tuple:
    """(continue-probabilities, hard flags) over the supervised tokens of a labels directory."""
    import torch

    from tah.data.label_features import load_labels

    data, _ = load_labels(labels_dir, tokenizer=model.tokenizer)
    probs, hard = [], []
    model.eval()
    with torch.no_grad():
        for row in data.select_columns(["input_ids", "mask", "mismatch"]).with_format("numpy"):
            ids = np.asarray(row["input_ids"])[:max_length]
            mask = np.asarray(row["mask"])[: len(ids)].astype(bool)
            mismatch = np.asarray(row["mismatch"])[: len(ids)] >= 1
            out = model(torch.as_tensor(ids, dtype=torch.long)[None], max_depth=1)
            logit = out.decider_logits[0, :, 0].float().numpy()
            keep = mask & np.isfinite(logit)
            probs.append(1.0 / (1.0 + np.exp(-logit[keep])))
            hard.append(mismatch[keep])
    return np.concatenate(probs), np.concatenate(hard)


def sweep(probs: np.ndarray, hard: np.ndarray, grid: list[float]) -> list[dict[str, float]]:
    """Iterate share, precision, recall, F1 and accuracy of "continue iff p > τ" per τ."""
    rows = []
    for tau in grid:
        pred = probs > tau
        tp = float((pred & hard).sum())
        precision = tp / pred.sum() if pred.any() else 0.0
        recall = tp / hard.sum() if hard.any() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(
            {
                "threshold": tau,
                "iterate_share": float(pred.mean()),
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "accuracy": float((pred == hard).mean()),
            }
        )
    return rows


CRITERIA = {
    "share": "iterate share = labelled hard share (held-out response tokens)",
    "f1": "max F1 of predicted vs labelled hard tokens (held-out response tokens)",
}


def choose(probs: np.ndarray, hard: np.ndarray, grid: list[float], criterion: str) -> dict:
    """The chosen threshold's metrics row (see the module docstring for the criteria)."""
    if criterion == "share":
        tau = float(np.quantile(probs, 1.0 - float(hard.mean()))) if hard.any() else 1.0
        return sweep(probs, hard, [round(min(max(tau, 0.0), 1.0), 6)])[0]
    if criterion == "f1":
        rows = sweep(probs, hard, grid)
        return max(rows, key=lambda r: (r["f1"], -abs(r["iterate_share"] - float(hard.mean()))))
    raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {criterion!r}")


def tune(
    model_dir: str,
    labels_dir: str,
    grid: list[float],
    max_length: int | None,
    criterion: str = "share",
) -> dict:
    from tah import TaHForCausalLM

    model = TaHForCausalLM.from_pretrained(model_dir)
    probs, hard = decider_scores(model, labels_dir, max_length)
    best = choose(probs, hard, grid, criterion)
    rows = sweep(probs, hard, grid)
    return {
        "threshold": best["threshold"],
        "criterion": CRITERIA[criterion],
        "model": str(model_dir),
        "labels": str(labels_dir),
        "tokens": int(hard.size),
        "hard_share": float(hard.mean()),
        "chosen": best,
        "probability_quantiles": {
            str(q): float(np.quantile(probs, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)
        },
        "sweep": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="stage-2 TaH checkpoint")
    parser.add_argument("--labels", required=True, help="held-out `tah label` directory")
    parser.add_argument("--output", required=True, help="JSON file to write")
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--criterion", choices=sorted(CRITERIA), default="share")
    parser.add_argument(
        "--grid", default=",".join(map(str, DEFAULT_GRID)), help="comma list of thresholds"
    )
    args = parser.parse_args(argv)
    from tah.errors import TaHError
    from tah.io import write_json

    try:
        grid = [float(x) for x in args.grid.split(",") if x.strip()]
        result = tune(args.model, args.labels, grid, args.max_length, args.criterion)
    except (TaHError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json(Path(args.output), result)
    c = result["chosen"]
    print(
        f"threshold {c['threshold']:.4g}: iterate share {c['iterate_share']:.1%} "
        f"(labels {result['hard_share']:.1%}), precision {c['precision']:.2f}, "
        f"recall {c['recall']:.2f}, F1 {c['f1']:.2f} over {result['tokens']} held-out tokens"
    )
    print(json.dumps({"threshold": c["threshold"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
