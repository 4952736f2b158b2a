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
from tah.training.progress import TrainingProgress
from tah.training.recipe import Recipe
from tah.training.run_checks import FINAL_DIR, LOG_FILE, check_output_dir, check_resume
from tah.training.sampler import StepPlan

log = logging.getLogger(__name__)


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


@dataclass
class _Run:
    """The state of one training run, shared by the named steps of :func:`train`."""

    recipe: Recipe
    accelerator: Any
    out_dir: Path
    resume_dir: Path | None
    rank: int = 0
    world: int = 1
    grad_accum: int = 1
    info: stages.ModelInfo | None = None
    data: Any = None
    eval_data: Any = None
    plan: Any = None
    total_steps: int = 0
    settings: Any = None
    payload: dict[str, Any] | None = None
    model: Any = None
    unwrapped: Any = None
    tokenizer: Any = None
    collate: Any = None
    optimizer: Any = None
    scheduler: Any = None
    opt_names: list[str] = field(default_factory=list)
    train_log: Any = None
    global_step: int = 0


def train(
    recipe: Recipe,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    stop_after: int | None = None,
) -> TrainResult:
    """Run the recipe. ``resume`` = checkpoint dir or ``auto``; ``stop_after`` = stop (with a
    checkpoint) after that many optimiser steps, e.g. to test resuming."""
    run = _start(recipe, resume, overwrite)
    _check_inputs(run)  # every input problem surfaces here, before any compute
    _build(run)
    _restore_or_begin(run)
    last = _loop(run, stop_after)
    return _finish(run, last)


def _start(recipe: Recipe, resume: str | None, overwrite: bool) -> _Run:
    """Accelerator, output folder, seeds and gradient accumulation."""
    from accelerate.utils import set_seed

    out_dir = Path(recipe.output.dir)
    report_to = check_trackers(recipe.output.report_to)
    resume_dir = ckpt.resolve_resume(resume, out_dir) if resume else None
    accelerator = distributed.make_accelerator(recipe, report_to)
    check_output_dir(out_dir, resume_dir, overwrite, accelerator.is_main_process)
    run = _Run(recipe, accelerator, out_dir, resume_dir)
    run.rank, run.world = accelerator.process_index, accelerator.num_processes
    if accelerator.device.type == "cpu":
        torch.set_flush_denormal(True)  # denormals slow CPU maths several-fold
    set_seed(recipe.train.seed)
    run.grad_accum = recipe.grad_accum_for(run.world)
    if accelerator.gradient_accumulation_steps != run.grad_accum:
        accelerator.gradient_accumulation_steps = run.grad_accum
    return run


def _check_inputs(run: _Run) -> None:
    """Model description, data, step plan, loss settings and the resumed state, all checked."""
    recipe = run.recipe
    stages.resolve_gguf_sources(recipe)
    stages.check_gradient_checkpointing(recipe)
    info = stages.describe_model(recipe, run.resume_dir)
    run.data = _load_data(recipe, recipe.data.train, info)
    run.eval_data = _load_data(recipe, recipe.data.eval, info) if recipe.data.eval else None
    run.plan = StepPlan(
        len(run.data),
        recipe.train.per_device_batch_size,
        run.grad_accum,
        run.world,
        recipe.train.seed,
    )
    run.total_steps = recipe.train.max_steps or recipe.train.epochs * run.plan.steps_per_epoch
    run.settings = _loss_settings(recipe, run.data)
    run.payload = ckpt.load_trainer_state(run.resume_dir) if run.resume_dir else None
    if run.payload is not None:
        check_resume(run.payload, recipe, run.plan, run.total_steps, run.resume_dir)
    run.info = info


def _build(run: _Run) -> None:
    """Model, collator, optimiser and scheduler, prepared by accelerate."""
    recipe = run.recipe
    info = run.info
    model = stages.build_model(recipe, info, run.resume_dir)
    stages.set_trainable(recipe, model)
    stages.enable_gradient_checkpointing(recipe, model)
    if recipe.stage == "stage2":
        run.settings.threshold = float(model.config.threshold)
    run.tokenizer = info.tokenizer if recipe.stage == "standard" else model.tokenizer
    run.collate = Collator(stages.pad_token_id(run.tokenizer, model))
    groups, run.opt_names = parameter_groups(model.named_parameters(), recipe.optim.weight_decay)
    optimizer = build_optimizer(groups, recipe.optim)
    run.scheduler = build_scheduler(optimizer, recipe.optim, run.total_steps)
    distributed.configure_deepspeed(run.accelerator, recipe, run.grad_accum)
    run.model, run.optimizer = run.accelerator.prepare(model, optimizer)
    run.unwrapped = run.accelerator.unwrap_model(run.model)


