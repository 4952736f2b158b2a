"""End to end through the ``tah`` command: known answers, --jobs 2, kill-and-resume, report, sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tah.cli import main
from tah.evaluation.store import RunDir
from test_eval_helpers import one_thread, save_tiny_model, save_tiny_tah, write_jsonl

PROBLEMS = [
    {"id": "p0", "problem": "Ann has 1,200 apples and buys 34 more. How many?", "answer": "1234"},
    {"id": "p1", "problem": "What is one half as a decimal?", "answer": "0.5"},
    {"id": "p2", "problem": "Solve x+1=3.", "answer": "2"},
    {"id": "p3", "problem": "What is 3/4 as a fraction?", "answer": "\\frac{3}{4}"},
    {"id": "p4", "problem": "How many legs has a spider?", "answer": "8"},
]
# The scripted "model": right on p0-p2 (in different notations), wrong on p3, no answer on p4.
SCRIPT = [
    {"match": "1,200 apples", "output": "1200 + 34 = 1,234, so \\boxed{1,234}"},
    {"match": "one half", "output": "<think>1/2</think> The answer is \\boxed{\\frac{1}{2}}."},
    {"match": "x+1=3", "output": "x = $\\boxed{2}$"},
    {"match": "3/4", "output": "\\boxed{0.7}"},
    {"match": "spider", "output": "I am not sure."},
]
EXPECTED = {"p0": True, "p1": True, "p2": True, "p3": False, "p4": False}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_e2e")
    data = write_jsonl(root / "toy.jsonl", PROBLEMS)
    script = write_jsonl(root / "script.jsonl", SCRIPT)
    return {"root": root, "data": data, "script": script}


def _scripted_args(files, out, *extra):
    return ["eval", "--backend", "scripted", "--model", str(files["script"]), "--datasets",
            str(files["data"]), "--answer-type", "latex", "--samples", "2", "--output", str(out),
            "--no-progress", *extra]  # fmt: skip


def _rows(out):
    return RunDir(out).read_samples()


def _summary(out):
    return json.loads((Path(out) / "summary.json").read_text())


def test_known_answers_with_two_workers(files):
    out = files["root"] / "forced"
    assert main(_scripted_args(files, out, "--jobs", "2", "--name", "Forced")) == 0
    rows = _rows(out)
    assert len(rows) == 10
    assert [(r["problem_id"], r["sample"]) for r in rows] == [
        (p["id"], s) for p in PROBLEMS for s in (0, 1)
    ]
    assert {r["worker"] for r in rows} == {0, 1}
    for r in rows:
        assert r["correct"] is EXPECTED[r["problem_id"]], r
        assert r["prompt"] and r["gold"] and r["iter"]["avg_depth"] == 1.0
    assert next(r for r in rows if r["problem_id"] == "p4")["grade_status"] == "no_answer"
    s = _summary(out)
    toy = s["datasets"]["toy"]
    assert (toy["accuracy"], toy["n_samples"], toy["n_problems"]) == (0.6, 10, 5)
    assert toy["no_answer_share"] == pytest.approx(0.2)
    assert s["last_invocation"] == {**s["last_invocation"], "generated": 10, "skipped": 0}
    # The same command again is a pure resume.
    assert main(_scripted_args(files, out, "--jobs", "2", "--name", "Forced")) == 0
    assert _summary(out)["last_invocation"]["skipped"] == 10


def test_kill_and_resume(files):
    out = files["root"] / "killed"
    args = _scripted_args(
        files, out, "--jobs", "2", "--batch-size", "1", "--backend-option", "delay_s=0.4"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tah", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    run = RunDir(out)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and len(run.finished()) < 3:
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the process group this test started
        proc.wait(10)
    done_before = len(run.finished())
    assert 3 <= done_before < 10
    assert not (out / "summary.json").exists()
    # A write torn by the kill: a partial line at the end of a shard.
    with open(run.shard(0), "a") as handle:
        handle.write('{"dataset": "toy", "problem_id": "p4", "sam')
    assert main(args) == 0
    s = _summary(out)
    assert s["last_invocation"]["skipped"] == done_before
    assert s["last_invocation"]["generated"] == 10 - done_before
    rows = _rows(out)
    assert sorted((r["problem_id"], r["sample"]) for r in rows) == sorted(
        (p["id"], s) for p in PROBLEMS for s in (0, 1)
    )
    assert all(r["correct"] is EXPECTED[r["problem_id"]] for r in rows)
    assert s["datasets"]["toy"]["accuracy"] == 0.6
    lines = sum(1 for path in run.shards.glob("*.jsonl") for _ in open(path))
    assert lines == 10  # nothing generated twice, the torn line trimmed


def test_changed_settings_refuse_to_resume(files):
    out = files["root"] / "forced"
    assert (
        main(_scripted_args(files, out, "--jobs", "2", "--name", "Forced", "--temperature", "0.3"))
        == 2
    )


def test_worker_failure_is_reported(files, capsys):
    args = _scripted_args(files, files["root"] / "failing", "--jobs", "2")
    args[args.index(str(files["script"]))] = str(files["root"] / "missing.jsonl")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "eval workers failed" in err and "missing.jsonl" in err


def test_report_on_two_recorded_runs(files, capsys):
    # A second "method" that also gets p3 right.
    better = write_jsonl(files["root"] / "better.jsonl", [
        *SCRIPT[:3], {"match": "3/4", "output": "\\boxed{0.75}"}, SCRIPT[4]])  # fmt: skip
    out2 = files["root"] / "better_run"
    args = _scripted_args(files, out2, "--name", "Better")
    args[args.index(str(files["script"]))] = str(better)
    assert main(args) == 0
    capsys.readouterr()
    report = files["root"] / "table1"
    assert main(["report", str(files["root"] / "forced"), str(out2), "--output", str(report)]) == 0
    capsys.readouterr()
    expected = (
        "| Benchmark | Forced | Better |\n"
        "|---|---:|---:|\n"
        "| toy | 60.0 | 80.0 |\n"
        "| Average | 60.0 | 80.0 |\n"
        "| Δ vs Forced | – | +20.0 |\n"
    )
    assert report.with_suffix(".md").read_text() == expected
    data = json.loads(report.with_suffix(".json").read_text())
    assert data["values"]["toy"] == {"Forced": 0.6, "Better": 0.8}
    assert (
        main(
            [
                "report",
                str(files["root"] / "forced"),
                str(out2),
                "--names",
                "A,B",
                "--baseline",
                "B",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| Δ vs B | -20.0 | – |" in out
    assert out.count("toy") == 1  # the table is printed once


def test_routing_through_the_cli(files):
    out = files["root"] / "routed"
    code = main(["eval", "--backend", "routing", "--small", str(files["root"] / "forced"),
                 "--large", str(files["root"] / "better_run"), "--target-params", "2",
                 "--small-params", "1", "--large-params", "3", "--route-score", "length",
                 "--output", str(out)])  # fmt: skip
    assert code == 0
    s = _summary(out)
    assert s["routing"]["fraction"] == 0.5 and s["routing"]["score"] == "length"
    assert s["routing"]["per_dataset"]["toy"]["n_large"] == 3  # 0.5 * 5 rounded half up
    # Longest small-model answers (in words): p0 (7), p1 (5), p4 (4) go to the large model.
    large = {r["problem_id"] for r in _rows(out) if r["routed_to"] == "large"}
    assert large == {"p0", "p1", "p4"}


@pytest.fixture(scope="module")
def tiny_models(files):
    with one_thread():
        base = save_tiny_model(files["root"] / "base")
        tah = save_tiny_tah(files["root"] / "tah", base)
    return {"base": base, "tah": tah}


def test_hf_backend_end_to_end_parallel_resume_and_determinism(files, tiny_models):
    common = ["eval", "--model", str(tiny_models["base"]), "--backend", "hf", "--datasets",
              str(files["data"]), "--samples", "2", "--max-new-tokens", "6", "--batch-size", "3",
              "--device", "cpu", "--no-progress"]  # fmt: skip
    out = files["root"] / "hf2"
    assert main([*common, "--jobs", "2", "--limit", "3", "--output", str(out)]) == 0
    assert len(_rows(out)) == 6
    with one_thread():  # resume in-process with one worker: jobs may change across resumes
        assert main([*common, "--jobs", "1", "--limit", "5", "--output", str(out)]) == 0
    s = _summary(out)
    assert s["last_invocation"]["skipped"] == 6 and s["last_invocation"]["generated"] == 4
    rows = _rows(out)
    assert len(rows) == 10 and len({(r["problem_id"], r["sample"]) for r in rows}) == 10
    assert all(
        1 <= r["n_tokens"] <= 6 and r["prompt"].startswith("<|im_start|>user\n") for r in rows
    )
    assert s["backend_info"]["backend"] == "hf" and s["backend_info"]["n_params"] > 0
    toy = s["datasets"]["toy"]
    assert toy["n_samples"] == 10 and toy["avg_depth"] == 1.0 and toy["iter_share"] == 0.0
    assert toy["mean_tokens"] == pytest.approx(sum(r["n_tokens"] for r in rows) / 10)
    # Per-sample seeds: one worker, other batches, same texts.
    solo = files["root"] / "hf1"
    with one_thread():
        assert main([*common, "--jobs", "1", "--batch-size", "4", "--output", str(solo)]) == 0
    key = lambda r: (r["problem_id"], r["sample"])  # noqa: E731
    assert {key(r): r["output"] for r in _rows(solo)} == {key(r): r["output"] for r in rows}


def test_tah_threshold_sweep_end_to_end(files, tiny_models):
    out = files["root"] / "sweep"
    args = ["eval", "--model", str(tiny_models["tah"]), "--datasets", str(files["data"]),
            "--limit", "2", "--max-new-tokens", "4", "--temperature", "0", "--device", "cpu",
            "--thresholds", "0,1", "--output", str(out), "--no-progress"]  # fmt: skip
    with one_thread():
        assert main(args) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    shares = {p["tau"]: p["mean_iter_share"] for p in sweep["points"]}
    assert shares == {0.0: 1.0, 1.0: 0.0}
    assert (out / "sweep.png").stat().st_size > 1000
    assert _summary(out / "tau-0")["backend_info"]["threshold"] == 0.0
    assert (out / "sweep.md").read_text().startswith("| τ |")


@pytest.mark.parametrize("backend", ["hf", "tah"])
def test_missing_local_model_is_named_before_any_output(tmp_path, capsys, backend):
    out = tmp_path / "run"
    argv = ["eval", "--model", str(tmp_path / "no-such-model"), "--backend", backend]
    assert main([*argv, "--datasets", "gsm8k", "--output", str(out)]) != 0
    assert f"no model at {tmp_path / 'no-such-model'}" in capsys.readouterr().err
    assert not out.exists()
