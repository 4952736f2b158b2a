"""Training checkpoints: the model as a loadable checkpoint plus the trainer's state, atomically.

A checkpoint directory ``<output>/checkpoint-<step>`` is itself a model directory (TaH
``save_pretrained`` for the TaH stages, plain HF ``save_pretrained`` for Standard), so any
checkpoint can be evaluated directly, plus ``trainer_state.pt`` holding what ``--resume`` needs to
continue *exactly*: optimiser and scheduler state, step/epoch counters, every process's RNG
states, and the parameter names in optimiser order (checked on load). Why not
``accelerator.save_state``: it writes the model a second time in its own layout and pickles the
RNG state; we want one model copy in the layout users load, and ``torch.load(weights_only=True)``
on the way back. Sharded setups (FSDP, DeepSpeed ZeRO) do use ``accelerator.save_state`` for
the optimiser, because only it knows how to gather / re-shard those states.

Everything is written into a temporary directory renamed into place (:func:`tah.io.atomic_dir`),
so a crash never leaves a half-written checkpoint that ``--resume`` could pick up.
"""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tah.errors import CheckpointError
from tah.io import atomic_dir

STATE_FILE = "trainer_state.pt"
STATE_FORMAT = "tah-trainer/1"
SHARDED_STATE_DIR = "accelerate_state"
_CKPT = re.compile(r"^checkpoint-(\d+)$")
# What atomic_dir and sharded saves leave behind when killed mid-save.
_PARTIAL = re.compile(r"^\.(checkpoint-\d+|final)\.(tmp-.+|old-\d+|sharded)$")


# ------------------------------------------------------------------ RNG states
def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as plain Python lists and numbers.

    Plain values travel through ``all_gather_object`` and load with ``weights_only=True``.
    """
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value


# ------------------------------------------------------------------ locating
def checkpoint_dirs(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete mid-run checkpoints in ``output_dir`` as (step, path), oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CKPT.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def resolve_resume(resume: str, output_dir: str | Path) -> Path:
    """``--resume`` value -> checkpoint directory. ``auto``/``latest`` = newest in output dir."""
    if resume in ("auto", "latest"):
        found = checkpoint_dirs(output_dir)
        if not found:
            started = (Path(output_dir) / "train_log.jsonl").exists()
            raise CheckpointError(
                f"--resume {resume}: no checkpoint-* directory with {STATE_FILE} in {output_dir}"
                + (
                    " (the run there stopped before its first checkpoint); start it again "
                    "without --resume and with --overwrite"
                    if started
                    else "; start without --resume"
                )
            )
        return found[-1][1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(
            f"--resume {resume}: {path} is not a training checkpoint (no {STATE_FILE}); pass a "
            "checkpoint-<step> directory or 'auto'"
        )
    return path


def remove_partial_saves(output_dir: str | Path) -> list[Path]:
    """Delete the temporary folders of saves a kill interrupted (``.checkpoint-N.tmp-*``,
    ``.final.tmp-*``, ``.checkpoint-N.sharded``); complete checkpoints are never touched."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    removed = []
    for child in root.iterdir():
        if child.is_dir() and _PARTIAL.match(child.name):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def prune_checkpoints(output_dir: str | Path, keep_last: int | None) -> None:
    """Delete all but the newest ``keep_last`` mid-run checkpoints."""
    if not keep_last:
        return
    for _, path in checkpoint_dirs(output_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ save / load
def save_checkpoint(
    target: str | Path,
    accelerator: Any,
    save_model: Callable[[Path], None],
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    model: Any = None,
    with_state: bool = True,
) -> None:
    """Write model + trainer state to ``target`` atomically; every process must call this.

    ``save_model(dir)`` writes the model (main process only; under FSDP inside a context that
    gathers the full parameters on it, which needs the wrapped ``model``). ``state`` holds
    counters and the scheduler state; optimiser state and per-process RNG states are added here.
    ``with_state=False`` writes the model alone: the finished run's ``final/`` is something to
    load and ship, and nothing resumes from it, so it need not carry the optimiser (2x the
    trainable parameters).
    """
    target = Path(target)
    sharded = with_state and is_sharded(accelerator)
    rng_all = _gather_objects(rng_state(), accelerator) if with_state else None
    opt_state = optimizer.state_dict() if with_state and not sharded else None
    scratch = None
    if sharded:
        # All processes write their shards into a shared scratch directory first.
        scratch = target.with_name(f".{target.name}.sharded")
        accelerator.save_state(str(scratch / SHARDED_STATE_DIR))
    accelerator.wait_for_everyone()
    with _full_parameters(accelerator, model):
        if accelerator.is_main_process:
            payload = None
            if with_state:
                payload = {
                    "format": STATE_FORMAT,
                    **state,
                    "optimizer": opt_state,
                    "rng": rng_all,
                    "sharded": sharded,
                }
            _write(target, save_model, payload, scratch)
    accelerator.wait_for_everyone()


def _write(target: Path, save_model, payload: dict[str, Any] | None, scratch: Path | None) -> None:
    with atomic_dir(target) as tmp:
        save_model(tmp)
        if payload is not None:
            torch.save(payload, tmp / STATE_FILE)
        if scratch is not None:
            shutil.move(str(scratch / SHARDED_STATE_DIR), str(tmp / SHARDED_STATE_DIR))
            shutil.rmtree(scratch, ignore_errors=True)


def _full_parameters(accelerator: Any, model: Any):
    """Under FSDP (v1), gather full parameters on the main process while the model is saved."""
    import contextlib

    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP:
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel

    if not isinstance(model, FullyShardedDataParallel):
        raise CheckpointError(
            "checkpoints under FSDP need FSDP version 1 (fsdp_version: 1, as in "
            "recipes/accelerate/fsdp.yaml)"
        )
    return FullyShardedDataParallel.summon_full_params(
        model, writeback=False, rank0_only=True, offload_to_cpu=True
    )


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """Read ``trainer_state.pt`` (weights only: nothing pickled is executed)."""
    file = Path(path) / STATE_FILE
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no {STATE_FILE}") from None
    except Exception as exc:
        raise CheckpointError(f"cannot read {file}: {type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{file} is not a tah trainer state ({STATE_FORMAT})")
    return payload


def restore_optimizer(
    payload: dict[str, Any], path: str | Path, accelerator: Any, optimizer: torch.optim.Optimizer
) -> None:
    """Load optimiser state saved by :func:`save_checkpoint` (sharded or not)."""
    if payload.get("sharded"):
        if not is_sharded(accelerator):
            raise CheckpointError(
                f"{path} was saved by a sharded run (FSDP/DeepSpeed); resume it with the same "
                "accelerate config"
            )
        accelerator.load_state(str(Path(path) / SHARDED_STATE_DIR))
        return
    if payload.get("optimizer") is None:
        raise CheckpointError(f"{path} holds no optimiser state")
    optimizer.load_state_dict(payload["optimizer"])


def restore_rng(payload: dict[str, Any], rank: int) -> None:
    states = payload.get("rng") or []
    if states:
        set_rng_state(states[rank if rank < len(states) else 0])


def is_sharded(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _gather_objects(obj: Any, accelerator: Any) -> list[Any]:
    if accelerator.num_processes == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * accelerator.num_processes
    dist.all_gather_object(out, obj)
    return out
