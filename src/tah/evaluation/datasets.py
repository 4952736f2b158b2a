"""Benchmark registry and loading: a name, a JSONL file, a saved ``datasets`` folder or a hub id.

The paper's benchmarks (docs/method.md §11) are registered by name with their hub source and field
names. A registered name is first looked up as ``<data dir>/<name>/test.jsonl`` (the normalised
local copies with fields ``id``/``problem``/``answer``), so evaluation works offline; the hub is
only the fallback. We keep our own small loader rather than a framework (lm-eval, lighteval)
because we need exactly three fields per problem, stable string ids for resuming, and the same
code path for local files and hub sets.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tah.errors import DataError

ANSWER_TYPES = ("expr", "latex", "string")

# Field-name candidates for files that are not in our normalised format, most specific first.
_ID_FIELDS = ("id", "ID", "unique_id", "question_id", "task_id", "idx", "index")
_QUESTION_FIELDS = ("problem", "question", "Problem", "Question", "prompt", "query")
_ANSWER_FIELDS = ("answer", "Answer", "final_answer", "target", "gold", "label")


@dataclass(frozen=True)
class DatasetSpec:
    """Where a registered benchmark lives and how to read it (docs/method.md §11)."""

    name: str
    hub_id: str
    split: str
    answer_type: str
    id_field: str = "id"
    question_field: str = "problem"
    answer_field: str = "answer"
    subset: str | None = None
    fallback_splits: tuple[str, ...] = ()


REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("gsm8k", "pss0204/gsm8k_test", "test", "expr", subset="gsm8k_test"),
        DatasetSpec("math500", "HuggingFaceH4/MATH-500", "test", "latex"),
        DatasetSpec(
            "aime24",
            "Maxwell-Jia/AIME_2024",
            "test",
            "expr",
            id_field="ID",
            question_field="Problem",
            answer_field="Answer",
            fallback_splits=("train",),
        ),
        DatasetSpec("aime25", "yentinglin/aime_2025", "train", "expr"),
        DatasetSpec("amc23", "math-ai/amc23", "test", "latex", question_field="question"),
        DatasetSpec("olympiadbench", "realtreetune/olympiadbench", "test", "latex"),
    )
}


@dataclass(frozen=True)
class Problem:
    """One benchmark question with its gold answer; ``id`` is unique within its dataset."""

    id: str
    question: str
    answer: str
    answer_type: str


@dataclass
class EvalDataset:
    """A loaded benchmark: its short name (used in results), where it came from, its problems."""

    name: str
    source: str
    problems: list[Problem]

    def head(self, limit: int | None) -> list[Problem]:
        return self.problems if limit is None else self.problems[:limit]


def default_data_dirs(explicit: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for ``<name>/test.jsonl``, in order.

    An explicit ``--data-dir``, then ``$TAH_DATA_DIR``, then ``../shared/data`` relative to the
    working directory and relative to the repository that holds this package.
    """
    dirs: list[Path] = []
    if explicit:
        dirs.append(Path(explicit))
    env = os.environ.get("TAH_DATA_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(Path.cwd().parent / "shared" / "data")
    repo = Path(__file__).resolve().parents[3]
    dirs.append(repo.parent / "shared" / "data")
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def find_local(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local ``test.jsonl`` of a registered benchmark, or None when no search folder has it."""
    for d in default_data_dirs(data_dir):
        candidate = d / name / "test.jsonl"
        if candidate.is_file():
            return candidate
    return None


def _pick(record: dict[str, Any], preferred: str | None, candidates: Sequence[str]) -> Any:
    if preferred and preferred in record:
        return record[preferred]
    for key in candidates:
        if key in record:
            return record[key]
    return None


def _field(
    record: dict[str, Any],
    preferred: str | None,
    candidates: Sequence[str],
    what: str,
    source: str,
    index: int,
) -> Any:
    """The record's question or answer; missing, null and empty values are named apart."""
    keys = [preferred, *candidates] if preferred else list(candidates)
    key = next((k for k in keys if k in record), None)
    where = f"{source}: record {index} (counting from 0)"
    if key is None:
        raise DataError(
            f"{where} has no {what} field: expected one of {keys}, found keys {sorted(record)}"
        )
    value = record[key]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: {what} field {key!r} is {'null' if value is None else 'empty'}")
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise DataError(
            f"{where}: {what} field {key!r} must be text or a number, got {type(value).__name__}"
        )
    return value


def _clean_answer(value: Any) -> str:
    """Gold answers as strings: ``#### N`` GSM8K solutions reduced to N, ``27.0`` to ``27``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip().replace(",", "")
    return text


def records_to_problems(
    records: Iterable[dict[str, Any]],
    answer_type: str,
    source: str,
    id_field: str | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
) -> list[Problem]:
    """Turn raw records into problems, checking that every one has a question, an answer, a unique id."""
    if answer_type not in ANSWER_TYPES:
        raise DataError(f"answer type {answer_type!r} unknown; use one of {ANSWER_TYPES}")
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{source}: record {index} is not a JSON object")
        question = _field(record, question_field, _QUESTION_FIELDS, "question", source, index)
        answer = _field(record, answer_field, _ANSWER_FIELDS, "answer", source, index)
        raw_id = _pick(record, id_field, _ID_FIELDS)
        pid = str(index) if raw_id is None else str(raw_id)
        if pid in seen:
            raise DataError(
                f"{source}: duplicate problem id {pid!r} (record {index}); ids must be unique"
            )
        seen.add(pid)
        problems.append(Problem(pid, str(question), _clean_answer(answer), answer_type))
    if not problems:
        raise DataError(f"{source}: no problems found")
    return problems


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Read a JSONL file (or a ``.json`` file holding one array), naming the line of any
    malformed record."""
    raw = Path(path).read_bytes()
    if Path(path).suffix == ".json" and raw.lstrip()[:1] == b"[":
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason}); save it as UTF-8") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        return data
    records = []
    for lineno, line_bytes in enumerate(raw.splitlines(), 1):
        try:
            line = line_bytes.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}:{lineno}: not UTF-8 text ({exc.reason}); save the file as UTF-8"
            ) from None
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if isinstance(record, list):
            raise DataError(
                f"{path}:{lineno}: a JSON array, not one record; write one JSON object per line "
                "(JSONL), or save the array in a .json file"
            )
        records.append(record)
    return records


