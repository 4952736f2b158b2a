"""Summaries, the Table-1 report, question-level routing and threshold-sweep outputs."""

from __future__ import annotations

import json
import math

import pytest

from tah.errors import ConfigError, DataError
from tah.evaluation.report import build_report, to_markdown
from tah.evaluation.routing import combine_runs, parse_params, route_fraction
from tah.evaluation.store import RunDir
from tah.evaluation.summary import summarize
from tah.evaluation.sweep import collect, parse_thresholds, write_sweep
from tah.io import write_json


def _row(dataset, pid, sample, correct, tokens=10, hist=None, **extra):
    return {
        "dataset": dataset, "problem_id": pid, "sample": sample, "correct": correct,
        "n_tokens": tokens, "time_s": 0.5, "grade_status": "ok" if correct else "no_answer",
        "iter": {"hist": hist or {"1": tokens}}, "extracted": extra.pop("extracted", None),
        "extra": extra, "finish_reason": "stop",
    }  # fmt: skip


def test_summary_metrics_by_hand():
    rows = [
        _row("a", "p1", 0, True, 10, {"1": 8, "2": 2}),
        _row("a", "p1", 1, False, 30, {"1": 30}),
        _row("a", "p2", 0, True, 20, {"1": 10, "2": 10}),
        _row("b", "q1", 0, False, 4),
    ]
    s = summarize(rows, ["b", "a"])
    assert list(s["datasets"]) == ["b", "a"]
    a = s["datasets"]["a"]
    assert a["n_problems"] == 2 and a["n_samples"] == 3
    assert a["accuracy"] == pytest.approx(2 / 3)
    # sample std (ddof 1) / sqrt(n): values 1, 0, 1
    assert a["stderr"] == pytest.approx(math.sqrt(((1 / 3) ** 2 * 2 + (2 / 3) ** 2) / 2 / 3))
    assert a["mean_tokens"] == pytest.approx(20)
    assert a["avg_depth"] == pytest.approx((8 + 4 + 30 + 10 + 20) / 60)
    assert a["iter_share"] == pytest.approx(12 / 60)
    assert a["tokens_per_s"] == pytest.approx(60 / 1.5)
    assert a["per_problem_accuracy"] == {"p1": 0.5, "p2": 1.0}
    assert s["datasets"]["b"]["no_answer_share"] == 1.0
    assert s["average"]["accuracy"] == pytest.approx((2 / 3 + 0) / 2)


def _summary(name, accs):
    return {
        "name": name,
        "datasets": {
            k: {"accuracy": v, "stderr": 0.01, "iter_share": 0.1} for k, v in accs.items()
        },
        "average": {},
    }


def test_report_table_layout_and_delta():
    std = _summary("Standard", {"gsm8k": 0.625, "math500": 0.472})
    tah = _summary("TaH", {"gsm8k": 0.644, "math500": 0.512})
    rep = build_report([std, tah])
    assert rep["baseline"] == "Standard"
    assert rep["delta_vs_baseline"]["TaH"] == pytest.approx((0.644 + 0.512 - 0.625 - 0.472) / 2)
    assert to_markdown(rep) == (
        "| Benchmark | Standard | TaH |\n"
        "|---|---:|---:|\n"
        "| GSM8K | 62.5 | 64.4 |\n"
        "| MATH500 | 47.2 | 51.2 |\n"
        "| Average | 54.9 | 57.8 |\n"
        "| Δ vs Standard | – | +3.0 |\n"
    )


def test_report_partial_benchmarks_and_errors():
    a = _summary("A", {"gsm8k": 0.5, "amc23": 0.25})
    b = _summary("B", {"gsm8k": 0.75})
    rep = build_report([a, b], baseline="B")
    assert rep["average_over"] == ["gsm8k"]
    md = to_markdown(rep)
    assert (
        "| AMC23 | 25.0 | – |" in md and "Average (common)" in md and "Δ vs B | -25.0 | – |" in md
    )
    with pytest.raises(ConfigError, match="baseline"):
        build_report([a, b], baseline="C")
    with pytest.raises(ConfigError, match="repeat"):
        build_report([a, b], names=["x", "x"])


