"""The tiny study's data: task records, tokenizer, and the training rows every method shares.

Written once per run folder (all seeds share the problems); the labelled rows are per seed,
since each seed's labeller differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tah.io import write_json
from tah.repro.tiny.config import ReproConfig
from tah.repro.tiny.methods import DATASET

__all__ = ["prepare_data", "write_labelled_rows"]


def _write_plain_rows(tokenizer: Any, records_path: Path, output: Path) -> int:
    """Unlabelled training rows (the assistant span supervised, nothing marked hard)."""
    from tah.data.encoding import encode_records
    from tah.data.records import load_records
    from tah.io import atomic_file

    records = load_records(str(records_path)).records
    rows = encode_records(tokenizer, records, think_token=None)
    with atomic_file(output, "w", encoding="utf-8") as handle:
        for r in rows:
            n = len(r.input_ids)
            mask = [0] * r.span_start + [1] * (n - r.span_start)
            handle.write(
                json.dumps(
                    {
                        "data_id": r.data_id,
                        "input_ids": r.input_ids.tolist(),
                        "mask": mask,
                        "mismatch": [0] * n,
                    }
                )
                + "\n"
            )
    return len(rows)


def prepare_data(config: ReproConfig, out: Path) -> dict[str, Any]:
    """Task records, tokenizer and unlabelled rows (once for all seeds; skipped when present).

    The pretraining, fine-tuning, validation and test splits never share a problem.
    """
    from tah.data.synthetic import generate_splits, write_jsonl
    from tah.data.tokenizer import build_task_tokenizer, load_tokenizer, save_tokenizer

    data = out / DATASET
    marker = data / "data.json"
    if marker.is_file():
        return json.loads(marker.read_text(encoding="utf-8"))
    n_pre = config.pretrain_steps * config.batch_size  # one epoch of fresh problems
    n_pre = min(max(n_pre, config.n_train), 4 * config.n_train)
    n_ft = config.n_train
    splits = generate_splits(
        n_pre + n_ft + config.n_val, config.n_test, config.data_seed, list(config.difficulty)
    )
    pool = splits["train"]
    pretrain, train, val = pool[:n_pre], pool[n_pre : n_pre + n_ft], pool[n_pre + n_ft :]
    write_jsonl(pretrain, data / "pretrain.jsonl")
    write_jsonl(train, data / "train.jsonl")
    write_jsonl(val, data / "validation.jsonl")
    write_jsonl(train[: config.n_calib], data / "calib.jsonl")
    write_jsonl(splits["test"], data / "test.jsonl")
    save_tokenizer(build_task_tokenizer(seed=config.data_seed), out / "tokenizer")
    tokenizer = load_tokenizer(out / "tokenizer")
    _write_plain_rows(tokenizer, data / "pretrain.jsonl", data / "pretrain_rows.jsonl")
    _write_plain_rows(tokenizer, data / "train.jsonl", data / "ft_rows.jsonl")
    info = {
        "pretrain": len(pretrain),
        "train": len(train),
        "validation": len(val),
        "test": len(splits["test"]),
        "calib": config.n_calib,
        "vocab_size": len(tokenizer),
        "difficulty": list(config.difficulty),
    }
    write_json(marker, info)
    return info


def write_labelled_rows(labels_dir: str, plain_rows: str, output: str) -> dict[str, Any]:
    """The fine-tuning rows in Standard's order, carrying the labeller's hard-token marks.

    TaH must train on exactly Standard's rows and order, so the labelled rows are matched to
    the unlabelled ones by ``data_id`` and their token ids and supervision masks are checked
    identical; anything else is an error, not a silent difference between methods.
    """
    from tah.data.label_features import load_labels
    from tah.errors import DataError
    from tah.io import atomic_file

    table, _ = load_labels(labels_dir)
    labelled = {str(r["data_id"]): r for r in table}
    hard = supervised = 0
    count = 0
    with atomic_file(output, "w", encoding="utf-8") as handle:
        with open(plain_rows, encoding="utf-8") as source:
            for line in source:
                plain = json.loads(line)
                row = labelled.get(str(plain["data_id"]))
                if row is None:
                    raise DataError(f"{labels_dir} has no label for row {plain['data_id']}")
                if (
                    list(row["input_ids"]) != plain["input_ids"]
                    or list(row["mask"]) != plain["mask"]
                ):
                    raise DataError(
                        f"row {plain['data_id']}: the labelled tokens differ from the "
                        f"fine-tuning rows in {plain_rows}"
                    )
                mismatch = [int(v) for v in row["mismatch"]]
                hard += sum(1 for m, v in zip(plain["mask"], mismatch) if m == 1 and v >= 1)
                supervised += sum(plain["mask"])
                handle.write(json.dumps({**plain, "mismatch": mismatch}) + "\n")
                count += 1
    return {"rows": count, "hard": hard, "supervised": supervised}
