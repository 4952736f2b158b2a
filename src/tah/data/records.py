"""Problem/solution records: loading and validation, with errors that point at the bad line.

`datasets.load_dataset("json", ...)` could read our JSONL, but it reports a malformed line as a
pyarrow parse error without the file and line number, silently unions differing schemas, and
writes a cache under ``~/.cache``. Records feed every later step (labelling, pruning
calibration), so we read JSONL ourselves and validate each record up front: a bad line is
reported as ``file:line`` (or skipped and counted when asked), and an empty dataset is an error
rather than a zero-sample run. ``datasets`` directories (``load_from_disk``) and hub ids
(``load_dataset``) are still read through ``datasets``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tah.errors import DataError

QUESTION_KEYS: tuple[str, ...] = ("problem", "question")
SOLUTION_KEYS: tuple[str, ...] = ("solution", "generation", "output", "answer")
ID_KEYS: tuple[str, ...] = ("id", "data_id", "idx")

OnError = Literal["raise", "skip"]

# Files that are clearly not JSON Lines: refuse them with a hint instead of a parse error.
_BINARY_SUFFIXES = {".parquet", ".arrow", ".csv", ".tsv", ".feather", ".pkl", ".pt"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_MAX_PROBLEMS_KEPT = 20


@dataclass(frozen=True)
class Record:
    """One (question, solution) pair.

    ``index`` is the position in the loaded set (0-based, after skipped lines), used as the
    stable ``data_id`` downstream; ``record_id`` is the record's own ``id`` field when it has
    one, otherwise ``str(index)``; ``origin`` is ``file:line`` or ``source[row]`` for messages.
    """

    index: int
    record_id: str
    question: str
    solution: str
    origin: str = ""


@dataclass
class RecordSet:
    """The validated records of one source plus what was skipped while reading it."""

    source: str
    records: list[Record]
    skipped: int = 0
    problems: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]


def load_records(
    source: str | os.PathLike,
    *,
    split: str = "train",
    on_error: OnError = "raise",
    limit: int | None = None,
    question_field: str | None = None,
    solution_field: str | None = None,
) -> RecordSet:
    """Load and validate records from a JSONL file, a ``datasets`` directory or a hub id.

    A local path is always read locally; a string is sent to ``datasets.load_dataset`` only when
    no such path exists and it looks like a hub id (``name`` or ``org/name``). With
    ``on_error="raise"`` the first malformed record raises :class:`DataError` naming
    ``file:line`` (or the row); with ``"skip"`` bad records are counted in ``RecordSet.skipped``
    and described in ``RecordSet.problems``. ``limit`` keeps the first N valid records.
    An empty result is always an error.
    """
    if on_error not in ("raise", "skip"):
        raise DataError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive integer, got {limit!r}")
    keys = _keys(question_field, solution_field)
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() in _BINARY_SUFFIXES:
            raise DataError(
                f"{path}: {path.suffix} files are not read as records; convert to JSON Lines "
                "or save a datasets directory with Dataset.save_to_disk"
            )
        rows = jsonl_rows(path)
    elif path.is_dir():
        rows = _dataset_rows(_load_from_disk(path, split), str(path))
    elif _looks_like_hub_id(text):
        rows = _dataset_rows(_load_hub(text, split), text)
    else:
        raise DataError(f"no records at {text!r}: no such file or directory")
    result = _collect(rows, text, keys, on_error, limit)
    if not result.records:
        detail = f" ({result.skipped} malformed records skipped)" if result.skipped else ""
        raise DataError(
            f"{text}: no usable records{detail}; each record needs a question field "
            f"{keys[0]} and a solution field {keys[1]}"
        )
    return result


def parse_record(
    obj: Any,
    *,
    index: int,
    origin: str,
    question_keys: Iterable[str] = QUESTION_KEYS,
    solution_keys: Iterable[str] = SOLUTION_KEYS,
) -> Record:
    """Validate one decoded record; raise :class:`DataError` (message names ``origin``) if bad.

    The first key present with a non-empty string value wins, so a record with both
    ``solution`` and ``answer`` uses ``solution`` (the long reasoning we want to supervise).
    """
    if not isinstance(obj, Mapping):
        raise DataError(f"{origin}: expected a JSON object, got {type(obj).__name__}")
    question = _first_text(obj, tuple(question_keys), origin, "question")
    solution = _first_text(obj, tuple(solution_keys), origin, "solution")
    record_id = str(index)
    for key in ID_KEYS:
        value = obj.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value) != "":
            record_id = str(value)
            break
    return Record(
        index=index, record_id=record_id, question=question, solution=solution, origin=origin
    )


# ----------------------------------------------------------------------------- helpers


def _keys(question_field: str | None, solution_field: str | None) -> tuple[tuple, tuple]:
    q = (question_field,) if question_field else QUESTION_KEYS
    s = (solution_field,) if solution_field else SOLUTION_KEYS
    return q, s


def _first_text(obj: Mapping, keys: tuple[str, ...], origin: str, what: str) -> str:
    present = [k for k in keys if k in obj]
    for key in present:
        value = obj[key]
        if isinstance(value, str) and value.strip():
            return value
    if present:
        value = obj[present[0]]
        state = "null" if value is None else "empty" if isinstance(value, str) else "not a string"
        raise DataError(
            f"{origin}: {what} field {present[0]!r} is {state} (got {type(value).__name__})"
        )
    raise DataError(
        f"{origin}: no {what} field; expected one of {list(keys)}, found keys {sorted(obj)[:10]}"
    )


def _looks_like_hub_id(text: str) -> bool:
    if text.startswith((".", "/", "~")) or text.endswith((".jsonl", ".json")):
        return False
    return bool(_HUB_ID.match(text))


def jsonl_rows(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    """Yield (origin, decoded object or None, error message or None) per non-blank line.

    Lines are decoded one by one, so a non-UTF-8 byte is reported on its own line (a text-mode
    reader fails on the whole buffered chunk, many lines earlier). A ``.json`` file holding one
    JSON array yields its elements.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    with handle:
        if path.suffix.lower() == ".json" and handle.read(64).lstrip()[:1] == b"[":
            handle.seek(0)
            yield from _json_array_rows(path, handle.read())
            return
        handle.seek(0)
        for lineno, raw in enumerate(handle, 1):
            origin = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield origin, None, f"{origin}: not UTF-8 text ({exc.reason}); save it as UTF-8"
                continue
            if not line.strip():
                continue
            try:
                yield origin, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield origin, None, f"{origin}: invalid JSON ({exc.msg} at column {exc.colno})"


