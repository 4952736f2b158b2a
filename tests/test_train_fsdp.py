"""Stage 1 under FSDP (recipes/accelerate/fsdp_cpu.yaml: FSDP1 full sharding, 2 CPU processes,
gloo): it trains, saves, and a run stopped at a checkpoint and resumed reproduces the
uninterrupted run's loss curve and final weights exactly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from test_train_utils import REPO, random_rows, recipe_dict, train_records, write_recipe, write_rows


def free_port() -> int:
    """A free TCP port for the rendezvous (the config's static default, 29500, may be taken by
    another job on the machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(recipe, *flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(REPO / "recipes" / "accelerate" / "fsdp_cpu.yaml"), "--num_processes", "2",
        "--main_process_port", str(free_port()),
        "-m", "tah", "train", str(recipe), "--no-progress", *flags,
    ]  # fmt: skip
    # Own process group: on a timeout the launcher's ranks are ended too, not left behind.
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"FSDP launch timed out: {err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]


@pytest.mark.slow  # four two-process launches: about a minute on two cores
def test_fsdp_stage1_save_and_exact_resume(tmp_path):
    data = write_rows(tmp_path / "train.jsonl", random_rows(8, seed=9))
    options = {"max_steps": 4, "per_device_batch_size": 2, "global_batch_size": 4}
    recipes = {}
    for name in ("full", "part"):
        raw = recipe_dict("stage1", data, tmp_path / name, train=options)
        raw["model"]["tah"]["lora_dropout"] = 0.0
        raw["output"]["save_every"] = 2
        recipes[name] = write_recipe(tmp_path / f"{name}.yaml", raw)
    launch(recipes["full"])
    launch(recipes["part"], "--stop-after", "2")
    assert (tmp_path / "part" / "checkpoint-2").is_dir()
    assert not (tmp_path / "part" / "final").exists()
    launch(recipes["part"], "--resume", "auto")

    full = [(r["step"], r["loss"]) for r in train_records(tmp_path / "full")]
    part = [(r["step"], r["loss"]) for r in train_records(tmp_path / "part")]
    assert [s for s, _ in full] == [1, 2, 3, 4]
    assert part == full
    for name in ("model.safetensors", "lora/adapter_model.safetensors"):
        a = load_file(tmp_path / "full" / "final" / name)
        b = load_file(tmp_path / "part" / "final" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
