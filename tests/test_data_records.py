"""Record loading: JSONL with line-precise errors, datasets directories, hub ids, empty sets."""

from __future__ import annotations

import json

import pytest

from tah.data.records import load_records, parse_record
from tah.errors import DataError


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = [
    json.dumps({"id": "a", "problem": "1+1?", "solution": "2", "answer": "2"}),
    json.dumps({"question": "2+2?", "generation": "<think>\nadd\n</think>\n\n4"}),
    json.dumps({"problem": "3+3?", "output": "6"}),
    json.dumps({"problem": "4+4?", "answer": "8"}),
]


def test_jsonl_field_aliases_and_ids(tmp_path):
    rs = load_records(write_lines(tmp_path / "r.jsonl", GOOD))
    assert len(rs) == 4 and rs.skipped == 0
    assert [r.question for r in rs] == ["1+1?", "2+2?", "3+3?", "4+4?"]
    assert [r.solution for r in rs] == ["2", "<think>\nadd\n</think>\n\n4", "6", "8"]
    assert [r.record_id for r in rs] == ["a", "1", "2", "3"] and rs[3].index == 3
    assert rs[0].origin.endswith("r.jsonl:1")
    picked = load_records(tmp_path / "r.jsonl", solution_field="answer", limit=1)
    assert len(picked) == 1 and picked[0].solution == "2"


def test_malformed_line_names_file_and_line(tmp_path):
    path = write_lines(
        tmp_path / "bad.jsonl",
        [GOOD[0], "", "{oops", GOOD[1], json.dumps({"problem": "q"}), "[1, 2]", GOOD[2]],
    )
    with pytest.raises(DataError) as err:
        load_records(path)
    assert f"{path}:3" in str(err.value) and "invalid JSON" in str(err.value)
    rs = load_records(path, on_error="skip")
    assert len(rs) == 3 and rs.skipped == 3
    assert [r.question for r in rs] == ["1+1?", "2+2?", "3+3?"]
    assert [r.index for r in rs] == [0, 1, 2]
    assert any(f"{path}:5" in p and "no solution field" in p for p in rs.problems)
    assert any(f"{path}:6" in p and "JSON object" in p for p in rs.problems)


def test_wrong_types_and_empty_values_are_malformed(tmp_path):
    with pytest.raises(DataError, match=r"x.jsonl:1: question field 'problem' is empty"):
        load_records(
            write_lines(tmp_path / "x.jsonl", [json.dumps({"problem": " ", "solution": "s"})])
        )
    with pytest.raises(DataError, match="not a string"):
        parse_record({"problem": "q", "solution": 3}, index=0, origin="o")
    # an empty first alias falls through to the next one
    rec = parse_record({"problem": "q", "solution": "", "answer": "a"}, index=0, origin="o")
    assert rec.solution == "a"


def test_null_field_is_called_null(tmp_path):
    path = write_lines(tmp_path / "n.jsonl", [json.dumps({"problem": "q", "answer": None})])
    with pytest.raises(DataError, match="n.jsonl:1: solution field 'answer' is null"):
        load_records(path)


def test_non_utf8_line_is_named_exactly_and_can_be_skipped(tmp_path):
    lines = [json.dumps({"problem": f"q{i}", "solution": "s"}).encode() for i in range(3000)]
    lines[2500] = '{"problem": "caf\u00e9", "solution": "s"}'.encode("latin-1")
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match="latin1.jsonl:2501: not UTF-8"):
        load_records(path)
    rs = load_records(path, on_error="skip")
    assert len(rs) == 2999 and rs.skipped == 1


def test_json_array_file_is_read_as_records(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(
        json.dumps([{"problem": "a", "solution": "1"}, {"problem": "b", "answer": "2"}])
    )
    rs = load_records(path)
    assert [(r.question, r.solution) for r in rs] == [("a", "1"), ("b", "2")]
    assert rs[1].origin.endswith("set.json[1]")


def test_empty_inputs_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no usable records"):
        load_records(empty)
    bad = write_lines(tmp_path / "allbad.jsonl", ["{", "{"])
    with pytest.raises(DataError, match=r"2 malformed records skipped"):
        load_records(bad, on_error="skip")
    with pytest.raises(DataError, match="no such file"):
        load_records(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="parquet"):
        load_records(write_lines(tmp_path / "x.parquet", ["x"]))
    with pytest.raises(DataError, match="on_error"):
        load_records(empty, on_error="ignore")


def test_datasets_directory_and_splits(tmp_path):
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_dict({"question": ["a?", "b?", "c?"], "solution": ["A", "", "C"]})
    ds.save_to_disk(str(tmp_path / "flat"))
    with pytest.raises(DataError, match=r"\[row 1\]"):
        load_records(tmp_path / "flat")
    assert [r.solution for r in load_records(tmp_path / "flat", on_error="skip")] == ["A", "C"]
    DatasetDict({"test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_records(tmp_path / "dd", split="test")) == 1
    with pytest.raises(DataError, match="splits"):
        load_records(tmp_path / "dd", split="train")
    (tmp_path / "notads").mkdir()
    with pytest.raises(DataError, match="not a saved datasets"):
        load_records(tmp_path / "notads")


def test_hub_is_only_tried_for_non_paths(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_dict({"problem": ["q"], "solution": ["s"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert len(load_records("org/some-set", split="test")) == 1
    assert calls == [("org/some-set", "test")]
    for local in ("./nope.jsonl", str(tmp_path / "nope"), "data/x.jsonl"):
        with pytest.raises(DataError, match="no such file"):
            load_records(local)
    assert len(calls) == 1

    def offline(name, split):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="Hugging Face Hub"):
        load_records("org/other")
