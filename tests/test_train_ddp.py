"""Two-process DDP on CPU (gloo, via torchrun) = one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tah.training.recipe import recipe_from_dict
from tah.training.trainer import train
from test_train_utils import REPO, random_rows, recipe_dict, train_records, write_recipe, write_rows


def test_two_process_ddp_matches_single_process(tmp_path):
    data = write_rows(tmp_path / "train.jsonl", random_rows(8, seed=9))
    # 1 process x 2 micro-batches of 2 rows == 2 processes x 1 micro-batch of 2 rows.
    options = {"max_steps": 2, "per_device_batch_size": 2, "global_batch_size": 4}
    ddp = recipe_dict("stage1", data, tmp_path / "ddp", train=options)
    ddp["model"]["tah"]["lora_dropout"] = 0.0
    single = recipe_dict("stage1", data, tmp_path / "single", train=options)
    single["model"]["tah"]["lora_dropout"] = 0.0
    recipe = write_recipe(tmp_path / "ddp.yaml", ddp)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "tah", "train", str(recipe), "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train(recipe_from_dict(single))

    log = [json.loads(line) for line in (tmp_path / "ddp" / "train_log.jsonl").open()]
    assert log[0]["processes"] == 2 and log[0]["grad_accum"] == 1
    assert log[-1]["ranks_in_sync"] is True  # both ranks hold bit-identical parameters
    ddp_curve = [r["loss"] for r in train_records(tmp_path / "ddp")]
    single_curve = [r["loss"] for r in train_records(tmp_path / "single")]
    assert len(ddp_curve) == 2
    assert ddp_curve == pytest.approx(single_curve, rel=1e-5)
    for name in ("model.safetensors", "lora/adapter_model.safetensors"):
        a = load_file(tmp_path / "ddp" / "final" / name)
        b = load_file(tmp_path / "single" / "final" / name)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
