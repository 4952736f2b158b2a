"""tah eval under bad input: damaged models, over-long prompts, invalid settings, failed runs."""

from __future__ import annotations

import json
import shutil

import pytest

from tah.cli import main
from tah.evaluation.backend_base import Backend, Generation, iter_summary
from tah.evaluation.sampling import paper_sampling
from tah.evaluation.store import RunDir
from tah.evaluation.workers import PROMPT_TOO_LONG, generate_within_context
from tah.model.loading import bundled_model_path
from test_eval_helpers import one_thread, write_jsonl

LONG_QUESTION = " ".join(f"word{i}" for i in range(700))  # far beyond the 512-token context


@pytest.fixture
def setup(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(bundled_model_path(), model)
    problems = [
        {"id": "a", "problem": "What is 1+1?", "answer": "2"},
        {"id": "long", "problem": LONG_QUESTION, "answer": "3"},
        {"id": "b", "problem": "What is 2+2?", "answer": "4"},
    ]
    data = write_jsonl(tmp_path / "toy.jsonl", problems)
    return {"model": model, "data": data, "root": tmp_path}


def _args(setup, out, *extra):
    return ["eval", "--model", str(setup["model"]), "--datasets", str(setup["data"]),
            "--answer-type", "expr", "--max-new-tokens", "3", "--temperature", "0",
            "--device", "cpu", "--output", str(out), "--no-progress", *extra]  # fmt: skip


def test_damaged_model_names_the_file_and_leaves_no_run_folder(setup, capsys):
    weights = setup["model"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out = setup["root"] / "run"
    with one_thread():
        assert main(_args(setup, out)) == 2
    err = capsys.readouterr().err
    assert f"{weights} is damaged" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--threshold", "2"], "--threshold must be in [0, 1]"),
        (["--dtype", "float64"], "dtype must be one of"),
    ],
)
def test_invalid_settings_fail_before_anything_is_written(setup, capsys, extra, message):
    out = setup["root"] / "run"
    assert main(_args(setup, out, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_run_without_samples_does_not_block_a_corrected_rerun(setup, capsys):
    out = setup["root"] / "run"
    out.mkdir()  # an existing folder is not removed on failure; its run.json stays behind
    good = setup["root"] / "good"
    shutil.copytree(setup["model"], good)
    weights = setup["model"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with one_thread():
        assert main(_args(setup, out, "--threshold", "0.3")) == 2
    assert RunDir(out).exists() and not RunDir(out).finished()
    capsys.readouterr()
    argv = _args(setup, out)
    argv[argv.index(str(setup["model"]))] = str(good)
    with one_thread():
        assert main(argv) == 0, capsys.readouterr().err


def test_prompt_too_long_is_recorded_and_the_run_goes_on(setup):
    out = setup["root"] / "run"
    with one_thread():
        assert main(_args(setup, out, "--batch-size", "3")) == 0
    rows = {r["problem_id"]: r for r in RunDir(out).read_samples()}
    assert rows["long"]["grade_status"] == PROMPT_TOO_LONG
    assert rows["long"]["finish_reason"] == PROMPT_TOO_LONG and rows["long"]["n_tokens"] == 0
    assert rows["a"]["n_tokens"] == 3 and rows["b"]["n_tokens"] == 3  # full budget kept
    summary = json.loads((out / "summary.json").read_text())
    assert summary["datasets"]["toy"]["grade_status"][PROMPT_TOO_LONG] == 1


class _RecordingBackend(Backend):
    """Prompts are token lists; records the budget each generate call got."""

    context_length = 10
    tokenizer = object()

    def __init__(self):
        self.calls = []

    def generate(self, prompts, params, seeds):
        self.calls.append((len(prompts), params.max_new_tokens))
        return [
            Generation("x", [1], 1, iter_summary([1]), 0.0, "length", {"len": len(p)})
            for p in prompts
        ]


def test_a_rows_budget_does_not_depend_on_its_neighbours():
    backend = _RecordingBackend()
    prompts = [[1] * 3, [1] * 8, [1] * 12, [1] * 2]
    batch = [{"seed": i} for i in range(4)]
    gens = generate_within_context(backend, prompts, paper_sampling(max_tokens=4), batch)
    assert sorted(backend.calls) == [(1, 2), (2, 4)]  # short rows keep 4, the 8-token row gets 2
    assert [g.finish_reason for g in gens] == ["length", "length", PROMPT_TOO_LONG, "length"]
    assert [g.extra.get("len") for g in gens] == [3, 8, None, 2]  # order preserved


def test_eval_model_defaults_to_the_bundled_model():
    import argparse

    from tah.cli import eval as eval_cli

    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    config = eval_cli.config_from_args(parser.parse_args(["--datasets", "x.jsonl"]))
    assert config.model == str(bundled_model_path()) and config.backend == "tah"


def test_a_run_folder_is_locked_against_a_second_eval(tmp_path):
    from tah.errors import TaHError

    first, second = RunDir(tmp_path / "run"), RunDir(tmp_path / "run")
    first.lock()
    try:
        with pytest.raises(TaHError, match="in use by another `tah eval`"):
            second.lock()
    finally:
        first.unlock()
    second.lock()  # free again once released
    second.unlock()


def test_unknown_hub_model_offline_fails_before_any_output(tmp_path, capsys, monkeypatch):
    import tah.evaluation.workers as workers
    import tah.model.checkpoint as checkpoint

    def no_backend(*args, **kwargs):
        raise AssertionError("the backend must not be built: the check comes first")

    # No network and no offline flag: the hub client would retry for tens of seconds.
    monkeypatch.setattr(checkpoint, "hub_unreachable", lambda: "huggingface.co is not reachable")
    monkeypatch.setattr(workers, "make_backend", no_backend)
    data = write_jsonl(tmp_path / "toy.jsonl", [{"problem": "1+1?", "answer": "2"}])
    out = tmp_path / "run"
    argv = ["eval", "--model", "nobody-here/no-such-model", "--backend", "hf", "--datasets",
            str(data), "--output", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "nobody-here/no-such-model" in err and "offline" in err
    assert not out.exists()