def _write_run(root, rows, n_params):
    run = RunDir(root)
    run.root.mkdir(parents=True)
    run.write_samples(rows)
    write_json(run.run_json, {"name": root.name, "backend_info": {"n_params": n_params}})
    return run


def test_routing_sends_the_hardest_questions_to_the_large_model(tmp_path):
    # Ten questions; the small model is right on 0-4, the large one on 0-7. Entropy ranks 9..0.
    small = [_row("gsm8k", f"p{i}", 0, i < 5, mean_entropy=float(i)) for i in range(10)]
    large = [_row("gsm8k", f"p{i}", 0, i < 8) for i in range(10)]
    _write_run(tmp_path / "small", small, 600e6)
    _write_run(tmp_path / "large", large, 4e9)
    s = combine_runs(
        str(tmp_path / "small"), str(tmp_path / "large"), str(tmp_path / "routed"), "1.7B"
    )
    r = s["routing"]
    assert r["score"] == "entropy"
    assert r["fraction"] == pytest.approx((1.7 - 0.6) / (4 - 0.6))
    assert r["per_dataset"]["gsm8k"]["n_large"] == 3  # round(0.3235 * 10)
    # p7, p8, p9 go to the large model: correct on p7 only -> 5 + 1 right answers.
    assert s["datasets"]["gsm8k"]["accuracy"] == pytest.approx(0.6)
    rows = RunDir(tmp_path / "routed").read_samples()
    assert {r["problem_id"] for r in rows if r["routed_to"] == "large"} == {"p7", "p8", "p9"}


def test_routing_scores_and_params():
    assert parse_params("1.7B") == 1.7e9 and parse_params("600M") == 6e8 and parse_params("3") == 3
    with pytest.raises(ConfigError):
        parse_params("big")
    with pytest.raises(ConfigError, match="outside"):
        route_fraction(0.6, 4, 5)
    from tah.evaluation.routing import choose_score, difficulty

    rows = [_row("d", "p", s, True, extracted=a) for s, a in enumerate(["1", "1", "2", "3"])]
    assert choose_score(rows, "auto") == "consistency"
    assert difficulty(rows, "consistency") == pytest.approx(0.5)
    assert choose_score(rows[:1], "auto") == "length"
    with pytest.raises(DataError, match="entropy"):
        difficulty(rows, "entropy")


def test_routing_rejects_mismatched_runs(tmp_path):
    _write_run(tmp_path / "s", [_row("gsm8k", "p1", 0, True)], 1)
    _write_run(tmp_path / "l", [_row("gsm8k", "p2", 0, True)], 3)
    with pytest.raises(DataError, match="not in the large run"):
        combine_runs(str(tmp_path / "s"), str(tmp_path / "l"), str(tmp_path / "o"), "2")


def test_sweep_collect_table_and_plot(tmp_path):
    dirs = []
    for tau, acc, share in ((0.9, 0.5, 0.05), (0.5, 0.6, 0.2)):
        d = tmp_path / f"tau-{tau}"
        d.mkdir()
        summary = {
            "name": d.name, "threshold": tau,
            "datasets": {"gsm8k": {"accuracy": acc, "iter_share": share, "avg_depth": 1 + share}},
            "average": {"accuracy": acc, "iter_share": share},
        }  # fmt: skip
        (d / "summary.json").write_text(json.dumps(summary))
        dirs.append(d)
    sweep = collect(dirs)
    assert [p["tau"] for p in sweep["points"]] == [0.5, 0.9]
    paths = write_sweep(sweep, tmp_path / "out")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["markdown"].read_text()
    assert "| 0.5 | 60.0 | 60.0 | 20.0 | 1.200 |" in md
    assert json.loads(paths["json"].read_text())["points"][1]["tau"] == 0.9
    assert parse_thresholds("0.5,0.7,0.9") == [0.5, 0.7, 0.9]
    for bad in ("", "0.5,0.5", "2", "a"):
        with pytest.raises(ConfigError):
            parse_thresholds(bad)