def _restore_or_begin(run: _Run) -> None:
    """Load the resumed optimiser, scheduler, step and RNG state; write recipe.yaml and the
    log's start record."""
    recipe, accelerator, payload = run.recipe, run.accelerator, run.payload
    run.train_log = JsonlLog(run.out_dir / LOG_FILE, enabled=accelerator.is_main_process)
    if payload is not None:
        if payload["param_names"] != run.opt_names:
            raise CheckpointError(
                f"{run.resume_dir}: the trainable parameters differ from the checkpoint's (another "
                "stage, adapter or trainable flags); resume with the recipe it was made with"
            )
        ckpt.restore_optimizer(payload, run.resume_dir, accelerator, run.optimizer)
        run.scheduler.load_state_dict(payload["scheduler"])
        run.global_step = int(payload["global_step"])
        ckpt.restore_rng(payload, run.rank)
        if accelerator.is_main_process:
            run.train_log.truncate_after(run.global_step)
        log.info("resumed from %s at step %d", run.resume_dir, run.global_step)
    elif accelerator.is_main_process:
        run.train_log.truncate_after(-1)
    if not accelerator.is_main_process:
        return
    import yaml

    run.out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(run.out_dir / "recipe.yaml", "w", encoding="utf-8") as handle:
        yaml.safe_dump(recipe.to_dict(), handle, sort_keys=False)
    run.train_log.write(
        {
            "event": "start",
            "step": run.global_step,
            "stage": recipe.stage,
            "examples": len(run.data),
            "skipped_lines": run.data.skipped_lines,
            "processes": run.world,
            "grad_accum": run.grad_accum,
            "global_batch": run.plan.global_batch,
            "steps_per_epoch": run.plan.steps_per_epoch,
            "total_steps": run.total_steps,
            "trainable_parameters": sum(
                p.numel() for p in run.unwrapped.parameters() if p.requires_grad
            ),
            "pos_weight": run.settings.pos_weight if recipe.stage == "stage2" else None,
            "mixed_precision": accelerator.mixed_precision,
        }
    )


def _save(run: _Run, target: Path, with_state: bool = True) -> None:
    """A checkpoint of the model (and, with ``with_state``, everything a resume needs)."""
    epoch, step_in_epoch = divmod(run.global_step, run.plan.steps_per_epoch)
    state = {
        "global_step": run.global_step,
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "total_steps": run.total_steps,
        "stage": run.recipe.stage,
        "num_examples": len(run.data),
        "global_batch": run.plan.global_batch,
        "seed": run.recipe.train.seed,
        "param_names": run.opt_names,
        "scheduler": run.scheduler.state_dict(),
        "pos_weight": run.settings.pos_weight,
    }
    ckpt.save_checkpoint(
        target,
        run.accelerator,
        lambda d: stages.save_model(run.recipe, run.unwrapped, run.tokenizer, d),
        state,
        run.optimizer,
        run.model,
        with_state=with_state,
    )


def _optimizer_step(run: _Run, micro: list[list[int]]) -> tuple[StepStats, Any]:
    """One optimiser step over this process's micro-batches; the loss is normalised by the
    supervised-item count of the whole global batch."""
    recipe, accelerator, model = run.recipe, run.accelerator, run.model
    batches = [
        {k: v.to(accelerator.device) for k, v in run.collate(run.data.examples(idx)).items()}
        for idx in micro
    ]
    local_items = sum(stages.count_items(recipe, b, run.settings) for b in batches)
    global_items = distributed.global_sum(local_items, accelerator)
    scale = run.world * run.grad_accum / max(global_items, 1)
    step_stats, grad_norm = StepStats(), None
    for batch in batches:
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss_sum, stats = stages.micro_step(recipe, model, batch, run.settings)
            accelerator.backward(loss_sum * scale)
            if accelerator.sync_gradients and recipe.optim.max_grad_norm:
                grad_norm = accelerator.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad],
                    recipe.optim.max_grad_norm,
                )
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        stats.loss = float(loss_sum.detach()) / max(global_items, 1)
        step_stats.add(stats)
    return step_stats, grad_norm