def default_answer_type(path: Path) -> str:
    """A file of a registered benchmark (``.../aime24/test.jsonl``) is graded as that benchmark
    is by name; any other file with ``latex`` (which also reads plain numbers)."""
    spec = REGISTRY.get(_short_name(path).lower())
    return spec.answer_type if spec is not None else "latex"


def check_answer_type(problems: list[Problem], answer_type: str, source: str) -> None:
    """``string`` grading compares multiple-choice letters; refuse it for other gold answers,
    which it would mark wrong every time."""
    if answer_type != "string":
        return
    bad = next((p for p in problems if not re.fullmatch(r"\(?[A-Za-z]\)?", p.answer.strip())), None)
    if bad is not None:
        raise DataError(
            f"{source}: --answer-type string grades multiple-choice letters (A, B, C ...), but "
            f"problem {bad.id!r} has gold answer {bad.answer[:40]!r}; use --answer-type expr "
            "(numbers) or latex (expressions)"
        )


def _short_name(path: Path) -> str:
    stem = path.parent.name if path.stem in ("test", "train", "validation") else path.stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or "data"


def _load_hub(spec: DatasetSpec, data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    import datasets

    from tah.model.checkpoint import hub_unreachable

    searched = [str(d / spec.name / "test.jsonl") for d in default_data_dirs(data_dir)]
    offline = hub_unreachable()
    if offline is not None:
        raise DataError(
            f"dataset {spec.name!r}: no local copy (searched {searched}) and the hub is offline "
            f"({offline}); pass --data-dir DIR with {spec.name}/test.jsonl inside, or set "
            "TAH_DATA_DIR"
        )

    last_error: Exception | None = None
    for split in (spec.split, *spec.fallback_splits):
        try:
            ds = datasets.load_dataset(spec.hub_id, spec.subset, split=split)
        except ValueError as exc:  # unknown split: try the fallback
            last_error = exc
            continue
        except Exception as exc:
            raise DataError(
                f"dataset {spec.name!r}: no local copy found (searched {searched}) "
                f"and loading {spec.hub_id!r} from the hub failed ({exc}); pass --data-dir with "
                f"{spec.name}/test.jsonl or set TAH_DATA_DIR"
            ) from exc
        return list(ds)
    raise DataError(
        f"dataset {spec.name!r}: hub set {spec.hub_id!r} has none of the splits "
        f"{(spec.split, *spec.fallback_splits)} ({last_error})"
    )


def load_eval_dataset(
    name_or_path: str,
    data_dir: str | os.PathLike | None = None,
    answer_type: str | None = None,
    split: str = "test",
) -> EvalDataset:
    """Load a benchmark by registry name, JSONL path, saved ``datasets`` folder or hub id.

    ``answer_type`` overrides the grader choice (registry default, else ``latex``, which also
    handles plain numbers).
    """
    dataset = _load_eval_dataset(name_or_path, data_dir, answer_type, split)
    check_answer_type(dataset.problems, dataset.problems[0].answer_type, dataset.source)
    return dataset


def _load_eval_dataset(
    name_or_path: str, data_dir: str | os.PathLike | None, answer_type: str | None, split: str
) -> EvalDataset:
    spec = REGISTRY.get(name_or_path.lower())
    if spec is not None:
        atype = answer_type or spec.answer_type
        local = find_local(spec.name, data_dir)
        if local is not None:
            records = read_jsonl(local)
            source = str(local)
            # Our normalised copies use id/problem/answer; fall back to the hub's field names.
            problems = records_to_problems(records, atype, source)
        else:
            records = _load_hub(spec, data_dir)
            source = f"hub:{spec.hub_id}"
            problems = records_to_problems(
                records, atype, source, spec.id_field, spec.question_field, spec.answer_field
            )
        return EvalDataset(spec.name, source, problems)

    path = Path(name_or_path)
    atype = answer_type or default_answer_type(path)
    if path.is_file():
        if path.suffix not in (".jsonl", ".json"):
            raise DataError(f"{path}: expected a .jsonl file of records")
        records = read_jsonl(path)
        return EvalDataset(
            _short_name(path), str(path), records_to_problems(records, atype, str(path))
        )
    if path.is_dir():
        if (path / f"{split}.jsonl").is_file():
            file = path / f"{split}.jsonl"
            records = read_jsonl(file)
            return EvalDataset(path.name, str(file), records_to_problems(records, atype, str(file)))
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise DataError(
                f"{path}: neither {split}.jsonl nor a saved `datasets` folder ({exc})"
            ) from exc
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path}: saved DatasetDict has no split {split!r} ({list(ds)})")
            ds = ds[split]
        return EvalDataset(path.name, str(path), records_to_problems(list(ds), atype, str(path)))
    if "/" in name_or_path and not name_or_path.startswith((".", "/")):
        hub = DatasetSpec(name_or_path.split("/")[-1], name_or_path, split, atype)
        records = _load_hub(hub)
        return EvalDataset(
            hub.name, f"hub:{name_or_path}", records_to_problems(records, atype, name_or_path)
        )
    raise DataError(
        f"dataset {name_or_path!r} is not a registered name ({sorted(REGISTRY)}), an existing "
        f"JSONL file or folder, nor a hub id (owner/name)"
    )


def parse_dataset_list(value: str) -> list[str]:
    """Split ``gsm8k,math500`` into names, rejecting empty entries."""
    names = [v.strip() for v in value.split(",")]
    if not value.strip() or any(not n for n in names):
        raise DataError(f"--datasets {value!r}: give a comma-separated list such as gsm8k,math500")
    return names