def _json_array_rows(path: Path, raw: bytes) -> Iterator[tuple[str, Any, str | None]]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    for i, obj in enumerate(data):
        yield f"{path}[{i}]", obj, None


def _load_from_disk(path: Path, split: str) -> Any:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(
            f"{path} is a directory but not a saved datasets Dataset/DatasetDict "
            f"(Dataset.save_to_disk): {exc}"
        ) from None
    return _pick_split(data, split, str(path))


def _load_hub(name: str, split: str) -> Any:
    import datasets

    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as exc:  # the hub raises many types (network, missing, bad split)
        raise DataError(
            f"could not load dataset {name!r} (split {split!r}) from the Hugging Face Hub: "
            f"{type(exc).__name__}: {exc}. If you meant a local file, check the path."
        ) from None
    return _pick_split(data, split, name)


def _pick_split(data: Any, split: str, source: str) -> Any:
    import datasets

    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(f"{source} has splits {sorted(data)}, not {split!r}; pass --split")
        return data[split]
    return data


def _dataset_rows(dataset: Any, source: str) -> Iterator[tuple[str, Any, str | None]]:
    for i, row in enumerate(dataset):
        yield f"{source}[row {i}]", row, None


def _collect(
    rows: Iterable[tuple[str, Any, str | None]],
    source: str,
    keys: tuple[tuple, tuple],
    on_error: OnError,
    limit: int | None,
) -> RecordSet:
    result = RecordSet(source=source, records=[])
    for origin, obj, error in rows:
        try:
            if error is not None:
                raise DataError(error)
            record = parse_record(
                obj,
                index=len(result.records),
                origin=origin,
                question_keys=keys[0],
                solution_keys=keys[1],
            )
        except DataError as exc:
            if on_error == "raise":
                raise DataError(
                    f"{exc} (skip and count such records with on_error='skip', "
                    "CLI --skip-bad-records)"
                ) from None
            result.skipped += 1
            if len(result.problems) < _MAX_PROBLEMS_KEPT:
                result.problems.append(str(exc))
            continue
        result.records.append(record)
        if limit is not None and len(result.records) >= limit:
            break
    return result
