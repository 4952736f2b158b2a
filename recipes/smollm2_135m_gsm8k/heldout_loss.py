"""Held-out next-token loss of each trained model, each under its own routing.

GSM8K accuracy of a 135M model trained for minutes is near zero for every method, so it cannot
tell the methods apart; the teacher-forced cross-entropy on held-out worked solutions can. For
each model this runs the held-out ``tah label`` rows once and averages the CE of the response
(supervised) tokens, with the routing the model uses at inference:

* a plain / Standard model: one pass;
* TaH+ (stage 2): the MLP decider at the tuned threshold (``--threshold``);
* TaH+ oracle: the stage-1 model routed by the held-out hard-token labels (an upper bound that
  needs the reference model, reported for comparison only);
* AlwaysThink: every token runs both depths.

    python recipes/smollm2_135m_gsm8k/heldout_loss.py --labels runs/.../labels/heldout \
        --output runs/.../heldout_loss.json --model Standard=runs/.../standard/final \
        --model "TaH+=runs/.../stage2/final@0.61" --oracle "TaH+ oracle=runs/.../stage1/final"
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any


def heldout_ce(
    model: Any,
    labels_dir: str,
    *,
    oracle: bool = False,
    threshold: float | None = None,
    max_length: int | None = None,
) -> dict[str, float]:
    """Mean response-token CE, token share with more than one pass, and tokens scored."""
    import torch
    import torch.nn.functional as F

    from tah.data.label_features import build_features, load_labels

    data, _ = load_labels(labels_dir, tokenizer=model.tokenizer)
    max_iter = model.config.max_iter
    total = count = deep = 0.0
    model.eval()
    with torch.no_grad():
        for row in data:
            feats = build_features(row, max_iter=max(max_iter, 1), max_length=max_length)
            ids = torch.tensor([feats["input_ids"]])
            labels = torch.tensor([feats["labels"]])
            kwargs: dict[str, Any] = {}
            if oracle:
                kwargs["iter_labels"] = torch.tensor([feats["iter_labels"]])
            if threshold is not None:
                kwargs["threshold"] = threshold
            out = model(ids, **kwargs)
            target = labels[0, 1:]
            keep = target != -100
            logp = F.log_softmax(out.logits[0, :-1].float(), dim=-1)
            total += float(-logp[keep].gather(-1, target[keep, None]).sum())
            count += float(keep.sum())
            deep += float((out.iter_counts[0, :-1][keep] > 1).sum())
    ce = total / count
    return {"ce": ce, "ppl": math.exp(ce), "iter_share": deep / count, "tokens": int(count)}


def _parse(spec: str) -> tuple[str, str, float | None]:
    name, _, rest = spec.partition("=")
    if not rest:
        raise ValueError(f"--model {spec!r}: expected NAME=PATH or NAME=PATH@THRESHOLD")
    path, _, tau = rest.partition("@")
    return name, path, float(tau) if tau else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", required=True, help="held-out `tah label` directory")
    parser.add_argument("--output", required=True, help="JSON file to write")
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH[@THRESHOLD]")
    parser.add_argument(
        "--oracle", action="append", default=[], help="NAME=PATH of a stage-1 model (label routing)"
    )
    parser.add_argument("--max-length", type=int, default=None)
    args = parser.parse_args(argv)

    from tah.errors import TaHError
    from tah.io import write_json
    from tah.model.loading import load_model

    results: dict[str, Any] = {}
    try:
        jobs = [(*_parse(s), False) for s in args.model] + [(*_parse(s), True) for s in args.oracle]
        for name, path, tau, oracle in jobs:
            start = time.perf_counter()
            model = load_model(path, decider="label" if oracle else None)
            results[name] = heldout_ce(
                model, args.labels, oracle=oracle, threshold=tau, max_length=args.max_length
            )
            results[name].update(model=path, threshold=tau, oracle=oracle)
            r = results[name]
            print(
                f"{name}: CE {r['ce']:.4f} (ppl {r['ppl']:.3f}), iterating {r['iter_share']:.1%} "
                f"of {r['tokens']} tokens, {time.perf_counter() - start:.0f} s",
                flush=True,
            )
    except (TaHError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_json(Path(args.output), {"labels": args.labels, "models": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
