"""`tah demo` and `tah generate` on the bundled tiny TaH checkpoint (shipped in the package)."""

from __future__ import annotations

import json

import pytest

from tah.cli import main
from tah.model.loading import bundled_model_path

BUNDLED = bundled_model_path()


def test_bundled_checkpoint_is_small_and_complete():
    assert (BUNDLED / "tah_config.json").is_file(), "the tiny checkpoint is missing from assets/"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "decider.safetensors"):
        assert (BUNDLED / name).is_file(), name
    assert (BUNDLED / "lora" / "adapter_config.json").is_file()
    size = sum(p.stat().st_size for p in BUNDLED.rglob("*") if p.is_file())
    assert size < 8 * 2**20, f"bundled checkpoint is {size / 2**20:.1f} MiB; keep it a few MB"
    config = json.loads((BUNDLED / "tah_config.json").read_text())
    assert config["decider"] == "mlp" and config["max_iter"] == 2
    facts = json.loads((BUNDLED / "repro.json").read_text())
    assert facts["command"].startswith("tah repro tiny")


def test_demo_json_is_consistent(capsys):
    assert main(["demo", "--json", "--seed", "3", "--count", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["problems"]) == 2 and result["graded"] == 2
    for problem in result["problems"]:
        assert problem["gold"] is not None and problem["problem"]
        tokens = problem["tokens"]
        assert tokens and all(t["iterations"] in (1, 2) for t in tokens)
        assert problem["stats"]["tokens"] == len(tokens)
        share = sum(t["iterations"] > 1 for t in tokens) / len(tokens)
        assert problem["stats"]["iter_share"] == pytest.approx(share)
        assert problem["correct"] == (problem["answer"] == problem["gold"])
    assert result["correct"] == sum(p["correct"] for p in result["problems"])
    # consecutive seeds: --seed 3 --count 2 is problems 3 and 4
    assert main(["demo", "--json", "--seed", "4", "--count", "1"]) == 0
    again = json.loads(capsys.readouterr().out)["problems"][0]
    for key in ("problem", "gold", "answer", "text", "tokens"):
        assert again[key] == result["problems"][1][key]


def test_demo_solves_sample_problems(capsys):
    """The shipped model really learned the task (repro.json has its held-out accuracy); an
    untrained model of this size solves none of these."""
    assert main(["demo", "--json", "--count", "8"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["correct"] >= 3, f"only {result['correct']} of 8 demo problems solved"


def test_demo_pretty_output_marks_every_problem(capsys):
    assert main(["demo", "--seed", "1", "--count", "3"]) == 0
    out = capsys.readouterr().out
    assert "Problem 1/3" in out and "Problem 3/3" in out and "avg depth" in out
    assert out.count("✓ right") + out.count("✗ wrong") == 3
    assert "of 3 right" in out
    assert "<|im_end|>" not in out  # the end-of-turn token ends the answer, it is not text
    assert main(["demo", "--seed", "1", "--count", "1", "--decider", "never", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["problems"][0]["stats"]["avg_depth"] == 1.0


def test_demo_own_problem(capsys):
    problem = "Tom has 12 apples. Tom finds 5 more apples. How many apples does Tom have?"
    assert main(["demo", "--problem", problem, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["problems"]) == 1 and result["graded"] == 0
    assert result["problems"][0]["gold"] is None and result["problems"][0]["correct"] is None
    assert result["problems"][0]["problem"] == problem


def test_demo_rejects_a_bad_count(capsys):
    assert main(["demo", "--count", "0"]) != 0
    assert "--count" in capsys.readouterr().err


def test_generate_defaults_to_the_bundled_model(capsys):
    prompt = "Anna has 7 cards. Anna buys 9 more cards. How many cards does Anna have?"
    code = main(["generate", "--prompt", prompt, "--chat", "--max-new-tokens", "40", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["max_iter"] == 2 and result["tokens"]


def test_help_says_how_many_problems_the_demo_solves():
    """Issue 26 item 11: the demo solves --count problems (5 by default), not "a problem"."""
    import argparse

    from tah.cli import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    demo = action.choices["demo"]
    count = next(a for a in demo._actions if "--count" in a.option_strings).default
    text = " ".join(demo.format_help().split())
    assert f"({count}, or --count)" in text and "a sample problem" not in text
