"""Dataset registry and loading, prompts, sampling seeds (no network anywhere)."""

from __future__ import annotations

import json

import pytest

from conftest import DATA_SKIP, QWEN3_SKIP, QWEN3_TOKENIZER
from tah.errors import ConfigError, DataError
from tah.evaluation.datasets import (
    REGISTRY,
    default_data_dirs,
    find_local,
    load_eval_dataset,
    parse_dataset_list,
)
from tah.evaluation.prompts import BOXED_SUFFIX, render_prompt, user_message
from tah.evaluation.sampling import SamplingParams, paper_sampling, sample_seed
from test_eval_helpers import tiny_tokenizer, write_jsonl


def test_registry_covers_the_paper_benchmarks():
    assert set(REGISTRY) >= {"gsm8k", "math500", "aime24", "aime25", "amc23", "olympiadbench"}
    assert REGISTRY["gsm8k"].hub_id == "pss0204/gsm8k_test"
    assert REGISTRY["gsm8k"].subset == "gsm8k_test"
    assert REGISTRY["aime24"].question_field == "Problem"
    assert REGISTRY["aime24"].fallback_splits == ("train",)
    assert REGISTRY["math500"].answer_type == "latex"
    assert REGISTRY["aime25"].answer_type == "expr"


def test_registry_name_prefers_local_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("TAH_DATA_DIR", raising=False)
    (tmp_path / "gsm8k").mkdir()
    write_jsonl(
        tmp_path / "gsm8k" / "test.jsonl",
        [
            {"id": "a", "problem": "1+1?", "answer": "2"},
            {"id": "b", "problem": "2+2?", "answer": "4"},
        ],
    )
    ds = load_eval_dataset("gsm8k", data_dir=tmp_path)
    assert ds.name == "gsm8k" and ds.source.endswith("gsm8k/test.jsonl")
    assert [p.id for p in ds.problems] == ["a", "b"]
    assert ds.problems[0].answer_type == "expr"
    assert ds.head(1)[0].question == "1+1?"


def test_search_order_explicit_then_env(tmp_path, monkeypatch):
    env_dir, explicit = tmp_path / "env", tmp_path / "explicit"
    for d, answer in ((env_dir, "1"), (explicit, "2")):
        (d / "amc23").mkdir(parents=True)
        write_jsonl(d / "amc23" / "test.jsonl", [{"id": "x", "problem": "q", "answer": answer}])
    monkeypatch.setenv("TAH_DATA_DIR", str(env_dir))
    assert default_data_dirs(explicit)[:2] == [explicit, env_dir]
    assert load_eval_dataset("amc23", data_dir=explicit).problems[0].answer == "2"
    assert load_eval_dataset("amc23").problems[0].answer == "1"
    assert find_local("olympiadbench", explicit) in (None, find_local("olympiadbench"))


def test_shared_data_found_relative_to_repo(monkeypatch, tmp_path):
    monkeypatch.delenv("TAH_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    local = find_local("gsm8k")
    if local is None:
        pytest.skip(DATA_SKIP)
    ds = load_eval_dataset("gsm8k")
    assert len(ds.problems) == 1319 and ds.problems[0].answer == "18"


def test_jsonl_path_with_other_field_names(tmp_path):
    path = write_jsonl(
        tmp_path / "mine.jsonl",
        [
            {"question": "Q1", "answer": "Work...\n#### 1,234"},  # GSM8K-style solution
            {"question": "Q2", "answer": 27.0},  # AMC-style float answer
        ],
    )
    ds = load_eval_dataset(str(path))
    assert ds.name == "mine"
    assert [p.id for p in ds.problems] == ["0", "1"]
    assert [p.answer for p in ds.problems] == ["1234", "27"]
    assert ds.problems[0].answer_type == "latex"
    assert load_eval_dataset(str(path), answer_type="expr").problems[0].answer_type == "expr"


def test_folder_with_test_jsonl_and_saved_dataset(tmp_path):
    import datasets

    (tmp_path / "set").mkdir()
    write_jsonl(tmp_path / "set" / "test.jsonl", [{"id": 1, "problem": "p", "answer": "3"}])
    assert load_eval_dataset(str(tmp_path / "set")).problems[0].id == "1"
    datasets.Dataset.from_list([{"ID": "k", "Problem": "p", "Answer": "5"}]).save_to_disk(
        str(tmp_path / "saved")
    )
    ds = load_eval_dataset(str(tmp_path / "saved"))
    assert (ds.problems[0].id, ds.problems[0].question, ds.problems[0].answer) == ("k", "p", "5")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [
                {"id": "a", "problem": "p", "answer": "1"},
                {"id": "a", "problem": "q", "answer": "2"},
            ],
            "duplicate",
        ),
        ([{"id": "a", "text": "p"}], r"record 0 \(counting from 0\) has no question field"),
        ([{"problem": "p", "answer": None}], "answer field 'answer' is null"),
        ([{"problem": "p", "answer": "  "}], "answer field 'answer' is empty"),
        ([{"problem": "", "answer": "1"}], "question field 'problem' is empty"),
        ([{"problem": "p", "answer": ["1"]}], "must be text or a number, got list"),
        ([[{"problem": "p", "answer": "1"}]], "a JSON array, not one record"),
        ([], "no problems"),
    ],
)
def test_bad_files_raise_data_errors(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message):
        load_eval_dataset(str(path))


