"""Training examples from labelled data, with every input check done before compute starts.

The labelled format and the row -> features rule (docs/method.md §8) belong to
:mod:`tah.data.labeling`; this module adds what training needs on top:

* a second input format, JSON Lines of labelled rows (``input_ids``, ``mask``, ``mismatch``,
  optional ``data_id``), read line by line so a malformed line is reported as ``file:line``
  (or skipped and counted with ``on_bad_line: skip``);
* the *same rows for every stage*: rows are always selected by the mismatch rule (keep rows with
  a supervised hard token), and only then turned into features with the stage's strategy, so the
  Standard and AlwaysThink baselines train on exactly the TaH data;
* checks that fail fast with a clear message: empty data, token ids outside the model's
  vocabulary, labels made with another tokenizer;
* data statistics for stage 2's ``pos_weight: auto`` (negatives / positives).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tah.data.label_features import row_verdict
from tah.data.records import jsonl_rows
from tah.errors import DataError

log = logging.getLogger(__name__)

_ACTIONS = {"cutoff": "truncate", "filter": "drop"}
_PROBLEMS_KEPT = 10


@dataclass
class TrainingData:
    """Indexable labelled rows plus how to turn them into training examples."""

    source: str
    rows: Any  # a datasets.Dataset (raw columns) or a list of dicts
    max_iter: int
    strategy: str
    max_length: int
    seed: int
    metadata: dict[str, Any] | None = None
    skipped_lines: int = 0
    problems: list[str] = field(default_factory=list)
    dropped_long: int = 0
    dropped_no_target: int = 0
    query_iter: int = 1  # passes of prompt tokens (docs/method.md §8 query_iter_count)

    def __len__(self) -> int:
        return len(self.rows)

    def examples(self, indices: list[int]) -> list[dict[str, list[int]]]:
        """Training examples (``input_ids``, ``labels``, ``iter_labels``) of the given rows."""
        from tah.data.label_features import build_features

        if isinstance(self.rows, list):
            raw = [self.rows[i] for i in indices]
        else:
            batch = self.rows[indices]
            raw = [dict(zip(batch, values)) for values in zip(*batch.values())]
        return [
            build_features(
                r,
                max_iter=self.max_iter,
                strategy=self.strategy,
                seed=self.seed,
                query_iter=self.query_iter,
                max_length=self.max_length,
            )
            for r in raw
        ]

    def decider_balance(self, targets: str) -> tuple[int, int]:
        """(positives, negatives) of "continue after depth 1" over the decider's training rows.

        ``targets="all"``: every position (prompt positions are negatives); ``"response"``:
        supervised positions only. Mirrors :func:`tah.training.losses.decider_targets_mask`.
        """
        pos = total = 0
        for mask, mismatch in self._mask_columns():
            mask, mismatch = mask[: self.max_length], mismatch[: self.max_length]
            pos += int(((mask == 1) & (mismatch >= 1)).sum())
            total += int(len(mask) if targets == "all" else (mask == 1).sum())
        return pos, total - pos

    def max_token_id(self) -> int:
        top = -1
        for ids in self._column("input_ids"):
            if len(ids):
                top = max(top, int(np.max(ids)))
        return top

    def _mask_columns(self):
        return zip(self._column("mask"), self._column("mismatch"))

    def _column(self, name: str):
        if isinstance(self.rows, list):
            return (np.asarray(r[name]) for r in self.rows)
        table = self.rows.with_format("numpy", columns=[name])
        return (
            row for start in range(0, len(table), 1024) for row in table[start : start + 1024][name]
        )


def load_training_data(
    path: str | os.PathLike,
    *,
    max_iter: int,
    strategy: str,
    max_length: int,
    max_length_action: str = "cutoff",
    on_bad_line: str = "error",
    require_hard: bool = True,
    max_examples: int | None = None,
    seed: int = 0,
    tokenizer: Any = None,
    vocab_size: int | None = None,
    query_iter: int = 1,
) -> TrainingData:
    """Open labelled data (a ``tah label`` directory or a JSONL file) for training.

    Raises :class:`DataError` for: a missing path, malformed lines (with ``on_bad_line=error``),
    labels made with a tokenizer other than ``tokenizer``, token ids >= ``vocab_size``, and an
    empty result after filtering.
    """
    path = Path(path)
    if path.is_dir():
        data = _from_labels_dir(path, tokenizer, max_length, max_length_action, require_hard)
    elif path.is_file():
        data = _from_jsonl(path, max_length, max_length_action, on_bad_line, require_hard)
    else:
        raise DataError(
            f"training data {path} does not exist; give a `tah label` output directory or a "
            "JSONL file of labelled rows (input_ids, mask, mismatch)"
        )
    data.max_iter, data.strategy, data.max_length, data.seed = max_iter, strategy, max_length, seed
    data.query_iter = min(query_iter, max_iter)
    if max_examples is not None and len(data) > max_examples:
        data.rows = (
            data.rows[:max_examples]
            if isinstance(data.rows, list)
            else data.rows.select(range(max_examples))
        )
    if len(data) == 0:
        raise DataError(
            f"{path}: no training rows left ({data.dropped_long} longer than max_length "
            f"{max_length} dropped, {data.dropped_no_target} without a supervised hard token, "
            f"{data.skipped_lines} malformed lines skipped)"
        )
    if vocab_size is not None:
        top = data.max_token_id()
        if top >= vocab_size:
            raise DataError(
                f"{path} holds token id {top} but the model's vocabulary has {vocab_size} rows; "
                "the labels were made for another model/tokenizer: relabel with `tah label` "
                "using this model's tokenizer"
            )
    return data


def _from_labels_dir(
    path: Path, tokenizer: Any, max_length: int, action: str, require_hard: bool
) -> TrainingData:
    from tah.data.label_features import load_labels

    table, meta = load_labels(path, tokenizer=tokenizer)
    if tokenizer is None and meta.get("tokenizer"):
        log.warning(
            "%s: no tokenizer for the model, so the labels' tokenizer (%s) cannot be checked; "
            "only token ids are range-checked",
            path,
            meta["tokenizer"].get("name_or_path"),
        )
    keep, long_, none_ = [], 0, 0
    cols = table.with_format("numpy", columns=["mask", "mismatch"])
    for start in range(0, len(cols), 1024):
        chunk = cols[start : start + 1024]
        for j, (mask, mismatch) in enumerate(zip(chunk["mask"], chunk["mismatch"])):
            verdict = row_verdict(mask, mismatch, max_length, _ACTIONS[action], require_hard)
            long_ += verdict == "long"
            none_ += verdict == "empty"
            if verdict == "keep":
                keep.append(start + j)
    rows = table.select(keep) if len(keep) != len(table) else table
    return TrainingData(
        str(path), rows, 0, "", max_length, 0, meta, dropped_long=long_, dropped_no_target=none_
    )


def _from_jsonl(
    path: Path, max_length: int, action: str, on_bad_line: str, require_hard: bool
) -> TrainingData:
    rows: list[dict[str, Any]] = []
    skipped, problems, long_, none_ = 0, [], 0, 0
    for origin, obj, error in jsonl_rows(path):
        try:
            if error is not None:
                raise DataError(error)
            row = _parse_row(obj, origin, len(rows))
        except DataError as exc:
            if on_bad_line == "error":
                raise DataError(
                    f"{exc} (set data.on_bad_line: skip to skip and count bad lines)"
                ) from None
            skipped += 1
            if len(problems) < _PROBLEMS_KEPT:
                problems.append(str(exc))
            continue
        verdict = row_verdict(
            row["mask"], row["mismatch"], max_length, _ACTIONS[action], require_hard
        )
        long_ += verdict == "long"
        none_ += verdict == "empty"
        if verdict == "keep":
            rows.append(row)
    if skipped:
        log.warning("%s: skipped %d malformed lines, e.g. %s", path, skipped, problems[0])
    return TrainingData(
        str(path), rows, 0, "", max_length, 0, None, skipped, problems, long_, none_
    )


def _parse_row(obj: Any, origin: str, index: int) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{origin}: expected a JSON object, got {type(obj).__name__}")
    arrays = {}
    for key in ("input_ids", "mask", "mismatch"):
        value = obj.get(key)
        if not isinstance(value, list) or not value:
            raise DataError(f"{origin}: {key!r} must be a non-empty list of integers")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise DataError(f"{origin}: {key!r} must hold integers only")
        arrays[key] = np.asarray(value, dtype=np.int64)
    if not len(arrays["input_ids"]) == len(arrays["mask"]) == len(arrays["mismatch"]):
        raise DataError(
            f"{origin}: input_ids, mask and mismatch have different lengths "
            f"({len(arrays['input_ids'])}, {len(arrays['mask'])}, {len(arrays['mismatch'])})"
        )
    if int(arrays["input_ids"].min()) < 0:
        raise DataError(f"{origin}: negative token id in input_ids")
    if not set(np.unique(arrays["mask"]).tolist()) <= {0, 1}:
        raise DataError(f"{origin}: mask must hold only 0 and 1")
    if int(arrays["mismatch"].min()) < 0:
        raise DataError(f"{origin}: mismatch must be >= 0")
    data_id = obj.get("data_id", index)
    if not isinstance(data_id, int) or isinstance(data_id, bool):
        raise DataError(f"{origin}: data_id must be an integer")
    return {"data_id": data_id, **arrays}
