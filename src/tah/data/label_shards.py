"""The labels directory on disk: its layout, its Arrow shards and how a run starts or resumes.

This module holds the storage side of ``tah label``: the names of the metadata file, the shard
folder and each shard's statistics file; the Arrow features of a labelled row; the atomic
writing of one finished shard (so a shard folder that exists is complete); and the start of a
run in its output folder, which keeps the finished shards of the same plan, refuses (or with
``--overwrite`` replaces) the labels of another plan, and removes the temporary folders a killed
run left behind. What gets labelled, and how, lives in ``labeling.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from tah.errors import DataError
from tah.io import atomic_dir, write_json

LABELS_FORMAT = "tah-labels/1"
METADATA_FILE = "tah_labels.json"
SHARDS_DIR = "shards"
SHARD_STATS_FILE = "shard_stats.json"


def shard_features(entropy: bool) -> Any:
    from datasets import Features, List, Value

    spec = {
        "data_id": Value("int64"),
        "record_id": Value("string"),
        "input_ids": List(Value("int32")),
        "mask": List(Value("int8")),
        "mismatch": List(Value("int8")),
    }
    if entropy:
        spec["entropy"] = List(Value("float32"))
    return Features(spec)


def write_shard(target: Path, cols: dict[str, list], stats: dict[str, int], entropy: bool) -> None:
    import datasets
    from datasets import Dataset

    data = {
        k: [np.asarray(v).tolist() for v in vs] if k not in ("data_id", "record_id") else vs
        for k, vs in cols.items()
    }
    ds = Dataset.from_dict(data, features=shard_features(entropy))
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with atomic_dir(target) as tmp:
            ds.save_to_disk(str(tmp))
            write_json(tmp / SHARD_STATS_FILE, stats)
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def prepare_output(out: Path, meta: dict[str, Any], overwrite: bool) -> None:
    """Start or resume: same plan → keep finished shards; another plan → refuse or replace."""
    meta_path = out / METADATA_FILE
    if meta_path.is_file():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        if old.get("plan", {}).get("fingerprint") != meta["plan"]["fingerprint"]:
            if not overwrite:
                raise DataError(
                    f"{out} holds labels from a different run (other data, tokenizer, model or "
                    "settings); pass --overwrite to replace them or choose another --output"
                )
            shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)
            write_json(meta_path, meta)
    elif out.exists() and any(out.iterdir()):
        raise DataError(f"{out} exists, is not empty and is not a tah labels directory")
    else:
        write_json(meta_path, meta)
    # temporary shard dirs left by a killed run (atomic_dir names them .shard-*.tmp-*)
    for stale in (out / SHARDS_DIR).glob(".shard-*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
