"""`tah repro plateau`: the quick preset end to end, the gate's rule, the controls' construction."""

from __future__ import annotations

import calendar
import json
import time
from pathlib import Path

import pytest
import yaml

from tah.errors import ConfigError
from tah.repro.plateau.config import PlateauConfig, preset
from tah.repro.plateau.gate import gate_verdict


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    from tah.cli import main

    out = tmp_path_factory.mktemp("plateau") / "run"
    argv = ["repro", "plateau", "--quick", "--output", str(out), "--no-progress"]
    assert main([*argv, "--workers", "1"]) == 0
    return out


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def test_quick_run_writes_the_gate_the_readout_and_every_arm(quick_run):
    results = _results(quick_run)
    for name in ("results.json", "results.md", "results.png", "state.json"):
        assert (quick_run / name).is_file(), name
    gate = results["gate"]
    assert gate["split"] == "validation" and isinstance(gate["passed"], bool)
    assert set(gate["checks"]) == {"plateau", "depth_binds", "width_does_not"}
    assert results["exploratory"] is (not gate["passed"])
    assert "registered_at" in results["readout"] and results["readout"]["tau"] == 0.95
    for key in ("standard", "standard_2x", "deep", "standard_wide", "alwaysthink_plus"):
        assert len(results["aggregate"][key]["accuracy"]["values"]) == 1, key
    for key in ("tahplus", "tahplus_prev", "tahplus_oracle", "tahplus_depth1"):
        assert len(results["aggregate"][key]["accuracy"]["values"]) == 1, key
    assert results["complete"]
    seed = results["per_seed"]["0"]
    n_test = results["config"]["n_test"]
    assert all(t["n"] == n_test for t in seed["paired_tests"].values())
    assert "TaH+ (previous-token decider)" in (quick_run / "results.md").read_text()


def test_gate_is_recorded_before_any_tah_model_trains(quick_run):
    gate_time = calendar.timegm(
        time.strptime(_results(quick_run)["gate"]["recorded_at"], "%Y-%m-%dT%H:%M:%SZ")
    )
    for job in ("alwaysthink_plus", "tahplus_stage1", "tahplus_stage2", "decider_previous_token"):
        first = (quick_run / "seed0" / job / "train_log.jsonl").stat()
        assert first.st_mtime >= gate_time, job
    # the gate arms were scored on the validation problems (their own folder and count)
    config = _results(quick_run)["config"]
    for arm in ("standard", "standard_2x", "deep", "standard_wide"):
        val = json.loads((quick_run / "seed0" / "val" / arm / "summary.json").read_text())
        (data,) = val["datasets"].values()
        assert data["n_problems"] == config["n_val"], arm


def test_gate_arms_are_the_controls_the_issue_asks_for(quick_run):
    config = _results(quick_run)["config"]
    recipes = quick_run / "recipes" / "seed0"

    def recipe(name: str) -> dict:
        return yaml.safe_load((recipes / f"{name}.yaml").read_text())

    standard, longer, deep = recipe("standard"), recipe("standard_2x"), recipe("deep")
    assert longer["train"]["max_steps"] == 2 * standard["train"]["max_steps"]
    assert deep["train"]["max_steps"] == standard["train"]["max_steps"]
    for other in (longer, deep, recipe("standard_wide"), recipe("alwaysthink_plus")):
        assert other["data"]["train"] == standard["data"]["train"]
        assert other["optim"] == standard["optim"] and other["train"]["seed"] == 0
    grown = json.loads((quick_run / "seed0" / "deep_base" / "deepen.json").read_text())
    assert grown["layers"] == 2 * config["num_layers"] == 2 * grown["base_layers"]
    assert deep["model"]["base"].endswith("deep_base")
    # the width control holds at least the parameters of the larger TaH+ (previous-token decider),
    # counted independently by tah eval on the trained checkpoint
    wide = json.loads((quick_run / "seed0" / "wide_base" / "widen.json").read_text())
    evaluated = _results(quick_run)["per_seed"]["0"]["test"]
    assert wide["reference_params"] == evaluated["tahplus_prev"]["params"]
    assert wide["params"] >= wide["reference_params"] >= evaluated["tahplus"]["params"]
    assert evaluated["standard_wide"]["params"] == wide["params"]


def test_rerun_resumes_and_keeps_the_records(quick_run, capsys):
    from tah.cli import main

    before = _results(quick_run)
    argv = ["repro", "plateau", "--quick", "--output", str(quick_run), "--no-progress"]
    assert main([*argv, "--workers", "1"]) == 0
    after = _results(quick_run)
    assert after["gate"]["recorded_at"] == before["gate"]["recorded_at"]
    assert after["readout"]["registered_at"] == before["readout"]["registered_at"]
    assert after["aggregate"] == before["aggregate"]
    assert after["timings"] == before["timings"]  # nothing ran again
    capsys.readouterr()
    assert main([*argv, "--set", "finetune_steps=9"]) != 0
    assert "other settings (finetune_steps)" in capsys.readouterr().err


def _verdict(rows: dict[int, dict[str, float | None]]) -> dict:
    return gate_verdict(rows, preset("plateau"))


def _row(standard=50.0, longer=51.0, deep=56.0, wide=51.0) -> dict[str, float | None]:
    return {"standard": standard, "standard_2x": longer, "deep": deep, "standard_wide": wide}


def test_gate_passes_only_when_every_check_holds_on_every_seed():
    assert _verdict({0: _row(), 1: _row(), 2: _row()})["passed"]
    # boundaries are inclusive: a 2-point move is a plateau, a 5-point lead binds
    edge = _verdict({0: _row(50, 52, 57, 52)})
    assert edge["passed"], edge
    still_learning = _verdict({0: _row(), 1: _row(longer=52.5), 2: _row()})
    assert not still_learning["passed"] and not still_learning["checks"]["plateau"]
    # deep must beat the *better* Standard run by 5 points
    shallow_gain = _verdict({0: _row(longer=45.0, deep=54.0)})
    assert shallow_gain["checks"]["plateau"] and not shallow_gain["checks"]["depth_binds"]
    width_helps = _verdict({0: _row(wide=54.0), 1: _row(wide=52.0)})
    assert not width_helps["checks"]["width_does_not"]  # mean +3 points
    assert width_helps["wide_minus_standard_mean"] == pytest.approx(3.0)


def test_gate_with_a_missing_number_is_incomplete_and_fails():
    verdict = _verdict({0: _row(), 1: _row(deep=None)})
    assert not verdict["complete"] and not verdict["passed"]
    assert verdict["per_seed"]["1"]["checks"] is None


def test_plateau_settings_are_checked():
    config = preset("plateau")
    assert isinstance(config, PlateauConfig) and config.decider_variants == ["previous_token"]
    for bad in ("plateau_factor=1", "deep_placement=middle", "on_gate_fail=maybe"):
        with pytest.raises(ConfigError):
            config.with_overrides([bad])
    with pytest.raises(ConfigError, match="two deciders"):
        config.with_overrides(["decider_variants=[wider]"])
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")
