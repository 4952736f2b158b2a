"""Labelled rows → training features (docs/method.md §8): a finished `tah label` directory opened as one
memory-mapped ``datasets.Dataset``, and per-token targets and iteration labels built from it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tah.data.encoding import LENGTH_ACTIONS
from tah.data.labeling import LABELS_FORMAT, METADATA_FILE, SHARDS_DIR, STRATEGIES
from tah.data.reference import check_label_tokenizer
from tah.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def load_labels(path: str | os.PathLike, *, tokenizer: Any = None) -> tuple[Any, dict[str, Any]]:
    """Open a finished ``tah label`` directory as one memory-mapped ``datasets.Dataset``.

    With ``tokenizer`` the labels' tokenizer fingerprint must match (:class:`DataError`
    otherwise). Incomplete runs and empty results are refused with a message saying what to do.
    """
    import datasets

    out = Path(path)
    meta_path = out / METADATA_FILE
    if not meta_path.is_file():
        raise DataError(
            f"{out} is not a tah labels directory (no {METADATA_FILE}); run `tah label`"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{meta_path} is damaged ({exc}); rerun `tah label` with --overwrite to relabel"
        ) from None
    if meta.get("format") != LABELS_FORMAT:
        raise DataError(f"{meta_path}: unknown labels format {meta.get('format')!r}")
    n_shards = int(meta["plan"]["shards"])
    dirs = [out / SHARDS_DIR / f"shard-{k:05d}" for k in range(n_shards)]
    missing = sum(not d.is_dir() for d in dirs)
    if not meta.get("complete") or missing:
        raise DataError(
            f"labelling in {out} is incomplete ({n_shards - missing} of {n_shards} shards); rerun "
            "the same `tah label` command to resume"
        )
    if tokenizer is not None:
        check_label_tokenizer(meta, tokenizer)
    parts = [_load_shard(d) for d in dirs]
    data = datasets.concatenate_datasets(parts) if parts else None
    if data is None or len(data) == 0:
        raise DataError(f"{out} holds no labelled samples")
    return data, meta


def _load_shard(directory: Path) -> Any:
    """One finished shard; a damaged one (truncated file, deleted piece) is named with the fix."""
    import datasets

    try:
        shard = datasets.load_from_disk(str(directory))
        len(shard)
        return shard
    except Exception as exc:  # pyarrow and datasets raise many types for a damaged file
        raise DataError(
            f"label shard {directory} is damaged ({type(exc).__name__}: {exc}); delete that "
            "folder and rerun the same `tah label` command: it relabels only the missing shard"
        ) from None


def _check_strategy(max_iter: int, strategy: str, query_iter: int) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"iteration-label strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not 1 <= query_iter <= max_iter:
        raise ConfigError(f"query_iter must be in [1, max_iter={max_iter}], got {query_iter!r}")


def build_features(
    row: Mapping[str, Any],
    *,
    max_iter: int = 2,
    strategy: str = "mismatch",
    seed: int = 0,
    query_iter: int = 1,
    max_length: int | None = None,
) -> dict[str, list[int]]:
    """Turn one labelled row into ``input_ids``, ``attention_mask``, ``labels``, ``iter_labels``.

    ``labels`` are the ids with -100 where mask == 0 (unshifted; the loss shifts).
    ``iter_labels`` (docs/method.md §8) is the oracle depth per position: ``query_iter`` on prompt
    positions, 1 on easy supervised tokens; hard supervised tokens (mask & mismatch) get 2 when
    ``max_iter`` is 2 and a uniform integer in [2, max_iter] for deeper models, drawn from a
    generator seeded by (seed, data_id) so a row always gets the same depths. A mismatch value
    v > 1 is read as "v extra iterations" (depth v + 1). Strategy ``all`` gives every
    supervised token depth ``max_iter`` (the AlwaysThink baseline). ``max_iter`` 1 gives all 1.
    """
    _check_strategy(max_iter, strategy, query_iter)
    ids = np.asarray(row["input_ids"], dtype=np.int64)[:max_length]
    mask = np.asarray(row["mask"], dtype=np.int64)[:max_length]
    mismatch = np.asarray(row["mismatch"], dtype=np.int64)[:max_length]
    if not (len(ids) == len(mask) == len(mismatch)):
        raise DataError(f"row {row.get('data_id')}: input_ids, mask and mismatch lengths differ")
    labels = np.where(mask == 1, ids, -100)
    depth = np.where(mask == 1, 1, query_iter)
    if max_iter > 1:
        supervised = mask == 1
        if strategy == "all":
            depth[supervised] = max_iter
        else:
            hard = supervised & (mismatch >= 1)
            if int(mismatch.max(initial=0)) > 1:
                extra = mismatch[hard] + 1
                if int(extra.max()) > max_iter:
                    raise DataError(
                        f"row {row.get('data_id')}: mismatch holds {int(extra.max()) - 1} extra "
                        f"iterations but max_iter is {max_iter}"
                    )
                depth[hard] = np.where(mismatch[hard] > 1, extra, 2)
            elif max_iter == 2:
                depth[hard] = 2
            else:
                rng = np.random.default_rng([int(seed), int(row.get("data_id", 0))])
                depth[hard] = rng.integers(2, max_iter + 1, size=int(hard.sum()))
    return {
        "input_ids": ids.tolist(),
        "attention_mask": [1] * len(ids),
        "labels": labels.tolist(),
        "iter_labels": depth.tolist(),
    }


def row_verdict(
    mask: Any, mismatch: Any, max_length: int, length_action: str, require_hard: bool
) -> str:
    """Whether a labelled row trains: "keep", "long" (longer than ``max_length`` with
    ``length_action="drop"``) or "empty" (within ``max_length``, no supervised token; with
    ``require_hard``, no supervised hard token either: such a row teaches the deeper passes
    nothing). The one row filter of training, for label directories and JSONL rows alike."""
    if length_action not in LENGTH_ACTIONS:
        raise ConfigError(f"length_action must be one of {LENGTH_ACTIONS}, got {length_action!r}")
    if len(mask) > max_length:
        if length_action == "drop":
            return "long"
        mask, mismatch = mask[:max_length], mismatch[:max_length]
    supervised = np.asarray(mask) == 1
    if not supervised.any():
        return "empty"
    if require_hard and not (supervised & (np.asarray(mismatch) >= 1)).any():
        return "empty"
    return "keep"