def test_malformed_json_names_the_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"problem": "p", "answer": "1"}\n{not json\n')
    with pytest.raises(DataError, match="broken.jsonl:2"):
        load_eval_dataset(str(path))


def test_non_utf8_line_is_named(tmp_path):
    path = tmp_path / "latin1.jsonl"
    lines = [b'{"problem": "p%d", "answer": "1"}' % i for i in range(3000)]
    lines[2500] = '{"problem": "caf\u00e9", "answer": "1"}'.encode("latin-1")
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match="latin1.jsonl:2501: not UTF-8"):
        load_eval_dataset(str(path))


def test_json_array_file_is_accepted(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(json.dumps([{"problem": "p", "answer": 3}, {"problem": "q", "answer": "4"}]))
    ds = load_eval_dataset(str(path))
    assert [(p.question, p.answer) for p in ds.problems] == [("p", "3"), ("q", "4")]


def test_unknown_name_is_a_clear_error():
    with pytest.raises(DataError, match="not a registered name"):
        load_eval_dataset("no_such_benchmark")
    with pytest.raises(DataError):
        parse_dataset_list("gsm8k,,math500")
    assert parse_dataset_list(" gsm8k , math500") == ["gsm8k", "math500"]


def test_prompt_styles_and_chat_template():
    tok = tiny_tokenizer()
    assert user_message("Q", "bare") == "Q"
    assert user_message("Q", "boxed") == f"Q\n\n{BOXED_SUFFIX}"
    assert "\\boxed{}" in BOXED_SUFFIX
    prompt = render_prompt(tok, "What is 2+2?", "boxed")
    assert prompt == (
        f"<|im_start|>user\nWhat is 2+2?\n\n{BOXED_SUFFIX}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt(tok, "Q", chat=False) == "Q"
    assert render_prompt(tiny_tokenizer(chat=False), "Q") == "Q"
    assert render_prompt(None, "Q") == "Q"
    with pytest.raises(ConfigError):
        user_message("Q", "fancy")


def test_sampling_defaults_and_validation():
    p = paper_sampling()
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.max_new_tokens) == (
        0.6,
        0.95,
        20,
        0.0,
        4096,
    )
    assert SamplingParams(temperature=0).greedy
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_k": -1}, {"max_tokens": 0}):
        with pytest.raises(ConfigError):
            SamplingParams(**bad)


def test_sample_seeds_are_stable_and_distinct():
    a = sample_seed(42, "gsm8k", "p1", 0)
    assert a == sample_seed(42, "gsm8k", "p1", 0)
    others = {
        sample_seed(42, "gsm8k", "p1", 1),
        sample_seed(42, "gsm8k", "p2", 0),
        sample_seed(43, "gsm8k", "p1", 0),
        sample_seed(42, "math500", "p1", 0),
    }
    assert a not in others and len(others) == 4
    assert 0 <= a < 2**31


def test_qwen3_template_and_stop_tokens():
    path = QWEN3_TOKENIZER
    if not path.is_dir():
        pytest.skip(QWEN3_SKIP)
    from tah.evaluation.backends import load_tokenizer, stop_token_ids

    tok = load_tokenizer(str(path))
    prompt = render_prompt(tok, "What is 2+2?")
    assert prompt.startswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert "<think>" not in prompt  # the model opens its own thinking block (METHOD.md D.3)
    # enable_thinking reaches the template; this plain ChatML one ignores it.
    assert render_prompt(tok, "Q", enable_thinking=False).endswith("<|im_start|>assistant\n")
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tok)
    assert tok.padding_side == "left" and tok.pad_token_id is not None


def test_offline_without_a_local_copy_fails_fast_naming_the_folders(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TAH_DATA_DIR", raising=False)
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_eval_dataset("olympiadbench", data_dir=tmp_path)  # not in ../shared/data
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert str(tmp_path / "olympiadbench" / "test.jsonl") in message and "offline" in message


def test_string_grading_refuses_numeric_gold_answers(tmp_path):
    path = write_jsonl(tmp_path / "ints.jsonl", [{"problem": "1+1?", "answer": "2"}])
    with pytest.raises(DataError, match="--answer-type string grades multiple-choice letters"):
        load_eval_dataset(str(path), answer_type="string")
    letters = write_jsonl(tmp_path / "mc.jsonl", [{"problem": "Pick", "answer": "B"}])
    assert load_eval_dataset(str(letters), answer_type="string").problems[0].answer == "B"


def test_a_registered_benchmark_file_is_graded_as_by_name(tmp_path):
    (tmp_path / "aime24").mkdir()
    path = write_jsonl(tmp_path / "aime24" / "test.jsonl", [{"problem": "p", "answer": "7"}])
    by_path = load_eval_dataset(str(path))
    by_name = load_eval_dataset("aime24", data_dir=tmp_path)
    assert by_path.problems[0].answer_type == by_name.problems[0].answer_type == "expr"
