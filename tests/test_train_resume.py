"""Resuming from a mid-run checkpoint reproduces the uninterrupted run exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tah.errors import CheckpointError, ConfigError
from tah.training.recipe import recipe_from_dict
from tah.training.trainer import train
from test_train_utils import random_rows, recipe_dict, train_records, write_rows


def recipe(tmp_path, out, **train_opts):
    data = write_rows(tmp_path / "train.jsonl", random_rows(10, seed=4))
    # LoRA dropout stays on: the resumed run must also restore the RNG streams.
    raw = recipe_dict(
        "stage1",
        data,
        tmp_path / out,
        train={"max_steps": 6, **train_opts},
        optim={"lr": 1e-3, "warmup_ratio": 0.2},
    )
    return recipe_from_dict(raw)


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path):
    full_recipe = recipe(tmp_path, "full")
    full_recipe.output.save_every, full_recipe.output.keep_last = 2, 1
    full = train(full_recipe)
    # checkpoints at 2 and 4 (none at the last step: final/ has it); only the newest is kept
    assert sorted(p.name for p in (tmp_path / "full").glob("checkpoint-*")) == ["checkpoint-4"]
    part = train(recipe(tmp_path, "part"), stop_after=4)  # mid-epoch (3 steps per epoch)
    assert part.global_step == 4 and (tmp_path / "part" / "checkpoint-4").is_dir()
    assert not (tmp_path / "part" / "final").exists()
    with pytest.raises(ConfigError, match="--resume auto"):
        train(recipe(tmp_path, "part"))
    resumed = train(recipe(tmp_path, "part"), resume="auto")
    assert resumed.global_step == full.global_step == 6

    curve_full = [(r["step"], r["loss"], r["lr"]) for r in train_records(tmp_path / "full")]
    curve_part = [(r["step"], r["loss"], r["lr"]) for r in train_records(tmp_path / "part")]
    assert [s for s, _, _ in curve_part] == [1, 2, 3, 4, 5, 6]
    assert curve_part == curve_full
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "part" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(tmp_path / "part" / "checkpoint-4" / "trainer_state.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 4)


def test_resume_refuses_a_different_run(tmp_path):
    train(recipe(tmp_path, "run"), stop_after=1)
    with pytest.raises(CheckpointError, match="global batch"):
        train(recipe(tmp_path, "run", global_batch_size=2), resume="auto")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(recipe(tmp_path, "empty"), resume="auto")
    lines = (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["event"] == "end"