def _loop(run: _Run, stop_after: int | None) -> dict[str, Any]:
    """Optimiser steps until the end (or ``stop_after`` more), logging, evaluating and saving
    on the recipe's schedule; returns the last logged record."""
    recipe, accelerator, plan = run.recipe, run.accelerator, run.plan
    total_steps = run.total_steps
    stop_at = total_steps if stop_after is None else min(total_steps, run.global_step + stop_after)
    progress = TrainingProgress(recipe, accelerator.is_main_process, total_steps, run.global_step)
    stages.prepare_for_training(recipe, run.unwrapped)
    interval, interval_steps, interval_start = StepStats(), 0, time.perf_counter()
    last: dict[str, Any] = {}
    order_cache: dict[int, list[int]] = {}
    try:
        while run.global_step < stop_at:
            epoch, step_in_epoch = divmod(run.global_step, plan.steps_per_epoch)
            if epoch not in order_cache:
                order_cache.clear()
                order_cache[epoch] = plan.epoch_order(epoch)
            micro = plan.micro_batches(epoch, step_in_epoch, run.rank, order_cache[epoch])
            step_stats, grad_norm = _optimizer_step(run, micro)
            lr = run.scheduler.get_last_lr()[0]
            run.scheduler.step()
            run.global_step += 1
            step = run.global_step
            step_stats = reduce_stats(step_stats, accelerator)
            interval.add(step_stats)
            interval_steps += 1
            progress.advance(step_stats.loss, lr)

            if step % recipe.output.log_every == 0 or step == stop_at:
                elapsed = time.perf_counter() - interval_start
                last = _record(recipe, "train", step, plan, interval, interval_steps, elapsed)
                last["lr"] = lr
                last["grad_norm"] = None if grad_norm is None else float(grad_norm)
                run.train_log.write(last)
                accelerator.log({k: v for k, v in last.items() if _is_number(v)}, step=step)
                interval, interval_steps, interval_start = StepStats(), 0, time.perf_counter()

            epoch_end = step % plan.steps_per_epoch == 0
            if run.eval_data is not None and (
                (recipe.output.eval_every and step % recipe.output.eval_every == 0)
                or (recipe.output.eval_each_epoch and epoch_end)
            ):
                record = evaluate(
                    recipe, run.model, run.eval_data, run.collate, run.settings, accelerator, step
                )
                run.train_log.write(record)
                accelerator.log(
                    {f"eval/{k}": v for k, v in record.items() if _is_number(v)}, step=step
                )
                stages.prepare_for_training(recipe, run.unwrapped)
            if step < total_steps and (
                (recipe.output.save_every and step % recipe.output.save_every == 0)
                or (recipe.output.save_each_epoch and epoch_end)
                or step == stop_at
            ):
                _save(run, run.out_dir / f"checkpoint-{step}")
                if accelerator.is_main_process:
                    ckpt.prune_checkpoints(run.out_dir, recipe.output.keep_last)
    finally:
        progress.close()
    return last


def _finish(run: _Run, last: dict[str, Any]) -> TrainResult:
    """The final model (when all steps ran), the log's end record and summary.json."""
    accelerator = run.accelerator
    final_dir = run.out_dir / FINAL_DIR
    in_sync = distributed.ranks_in_sync(run.unwrapped, accelerator)
    finished = run.global_step >= run.total_steps
    if finished:
        _save(run, final_dir, with_state=False)
    if accelerator.is_main_process:
        end = {"event": "end", "step": run.global_step, "finished": finished}
        if in_sync is not None:
            end["ranks_in_sync"] = in_sync
        run.train_log.write(end)
        write_json(run.out_dir / "summary.json", {**last, **end, "output": str(final_dir)})
    run.train_log.close()
    accelerator.end_training()
    return TrainResult(
        run.out_dir,
        final_dir,
        run.global_step,
        run.total_steps,
        last,
        in_sync,
        accelerator.is_main_process,
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
