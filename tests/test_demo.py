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
    assert main(["demo", "--json", "--seed", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["gold"] is not None and result["problem"]
    tokens = result["tokens"]
    assert tokens and all(t["iterations"] in (1, 2) for t in tokens)
    assert result["stats"]["tokens"] == len(tokens)
    share = sum(t["iterations"] > 1 for t in tokens) / len(tokens)
    assert result["stats"]["iter_share"] == pytest.approx(share)
    assert result["correct"] == (result["answer"] == result["gold"])


def test_demo_solves_sample_problems(capsys):
    """The shipped model really learned the task. It scores about 49 % on held-out problems
    (repro.json) and solves 5 of these 8; an untrained model of this size solves none."""
    correct = 0
    for seed in range(8):
        assert main(["demo", "--json", "--seed", str(seed)]) == 0
        correct += bool(json.loads(capsys.readouterr().out)["correct"])
    assert correct >= 3, f"only {correct} of 8 demo problems solved"


def test_demo_pretty_output_and_decider_override(capsys):
    assert main(["demo", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "Problem" in out and "avg depth" in out and "iterated" in out
    assert main(["demo", "--seed", "1", "--decider", "never", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stats"]["avg_depth"] == 1.0


def test_demo_own_problem(capsys):
    problem = "Tom has 12 apples. Tom finds 5 more apples. How many apples does Tom have?"
    assert main(["demo", "--problem", problem, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["gold"] is None and result["correct"] is None
    assert result["problem"] == problem


def test_generate_defaults_to_the_bundled_model(capsys):
    prompt = "Anna has 7 cards. Anna buys 9 more cards. How many cards does Anna have?"
    code = main(["generate", "--prompt", prompt, "--chat", "--max-new-tokens", "40", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["max_iter"] == 2 and result["tokens"]
