"""tah train after interruptions and with bad recipes: clear next steps, no leftovers."""

from __future__ import annotations

import pytest

from tah.cli import main
from tah.errors import CheckpointError, ConfigError
from tah.training.recipe import recipe_from_dict
from tah.training.trainer import train
from test_train_utils import random_rows, recipe_dict, write_recipe, write_rows


def _raw(tmp_path, out="run", **sections):
    data = write_rows(tmp_path / "train.jsonl", random_rows(6, seed=2))
    return recipe_dict("stage1", data, tmp_path / out, train={"max_steps": 3}, **sections)


def test_a_run_stopped_before_its_first_checkpoint_points_at_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_log.jsonl").write_text('{"event": "start", "step": 0}\n')  # Ctrl-C'd run
    recipe = recipe_from_dict(_raw(tmp_path))
    with pytest.raises(ConfigError, match="stopped before its first checkpoint.*--overwrite"):
        train(recipe)
    with pytest.raises(CheckpointError, match="stopped before its first checkpoint.*--overwrite"):
        train(recipe, resume="auto")
    assert train(recipe, overwrite=True).global_step == 3


def test_folders_of_interrupted_saves_are_removed_on_resume(tmp_path):
    recipe = recipe_from_dict(_raw(tmp_path))
    train(recipe, stop_after=1)
    out = tmp_path / "run"
    leftovers = [
        out / ".checkpoint-2.tmp-k1ll3d",
        out / ".final.tmp-x",
        out / ".checkpoint-1.sharded",
    ]
    for path in leftovers:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"half")
    keep = out / ".not-ours"
    keep.mkdir()
    train(recipe, resume="auto")
    assert not any(p.exists() for p in leftovers) and keep.is_dir()
    assert (out / "checkpoint-1").is_dir() and (out / "final").is_dir()


def test_dry_run_checks_tah_values(tmp_path, capsys):
    path = write_recipe(tmp_path / "r.yaml", _raw(tmp_path))
    assert main(["train", str(path), "--dry-run", "--set", "model.tah.max_iter=0"]) == 2
    assert "model.tah: max_iter must be an integer from 1 to 16" in capsys.readouterr().err
    assert main(["train", str(path), "--dry-run"]) == 0


def test_missing_base_path_is_not_called_a_hub_id(tmp_path):
    raw = _raw(tmp_path)
    raw["model"] = {"base": str(tmp_path / "no" / "such-model"), "tah": raw["model"]["tah"]}
    with pytest.raises(ConfigError, match="such-model does not exist"):
        train(recipe_from_dict(raw))


def test_disk_full_is_a_message_not_a_traceback(tmp_path, capsys, monkeypatch):
    import errno

    import tah.training.trainer as trainer

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "x"))

    monkeypatch.setattr(trainer, "train", full)
    path = write_recipe(tmp_path / "r.yaml", _raw(tmp_path))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device writing" in err and "rerun the same command" in err
