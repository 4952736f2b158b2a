"""Teacher-forced next-token accuracy on hard and easy tokens of held-out labelled data.

Answer accuracy on a few hundred problems is a coarse, noisy signal at tiny scale (one wrong
digit fails a whole problem). The paper's mechanism acts per token, so the reproduction also
measures it per token: held-out solutions are labelled by the same reference model as the
training data (``tah label``), every model reads them teacher-forced *through the TaH forward*
with its own routing (the MLP decider for TaH, every token for AlwaysThink, one pass for
Standard), and its argmax is compared with the gold next token, separately on tokens the
reference got wrong ("hard") and right ("easy"). The same pass also records how often the
model's decider iterates hard and easy tokens, i.e. how well it imitates the oracle.

Nothing in transformers or our evaluation runner does this (they generate; this scores fixed
text), and it is ~100 lines, so it lives here.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["TokenAccuracy", "count_hard_easy", "score_to_json", "token_accuracy"]


@dataclass
class TokenAccuracy:
    """Counts behind the per-token metrics; ratios are properties so results can be summed."""

    hard: int = 0
    easy: int = 0
    hard_correct: int = 0
    easy_correct: int = 0
    hard_iterated: int = 0
    easy_iterated: int = 0
    depth_sum: int = 0

    @property
    def hard_acc(self) -> float:
        return self.hard_correct / self.hard if self.hard else float("nan")

    @property
    def easy_acc(self) -> float:
        return self.easy_correct / self.easy if self.easy else float("nan")

    @property
    def all_acc(self) -> float:
        n = self.hard + self.easy
        return (self.hard_correct + self.easy_correct) / n if n else float("nan")

    @property
    def hard_iter_share(self) -> float:
        """Recall of the oracle: share of hard tokens the model's own routing iterated."""
        return self.hard_iterated / self.hard if self.hard else float("nan")

    @property
    def easy_iter_share(self) -> float:
        """Share of easy tokens iterated anyway (wasted, or "overthinking", passes)."""
        return self.easy_iterated / self.easy if self.easy else float("nan")

    @property
    def avg_depth(self) -> float:
        n = self.hard + self.easy
        return self.depth_sum / n if n else float("nan")

    def add(self, other: TokenAccuracy) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "hard_acc": self.hard_acc,
            "easy_acc": self.easy_acc,
            "all_acc": self.all_acc,
            "hard_iter_share": self.hard_iter_share,
            "easy_iter_share": self.easy_iter_share,
            "avg_depth": self.avg_depth,
        }


def count_hard_easy(
    input_ids: np.ndarray,
    mask: np.ndarray,
    mismatch: np.ndarray,
    pred: np.ndarray,
    iters: np.ndarray,
) -> TokenAccuracy:
    """Score one sequence. Position i predicts token i + 1; it counts when ``mask[i]`` is 1 and
    a next token exists, and it is hard when ``mismatch[i]`` is 1 (the labels' alignment)."""
    n = len(input_ids)
    scored = np.zeros(n, dtype=bool)
    scored[: n - 1] = mask[: n - 1] == 1
    correct = np.zeros(n, dtype=bool)
    correct[: n - 1] = pred[: n - 1] == input_ids[1:]
    hard = scored & (mismatch >= 1)
    easy = scored & (mismatch == 0)
    deep = iters > 1
    return TokenAccuracy(
        hard=int(hard.sum()),
        easy=int(easy.sum()),
        hard_correct=int((hard & correct).sum()),
        easy_correct=int((easy & correct).sum()),
        hard_iterated=int((hard & deep).sum()),
        easy_iterated=int((easy & deep).sum()),
        depth_sum=int(iters[scored].sum()),
    )


def labelled_batches(model, labels_dir, limit: int | None, batch_size: int):
    """Batches of a ``tah label`` directory for ``model``: (rows, sequences, ids, attention mask),
    right-padded; the first ``limit`` rows (all when None)."""
    import torch

    from tah.data.label_features import load_labels

    table, _ = load_labels(labels_dir, tokenizer=model.tokenizer)
    rows = table.with_format("numpy", columns=["input_ids", "mask", "mismatch"])
    total = len(rows) if limit is None else min(limit, len(rows))
    for start in range(0, total, batch_size):
        chunk = rows[start : min(total, start + batch_size)]
        seqs = [np.asarray(s, dtype=np.int64) for s in chunk["input_ids"]]
        ids = torch.zeros((len(seqs), max(len(s) for s in seqs)), dtype=torch.long)
        attn = torch.zeros_like(ids)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.from_numpy(s)
            attn[b, : len(s)] = 1
        yield chunk, seqs, ids, attn


def token_accuracy(
    model_path: str | os.PathLike,
    labels_dir: str | os.PathLike,
    *,
    decider: str | None = None,
    threshold: float | None = None,
    batch_size: int = 32,
    limit: int | None = None,
    oracle: bool = False,
) -> TokenAccuracy:
    """Score a model (TaH checkpoint or plain HF directory) on a ``tah label`` directory.

    The model runs through :meth:`TaHForCausalLM.forward` without labels, so a TaH checkpoint
    routes with its own decider (``decider``/``threshold`` override it) and a plain model is
    wrapped with the never-continue decider, which is exactly the plain model. ``oracle=True``
    routes by the labels instead (hard tokens iterate, as in stage-1 training): the paper's
    oracle policy, an upper bound for what a decider can get out of the model.
    """
    import torch

    from tah.data.label_features import build_features
    from tah.errors import ConfigError
    from tah.model.loading import load_model

    if oracle and decider not in (None, "label"):
        raise ConfigError(f"oracle=True routes by the labels; decider={decider!r} conflicts")
    model = load_model(model_path, threshold=threshold, decider="label" if oracle else decider)
    model.eval()
    result = TokenAccuracy()
    with torch.inference_mode():
        for chunk, seqs, ids, attn in labelled_batches(model, labels_dir, limit, batch_size):
            depth = torch.full_like(ids, -100)
            for b, s in enumerate(seqs):
                if oracle:
                    row = {k: chunk[k][b] for k in ("input_ids", "mask", "mismatch")}
                    feats = build_features(row, max_iter=model.config.max_iter)
                    depth[b, : len(s)] = torch.tensor(feats["iter_labels"])
            out = model(ids, attention_mask=attn, iter_labels=depth if oracle else None)
            pred = out.logits.argmax(-1).numpy()
            iters = out.iter_counts.numpy()
            for b, s in enumerate(seqs):
                n = len(s)
                result.add(
                    count_hard_easy(
                        s,
                        np.asarray(chunk["mask"][b]),
                        np.asarray(chunk["mismatch"][b]),
                        pred[b, :n],
                        iters[b, :n],
                    )
                )
    return result


def score_to_json(
    model_path: str,
    labels_dir: str,
    output: str,
    *,
    limit: int | None = None,
    oracle: bool = False,
    decider: str | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """:func:`token_accuracy`, written atomically to ``output`` as JSON (a reproduction step)."""
    from tah.io import write_json

    result = token_accuracy(
        model_path, labels_dir, limit=limit, oracle=oracle, decider=decider, threshold=threshold
    )
    record = {
        "model": str(model_path),
        "labels": str(labels_dir),
        "oracle": oracle,
        "decider": decider,
        "threshold": threshold,
        **result.to_dict(),
    }
    write_json(output, record)
    return record
