"""The run directory: shards written by workers, the merged samples, the lock.

Layout of a run (``--output DIR``)::

    run.json            the settings that produced the results (checked on resume)
    shards/w<j>.jsonl   one append-only file per worker, one flushed line per finished sample
    samples.jsonl       all rows of the current selection, merged and ordered (atomic)
    summary.json        per-dataset metrics (atomic)

A kill loses at most the sample in flight: every finished sample is one complete line. A line
cut in half by a kill is dropped (and trimmed before the next append), and a sample is known by
its key ``(dataset, problem_id, sample)``, so a rerun skips exactly the finished samples.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tah.errors import DataError, TaHError
from tah.io import atomic_file

Key = tuple[str, str, int]


def row_key(row: dict[str, Any]) -> Key:
    return (str(row["dataset"]), str(row["problem_id"]), int(row["sample"]))


class RunDir:
    """Paths and file operations of one evaluation run directory."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.shards = self.root / "shards"
        self.run_json = self.root / "run.json"
        self.samples = self.root / "samples.jsonl"
        self.summary = self.root / "summary.json"
        self._lock: Any = None

    def shard(self, worker: int) -> Path:
        return self.shards / f"w{worker}.jsonl"

    def exists(self) -> bool:
        return self.run_json.is_file()

    # ------------------------------------------------------------------ locking
    def lock(self) -> None:
        """Hold an exclusive lock so two runs never append to the same shards."""
        from filelock import FileLock, Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.root / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise TaHError(
                f"{self.root} is in use by another `tah eval`; wait for it or use another --output"
            ) from None
        self._lock = lock

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------------ run.json
    def read_run(self) -> dict[str, Any]:
        try:
            return json.loads(self.run_json.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise DataError(f"{self.root} is not an evaluation run (no run.json)") from exc
        except json.JSONDecodeError as exc:
            raise DataError(f"{self.run_json}: not valid JSON ({exc.msg})") from exc

    # ------------------------------------------------------------------ shards
    def repair_shards(self) -> int:
        """Trim a trailing partial line (a kill mid-write) from every shard; returns bytes cut."""
        cut = 0
        if not self.shards.is_dir():
            return 0
        for path in sorted(self.shards.glob("*.jsonl")):
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                with open(path, "r+b") as handle:
                    handle.truncate(keep)
                cut += len(data) - keep
        return cut

    def iter_shard_rows(self) -> Iterator[dict[str, Any]]:
        """Every complete row of every shard; malformed lines are skipped."""
        if not self.shards.is_dir():
            return
        for path in sorted(self.shards.glob("*.jsonl")):
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    if not line.endswith("\n"):
                        continue  # cut by a kill
                    with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError, ValueError):
                        row = json.loads(line)
                        row_key(row)
                        yield row

    def finished(self) -> dict[Key, dict[str, Any]]:
        """First complete row per key across all shards."""
        rows: dict[Key, dict[str, Any]] = {}
        for row in self.iter_shard_rows():
            rows.setdefault(row_key(row), row)
        return rows

    # ------------------------------------------------------------------ merged output
    def write_samples(self, rows: Iterable[dict[str, Any]]) -> None:
        with atomic_file(self.samples, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    def read_samples(self) -> list[dict[str, Any]]:
        if not self.samples.is_file():
            raise DataError(f"{self.root}: no samples.jsonl (has the run finished?)")
        with open(self.samples, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]


def append_row(handle: Any, row: dict[str, Any]) -> None:
    """Write one finished sample as one line and push it to the OS (survives a kill)."""
    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    handle.flush()
