"""Process setup for training: the ``Accelerator``, DeepSpeed geometry, cross-rank checks.

``accelerate`` does the real work (process groups, DDP / FSDP / DeepSpeed wrapping, mixed
precision); this module only translates a recipe into its settings, which differ from
accelerate's defaults in three places: CPU-only machines must ask for ``cpu=True`` to get a gloo
process group under ``torchrun``; DeepSpeed's batch geometry and clipping come from the recipe
because we prepare no DataLoader; and after training we check that replicated ranks really hold
identical parameters.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

from tah.errors import ConfigError
from tah.training.checkpoint import is_sharded
from tah.training.recipe import Recipe

log = logging.getLogger(__name__)


def make_accelerator(recipe: Recipe, report_to: list[str]) -> Any:
    """The run's ``Accelerator``: mixed precision from the recipe, DDP kwargs, trackers."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    mp = recipe.train.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if mp == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision fp16 needs a CUDA GPU; use 'no' or 'bf16' on CPU")
    kwargs = DistributedDataParallelKwargs(
        find_unused_parameters=recipe.train.find_unused_parameters
    )
    project = ProjectConfiguration(project_dir=recipe.output.dir, logging_dir=recipe.output.dir)
    accelerator = Accelerator(
        # On a machine without CUDA, cpu=True is what makes accelerate set up a gloo process
        # group under torchrun (MULTI_CPU) instead of running each process alone.
        cpu=not torch.cuda.is_available(),
        mixed_precision=mp,
        log_with=report_to or None,
        project_config=project,
        kwargs_handlers=[kwargs],
    )
    if report_to:
        name = recipe.output.run_name or Path(recipe.output.dir).name
        accelerator.init_trackers(name, config=_flat(recipe.to_dict()))
    return accelerator


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[f"{prefix}{k}"] = v
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


def configure_deepspeed(accelerator: Any, recipe: Recipe, grad_accum: int) -> None:
    """Fill DeepSpeed's batch geometry and clipping from the recipe (we prepare no DataLoader)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    cfg = plugin.deepspeed_config
    per = recipe.train.per_device_batch_size
    cfg["train_micro_batch_size_per_gpu"] = per
    cfg["gradient_accumulation_steps"] = grad_accum
    cfg["train_batch_size"] = per * grad_accum * accelerator.num_processes
    cfg["gradient_clipping"] = recipe.optim.max_grad_norm or 0.0


def global_sum(value: int, accelerator: Any) -> int:
    """Sum an integer over all processes (the global loss-item count of a step)."""
    if accelerator.num_processes == 1:
        return int(value)
    t = torch.tensor([value], dtype=torch.long, device=accelerator.device)
    return int(accelerator.reduce(t, reduction="sum").item())


def ranks_in_sync(model: Any, accelerator: Any) -> bool | None:
    """With several replicated processes: are all parameters bit-identical across ranks?"""
    if accelerator.num_processes == 1 or is_sharded(accelerator):
        return None
    import torch.distributed as dist

    digest = hashlib.sha256()
    for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        digest.update(p.detach().float().cpu().numpy().tobytes())
    hashes: list[Any] = [None] * accelerator.num_processes
    dist.all_gather_object(hashes, digest.hexdigest())
    ok = len(set(hashes)) == 1
    if not ok:
        log.error("parameters differ between processes after training: %s", hashes)
    return ok
