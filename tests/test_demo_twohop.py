"""`tah demo --twohop` on the bundled two-hop TaH+ checkpoint, and `tah repro twohop --export`."""

from __future__ import annotations

import json

import pytest

from tah.cli import main
from tah.cli.demo_twohop import bundled_twohop_path

BUNDLED = bundled_twohop_path()


def _run(capsys, *args: str) -> dict:
    assert main(["demo", "--twohop", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_bundled_two_hop_checkpoint_is_complete_and_says_where_it_came_from():
    for name in ("config.json", "model.safetensors", "decider.safetensors", "tokenizer.json"):
        assert (BUNDLED / name).is_file(), name
    facts = json.loads((BUNDLED / "repro.json").read_text())
    assert facts["command"].startswith("tah repro twohop") and facts["gate_passed"]
    config = json.loads((BUNDLED / "tah_config.json").read_text())
    assert config["decider_previous_token"] and config["max_iter"] == 2
    size = sum(p.stat().st_size for p in BUNDLED.rglob("*") if p.is_file())
    assert size < 2**20


def test_gold_answers_follow_the_printed_tables_and_the_second_pass_composes(capsys):
    result = _run(capsys, "--seed", "7", "--count", "4")
    two_hop = 0
    for problem in result["problems"]:
        f, g = dict(problem["F"]), dict(problem["G"])
        assert set(g) == set(f.values())  # G is keyed by exactly F's values
        for q in problem["queries"]:
            op, arg = q["query"].split()
            expected = {"f": f.get(arg), "g": g.get(arg), "gf": g.get(f.get(arg))}[op]
            assert q["gold"] == expected and q["kind"] == op
            if op == "gf":  # the first pass guesses the intermediate; the second looks it up
                two_hop += 1
                assert q["first_pass_answer"] == f[arg] and q["second_pass"]
            else:
                assert not q["second_pass"] and q["first_pass_correct"]
            assert q["correct"]  # the shipped model: 100 % on the study's 1000 test problems
    assert two_hop == result["totals"]["two_hop"]["queries"] > 0
    assert result["totals"]["two_hop"]["first_pass_right"] == 0
    # the same seed draws the same problems; another seed other ones
    assert _run(capsys, "--seed", "7", "--count", "4")["problems"] == result["problems"]
    assert _run(capsys, "--seed", "8", "--count", "4")["problems"] != result["problems"]


def test_pretty_output_marks_every_query(capsys):
    assert main(["demo", "--twohop", "--count", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("first pass alone:") == 12 and "two-hop: TaH+" in out and "✓" in out


def test_bad_input_gets_a_clear_error(capsys, tmp_path):
    from tah.model.loading import bundled_model_path

    assert main(["demo", "--twohop", "--count", "0"]) != 0
    assert "--count" in capsys.readouterr().err
    assert main(["demo", "--twohop", "--problem", "2+2"]) != 0
    assert "--problem" in capsys.readouterr().err
    assert main(["demo", "--twohop", "--model", str(bundled_model_path())]) != 0
    assert "not a two-hop checkpoint" in capsys.readouterr().err
    assert main(["demo", "--twohop", "--model", str(tmp_path)]) != 0
    assert "not a two-hop TaH checkpoint" in capsys.readouterr().err
    (tmp_path / "tah_config.json").write_text("{}")
    (tmp_path / "repro.json").write_text("{truncated")
    assert main(["demo", "--twohop", "--model", str(tmp_path)]) != 0
    assert "repro.json is not valid JSON" in capsys.readouterr().err


def test_export_ships_a_checkpoint_the_demo_runs(tmp_path, capsys):
    from tah.errors import CheckpointError
    from tah.repro.export import export_twohop_checkpoint
    from tah.repro.twohop import preset, run_study

    with pytest.raises(CheckpointError, match="no finished TaH\\+ model"):
        export_twohop_checkpoint(tmp_path / "nothing", 0, tmp_path / "out")
    run_study(preset("quick"), tmp_path / "run", show_progress=False)
    path = export_twohop_checkpoint(tmp_path / "run", 0, tmp_path / "export")
    facts = json.loads((path / "repro.json").read_text())
    assert facts["task"]["pairs"] == 4 and facts["seed"] == 0 and "tahplus" in facts["metrics"]
    assert "TaH+ " in facts["summary"] and "tahplus" not in facts["summary"]  # display names
    capsys.readouterr()  # the study's own output
    result = _run(capsys, "--model", str(path), "--count", "2")
    assert len(result["problems"]) == 2 and len(result["problems"][0]["queries"]) == 3


def test_the_last_line_uses_display_names_not_arm_ids(capsys):
    """Issue 26 item 8: the summary line names the arms as users read them."""
    assert main(["demo", "--twohop", "--count", "1"]) == 0
    import re

    out = capsys.readouterr().out
    summary = " ".join(out[out.index("trained by") :].split())  # rich wraps long lines
    assert "TaH+ 100.0 %" in summary
    assert not re.search(r"\b(tahplus|alwaysthink|standard)\b", summary), summary


def test_the_model_is_never_taught_the_separator_after_an_answer():
    """Why a free-running decoder must insert the ";" itself (documented in data.twohop): the
    separator after each answer carries no label."""
    import torch

    from tah.data.twohop import IGNORE, TwoHopTask, sample_batch

    task = TwoHopTask(separators=True)
    batch = sample_batch(task, 8, torch.Generator().manual_seed(0))
    after = task.answer_positions() + 1
    assert (batch.input_ids[:, after] == task.separator).all()
    assert (batch.labels[:, after] == IGNORE).all()
