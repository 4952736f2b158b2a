"""The training loop shared by every stage, on one CPU or many GPUs through ``accelerate``.

Why our own loop rather than HF ``Trainer``: the TaH stages need (1) loss normalisation by the
supervised-token count of the whole *global* batch (all micro-batches, all processes), counted
before the forward, so the loss does not depend on how the batch is split; (2) a data order
that is a pure function of (seed, epoch), so ``--resume`` jumps to the exact batch; (3) stage-2
checks that only the decider trains; (4) TaH's own checkpoint layout. ``accelerate`` still does
what it is good at: process groups, DDP / FSDP / DeepSpeed wrapping, mixed precision, gradient
accumulation boundaries (``no_sync``) and trackers.

One optimiser step = every process runs ``grad_accum`` micro-batches of
``per_device_batch_size`` rows (see :class:`~tah.training.sampler.StepPlan`). The loss of a
micro-batch is ``sum / N_global``, scaled so that after accelerate's division by the
accumulation steps and DDP's average over processes the gradient is that of
``sum over the global batch / N_global``.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tah.errors import CheckpointError, ConfigError
from tah.io import atomic_file, write_json
from tah.training import checkpoint as ckpt
from tah.training import distributed, stages
from tah.training.collate import Collator
from tah.training.data import TrainingData, load_training_data
from tah.training.metrics import JsonlLog, StepStats, check_trackers, reduce_stats
from tah.training.optim import build_optimizer, build_scheduler, parameter_groups
from tah.training.recipe import Recipe
from tah.training.sampler import StepPlan

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
FINAL_DIR = "final"


@dataclass
class TrainResult:
    """What a finished run produced."""

    output_dir: Path
    final_dir: Path
    global_step: int
    total_steps: int
    last: dict[str, Any] = field(default_factory=dict)
    ranks_in_sync: bool | None = None
    is_main_process: bool = True


def train(
    recipe: Recipe,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    stop_after: int | None = None,
) -> TrainResult:
    """Run the recipe. ``resume`` = checkpoint dir or ``auto``; ``stop_after`` = stop (with a
    checkpoint) after that many optimiser steps, e.g. to test resuming."""
    from accelerate.utils import set_seed

    out_dir = Path(recipe.output.dir)
    report_to = check_trackers(recipe.output.report_to)
    resume_dir = ckpt.resolve_resume(resume, out_dir) if resume else None
    accelerator = distributed.make_accelerator(recipe, report_to)
    _check_output_dir(out_dir, resume_dir, overwrite, accelerator.is_main_process)
    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.device.type == "cpu":
        torch.set_flush_denormal(True)  # denormals slow CPU maths several-fold
    set_seed(recipe.train.seed)
    grad_accum = recipe.grad_accum_for(world)
    if accelerator.gradient_accumulation_steps != grad_accum:
        accelerator.gradient_accumulation_steps = grad_accum

    # ---------------------------------------------------------------- checks before compute
    stages.resolve_gguf_sources(recipe)
    stages.check_gradient_checkpointing(recipe)
    info = stages.describe_model(recipe, resume_dir)
    data = _load_data(recipe, recipe.data.train, info)
    eval_data = _load_data(recipe, recipe.data.eval, info) if recipe.data.eval else None
    plan = StepPlan(
        len(data), recipe.train.per_device_batch_size, grad_accum, world, recipe.train.seed
    )
    total_steps = recipe.train.max_steps or recipe.train.epochs * plan.steps_per_epoch
    settings = _loss_settings(recipe, data)
    payload = ckpt.load_trainer_state(resume_dir) if resume_dir else None
    if payload is not None:
        _check_resume(payload, recipe, plan, total_steps, resume_dir)

    # ---------------------------------------------------------------- model and optimiser
    model = stages.build_model(recipe, info, resume_dir)
    stages.set_trainable(recipe, model)
    stages.enable_gradient_checkpointing(recipe, model)
    if recipe.stage == "stage2":
        settings.threshold = float(model.config.threshold)
    tokenizer = info.tokenizer if recipe.stage == "standard" else model.tokenizer
    collate = Collator(stages.pad_token_id(tokenizer, model))
    groups, opt_names = parameter_groups(model.named_parameters(), recipe.optim.weight_decay)
    optimizer = build_optimizer(groups, recipe.optim)
    scheduler = build_scheduler(optimizer, recipe.optim, total_steps)
    distributed.configure_deepspeed(accelerator, recipe, grad_accum)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    global_step = 0
    train_log = JsonlLog(out_dir / LOG_FILE, enabled=accelerator.is_main_process)
    if payload is not None:
        if payload["param_names"] != opt_names:
            raise CheckpointError(
                f"{resume_dir}: the trainable parameters differ from the checkpoint's (another "
                "stage, adapter or trainable flags); resume with the recipe it was made with"
            )
        ckpt.restore_optimizer(payload, resume_dir, accelerator, optimizer)
        scheduler.load_state_dict(payload["scheduler"])
        global_step = int(payload["global_step"])
        ckpt.restore_rng(payload, rank)
        if accelerator.is_main_process:
            train_log.truncate_after(global_step)
        log.info("resumed from %s at step %d", resume_dir, global_step)
    elif accelerator.is_main_process:
        train_log.truncate_after(-1)
    if accelerator.is_main_process:
        import yaml

        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(out_dir / "recipe.yaml", "w", encoding="utf-8") as handle:
            yaml.safe_dump(recipe.to_dict(), handle, sort_keys=False)
        train_log.write(
            {
                "event": "start",
                "step": global_step,
                "stage": recipe.stage,
                "examples": len(data),
                "skipped_lines": data.skipped_lines,
                "processes": world,
                "grad_accum": grad_accum,
                "global_batch": plan.global_batch,
                "steps_per_epoch": plan.steps_per_epoch,
                "total_steps": total_steps,
                "trainable_parameters": sum(
                    p.numel() for p in unwrapped.parameters() if p.requires_grad
                ),
                "pos_weight": settings.pos_weight if recipe.stage == "stage2" else None,
                "mixed_precision": accelerator.mixed_precision,
            }
        )

    def save(target: Path, with_state: bool = True) -> None:
        epoch, step_in_epoch = divmod(global_step, plan.steps_per_epoch)
        state = {
            "global_step": global_step,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "total_steps": total_steps,
            "stage": recipe.stage,
            "num_examples": len(data),
            "global_batch": plan.global_batch,
            "seed": recipe.train.seed,
            "param_names": opt_names,
            "scheduler": scheduler.state_dict(),
            "pos_weight": settings.pos_weight,
        }
        ckpt.save_checkpoint(
            target,
            accelerator,
            lambda d: stages.save_model(recipe, unwrapped, tokenizer, d),
            state,
            optimizer,
            model,
            with_state=with_state,
        )

    # ---------------------------------------------------------------- the loop
    stop_at = total_steps if stop_after is None else min(total_steps, global_step + stop_after)
    progress = _Progress(recipe, accelerator.is_main_process, total_steps, global_step)
    stages.prepare_for_training(recipe, unwrapped)
    interval, interval_steps, interval_start = StepStats(), 0, time.perf_counter()
    last: dict[str, Any] = {}
    order_cache: dict[int, list[int]] = {}
    try:
        while global_step < stop_at:
            epoch, step_in_epoch = divmod(global_step, plan.steps_per_epoch)
            if epoch not in order_cache:
                order_cache.clear()
                order_cache[epoch] = plan.epoch_order(epoch)
            micro = plan.micro_batches(epoch, step_in_epoch, rank, order_cache[epoch])
            batches = [
                {k: v.to(accelerator.device) for k, v in collate(data.examples(idx)).items()}
                for idx in micro
            ]
            local_items = sum(stages.count_items(recipe, b, settings) for b in batches)
            global_items = distributed.global_sum(local_items, accelerator)
            scale = world * grad_accum / max(global_items, 1)
            step_stats, grad_norm = StepStats(), None
            for batch in batches:
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        loss_sum, stats = stages.micro_step(recipe, model, batch, settings)
                    accelerator.backward(loss_sum * scale)
                    if accelerator.sync_gradients and recipe.optim.max_grad_norm:
                        grad_norm = accelerator.clip_grad_norm_(
                            [p for p in model.parameters() if p.requires_grad],
                            recipe.optim.max_grad_norm,
                        )
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                stats.loss = float(loss_sum.detach()) / max(global_items, 1)
                step_stats.add(stats)
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            global_step += 1
            step_stats = reduce_stats(step_stats, accelerator)
            interval.add(step_stats)
            interval_steps += 1
            progress.advance(step_stats.loss, lr)

            if global_step % recipe.output.log_every == 0 or global_step == stop_at:
                elapsed = time.perf_counter() - interval_start
                last = _record(
                    recipe, "train", global_step, plan, interval, interval_steps, elapsed
                )
                last["lr"] = lr
                last["grad_norm"] = None if grad_norm is None else float(grad_norm)
                train_log.write(last)
                accelerator.log({k: v for k, v in last.items() if _is_number(v)}, step=global_step)
                interval, interval_steps, interval_start = StepStats(), 0, time.perf_counter()

            epoch_end = global_step % plan.steps_per_epoch == 0
            if eval_data is not None and (
                (recipe.output.eval_every and global_step % recipe.output.eval_every == 0)
                or (recipe.output.eval_each_epoch and epoch_end)
            ):
                record = evaluate(
                    recipe, model, eval_data, collate, settings, accelerator, global_step
                )
                train_log.write(record)
                accelerator.log(
                    {f"eval/{k}": v for k, v in record.items() if _is_number(v)}, step=global_step
                )
                stages.prepare_for_training(recipe, unwrapped)
            if global_step < total_steps and (
                (recipe.output.save_every and global_step % recipe.output.save_every == 0)
                or (recipe.output.save_each_epoch and epoch_end)
                or global_step == stop_at
            ):
                save(out_dir / f"checkpoint-{global_step}")
                if accelerator.is_main_process:
                    ckpt.prune_checkpoints(out_dir, recipe.output.keep_last)
    finally:
        progress.close()

    final_dir = out_dir / FINAL_DIR
    in_sync = distributed.ranks_in_sync(unwrapped, accelerator)
    if global_step >= total_steps:
        save(final_dir, with_state=False)
    if accelerator.is_main_process:
        end = {"event": "end", "step": global_step, "finished": global_step >= total_steps}
        if in_sync is not None:
            end["ranks_in_sync"] = in_sync
        train_log.write(end)
        write_json(out_dir / "summary.json", {**last, **end, "output": str(final_dir)})
    train_log.close()
    accelerator.end_training()
    return TrainResult(
        out_dir, final_dir, global_step, total_steps, last, in_sync, accelerator.is_main_process
    )


# ------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(
    recipe: Recipe,
    model: Any,
    data: TrainingData,
    collate: Collator,
    settings: stages.LossSettings,
    accelerator: Any,
    step: int,
) -> dict[str, Any]:
    """Mean loss and metrics over ``data`` (rows split round-robin over processes)."""
    model.eval()
    per = recipe.train.per_device_batch_size
    mine = list(range(accelerator.process_index, len(data), accelerator.num_processes))
    total, start = StepStats(), time.perf_counter()
    loss_sum = 0.0
    for s in range(0, len(mine), per):
        batch = {
            k: v.to(accelerator.device)
            for k, v in collate(data.examples(mine[s : s + per])).items()
        }
        with accelerator.autocast():
            loss, stats = stages.micro_step(recipe, model, batch, settings, training=False)
        loss_sum += float(loss)
        total.add(stats)
    total.loss = loss_sum
    total = reduce_stats(total, accelerator)
    total.loss = total.loss / max(total.items, 1)
    plan_like = StepPlan(len(data), per, 1, 1, 0)
    record = _record(recipe, "eval", step, plan_like, total, 1, time.perf_counter() - start)
    record["loss"] = total.loss
    return record


# ------------------------------------------------------------------ helpers
def _record(recipe, event, step, plan, stats: StepStats, steps: int, elapsed: float) -> dict:
    summary = stats.summary(
        with_decider=recipe.stage == "stage2", with_depth=recipe.stage in ("stage1", "alwaysthink")
    )
    summary["loss"] = stats.loss / max(steps, 1)
    return {
        "event": event,
        "step": step,
        "epoch": round(step / plan.steps_per_epoch, 4),
        **summary,
        "tokens": int(stats.tokens),
        "tokens_per_s": stats.tokens / elapsed if elapsed > 0 else None,
        "step_time_s": elapsed / max(steps, 1),
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _load_data(recipe: Recipe, path: str, info: stages.ModelInfo) -> TrainingData:
    d = recipe.data
    return load_training_data(
        path,
        max_iter=info.max_iter,
        strategy="mismatch" if recipe.iter_strategy == "mismatch" else recipe.iter_strategy,
        max_length=d.max_length,
        max_length_action=d.max_length_action,
        on_bad_line=d.on_bad_line,
        require_hard=d.require_hard,
        max_examples=d.max_examples,
        seed=recipe.train.seed,
        tokenizer=info.tokenizer,
        vocab_size=info.vocab_size,
        query_iter=d.query_iter,
    )


def _loss_settings(recipe: Recipe, data: TrainingData) -> stages.LossSettings:
    settings = stages.LossSettings(
        decider_targets=recipe.loss.decider_targets,
        ensure_deep_pass=recipe.train.ensure_deep_pass,
    )
    if recipe.stage == "stage2":
        pw = recipe.loss.pos_weight
        if pw == "auto":
            pos, neg = data.decider_balance(recipe.loss.decider_targets)
            if pos == 0:
                raise ConfigError(
                    f"{data.source}: no hard tokens to learn from, so loss.pos_weight: auto is "
                    "undefined; check the labels or set loss.pos_weight"
                )
            pw = neg / pos
            log.info("pos_weight auto = %d negatives / %d positives = %.3f", neg, pos, pw)
        settings.pos_weight = float(pw)
    return settings


def _check_output_dir(out_dir: Path, resume_dir: Path | None, overwrite: bool, main: bool) -> None:
    """Refuse to mix a new run into an old one; ``overwrite`` removes the old run's artefacts."""
    if resume_dir is not None:
        return
    existing = ckpt.checkpoint_dirs(out_dir)
    if overwrite:
        if main:
            for _, path in existing:
                shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(out_dir / FINAL_DIR, ignore_errors=True)
        return
    if existing or (out_dir / FINAL_DIR).exists() or (out_dir / LOG_FILE).exists():
        raise ConfigError(
            f"output dir {out_dir} already holds a run; pass --resume auto to continue it, "
            "--overwrite to start over, or choose another output.dir"
        )


def _check_resume(payload: dict, recipe: Recipe, plan: StepPlan, total_steps: int, path) -> None:
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


class _Progress:
    """A rich progress bar on the main process (no-op elsewhere or when disabled)."""

    def __init__(self, recipe: Recipe, enabled: bool, total: int, done: int) -> None:
        self.bar = None
        if not (enabled and recipe.output.progress):
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn(f"[bold]{recipe.stage}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.bar.start()
        self.task = self.bar.add_task(
            "train", total=total, completed=done, loss=float("nan"), lr=0.0
        )

    def advance(self, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, loss=loss, lr=lr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
