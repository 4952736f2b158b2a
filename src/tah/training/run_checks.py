"""Whether a training run may start in its output folder, and whether a resume can be exact.

This module holds the training run's folder layout (the log file and the final model's folder)
and the two checks made before any compute: that a new run does not mix into an old one in the
same ``output.dir`` (``--overwrite`` removes the old run's artefacts, ``--resume`` continues
it), and that a checkpoint being resumed was made with the same stage, data size, global batch,
seed and step count, so that the resumed run continues at exactly the batch it stopped before.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from tah.errors import CheckpointError, ConfigError
from tah.training import checkpoint as ckpt
from tah.training.recipe import Recipe
from tah.training.sampler import StepPlan

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
FINAL_DIR = "final"


def check_output_dir(out_dir: Path, resume_dir: Path | None, overwrite: bool, main: bool) -> None:
    """Refuse to mix a new run into an old one; ``overwrite`` removes the old run's artefacts.
    Folders of saves a kill interrupted are removed either way."""
    if main:
        for path in ckpt.remove_partial_saves(out_dir):
            log.info("removed %s, left by a save that was interrupted", path)
    if resume_dir is not None:
        return
    existing = ckpt.checkpoint_dirs(out_dir)
    if overwrite:
        if main:
            for _, path in existing:
                shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(out_dir / FINAL_DIR, ignore_errors=True)
        return
    if not existing and not (out_dir / FINAL_DIR).exists() and (out_dir / LOG_FILE).exists():
        raise ConfigError(
            f"output dir {out_dir} holds a run that stopped before its first checkpoint, so "
            "there is nothing to resume; pass --overwrite to start over, or choose another "
            "output.dir"
        )
    if existing or (out_dir / FINAL_DIR).exists():
        raise ConfigError(
            f"output dir {out_dir} already holds a run; pass --resume auto to continue it, "
            "--overwrite to start over, or choose another output.dir"
        )


def check_resume(payload: dict, recipe: Recipe, plan: StepPlan, total_steps: int, path) -> None:
    problems = []
    if payload.get("stage") != recipe.stage:
        problems.append(f"stage {payload.get('stage')} != {recipe.stage}")
    if payload.get("num_examples") != plan.num_examples:
        problems.append(f"{payload.get('num_examples')} training rows != {plan.num_examples} now")
    if payload.get("global_batch") != plan.global_batch:
        problems.append(f"global batch {payload.get('global_batch')} != {plan.global_batch}")
    if payload.get("seed") != recipe.train.seed:
        problems.append(f"seed {payload.get('seed')} != {recipe.train.seed}")
    if payload.get("total_steps") != total_steps:
        problems.append(f"total steps {payload.get('total_steps')} != {total_steps}")
    if problems:
        raise CheckpointError(
            f"cannot resume from {path} exactly: {'; '.join(problems)}. Resume with the recipe "
            "and data the checkpoint was made with"
        )
