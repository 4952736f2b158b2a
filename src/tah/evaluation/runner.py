"""Evaluation runs: select the work, shard it over worker processes, grade, merge, summarise.

The flow (METHOD.md D.1, with its weaknesses fixed): the parent loads the benchmarks, works out
which (dataset, problem, sample) keys are not finished yet, splits them interleaved over J
workers (spawn start method; one device each when ``devices`` is given), and shows progress.
Each worker loads its own backend and grader, renders prompts with the tokenizer's chat
template, generates in batches, grades every output and appends one flushed line per sample to
its own shard. The parent then merges the shards atomically into ``samples.jsonl`` and
``summary.json``. Rerunning the same command skips finished samples (see ``store.py``); the
settings that change results are recorded in ``run.json`` and must match on resume.

We use multiprocessing rather than a job framework (Ray, accelerate launch) because the work
is embarrassingly parallel and the contract we need (append-only shards, skip-on-resume) is a
few dozen lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import shutil
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tah.errors import ConfigError, TaHError
from tah.evaluation.backend_base import Backend, BackendOptions, Generation, iter_summary
from tah.evaluation.backends import check_local_model, make_backend
from tah.evaluation.datasets import EvalDataset, load_eval_dataset
from tah.evaluation.grading import Grader
from tah.evaluation.prompts import PROMPT_STYLES, render_prompt
from tah.evaluation.sampling import SamplingParams, sample_seed
from tah.evaluation.store import RunDir, append_row, row_key
from tah.evaluation.summary import summarize
from tah.io import write_json
from tah.model.loading import resolve_device, resolve_dtype

log = logging.getLogger(__name__)

# finish_reason and grade_status of a sample whose prompt alone fills the model's context.
PROMPT_TOO_LONG = "prompt_too_long"

# Backends that load the model in this process with torch (device and dtype apply to them).
LOCAL_BACKENDS = ("hf", "tah", "softthink", "oracle")

# Settings that change what a sample's output is: they must match when resuming a run.
_FINGERPRINT_KEYS = (
    "model",
    "backend",
    "seed",
    "prompt_style",
    "chat_template",
    "enable_thinking",
    "sampling",
    "backend_options",
    "grading",
)


@dataclass
class EvalConfig:
    """Everything one ``tah eval`` needs; plain data so it can travel to worker processes."""

    model: str
    datasets: list[str]
    output: str
    backend: str = "hf"
    samples: int = 1
    jobs: int = 1
    limit: int | None = None
    batch_size: int = 16
    seed: int = 42
    prompt_style: str = "bare"
    chat_template: bool = True
    enable_thinking: bool | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    backend_options: BackendOptions = field(default_factory=BackendOptions)
    devices: list[str] | None = None
    data_dir: str | None = None
    answer_type: str | None = None
    grade_time_limit: float = 10.0
    grading: str = "default"
    name: str | None = None
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        check_local_model(self.backend, self.model)  # before any output directory is made
        if self.samples < 1:
            raise ConfigError(f"--samples must be >= 1, got {self.samples}")
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {self.jobs}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.prompt_style not in PROMPT_STYLES:
            raise ConfigError(f"--prompt-style {self.prompt_style!r}: use one of {PROMPT_STYLES}")
        if not self.datasets:
            raise ConfigError("no datasets given (--datasets gsm8k,math500)")
        if self.data_dir is not None and not os.path.isdir(self.data_dir):
            raise ConfigError(f"--data-dir {self.data_dir}: no such folder")
        options = self.backend_options
        threshold = options.threshold
        if threshold is not None and not (0.0 <= threshold <= 1.0):
            raise ConfigError(f"--threshold must be in [0, 1], got {threshold:g}")
        if self.backend in LOCAL_BACKENDS:
            resolve_dtype(options.dtype, resolve_device(options.device))
            for device in self.devices or []:
                resolve_device(device)

    def fingerprint(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        fp = {k: data[k] for k in _FINGERPRINT_KEYS}
        # Where it runs does not change what it computes (beyond float noise).
        fp["backend_options"] = {k: v for k, v in fp["backend_options"].items() if k != "device"}
        if fp["backend_options"].get("iter_budget") is None:  # runs from before the option
            fp["backend_options"].pop("iter_budget", None)
        return fp

    def display_name(self) -> str:
        if self.name:
            return self.name
        base = os.path.basename(os.path.normpath(self.model)) or self.model
        name = f"{base}-{self.backend}"
        if self.backend_options.decider:
            name += f"-{self.backend_options.decider}"
        if self.backend_options.threshold is not None:
            name += f"-tau{self.backend_options.threshold:g}"
        if self.backend_options.iter_budget is not None:
            name += f"-budget{self.backend_options.iter_budget:g}"
        return name

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalConfig:
        data = dict(data)
        data["sampling"] = SamplingParams(**data["sampling"])
        data["backend_options"] = BackendOptions(**data["backend_options"])
        return cls(**data)


@dataclass
class RunResult:
    """What an evaluation produced: the run folder, the summary, and this invocation's counts."""

    output: str
    summary: dict[str, Any]
    generated: int
    skipped: int
    wall_time_s: float


# ---------------------------------------------------------------------------------- selection
def _select(config: EvalConfig, datasets: list[EvalDataset]) -> list[dict[str, Any]]:
    """All work items of the current selection, ordered dataset -> problem -> sample."""
    items = []
    for ds in datasets:
        for index, problem in enumerate(ds.head(config.limit)):
            for s in range(config.samples):
                items.append(
                    {
                        "dataset": ds.name,
                        "problem_id": problem.id,
                        "problem_index": index,
                        "sample": s,
                        "seed": sample_seed(config.seed, ds.name, problem.id, s),
                        "question": problem.question,
                        "gold": problem.answer,
                        "answer_type": problem.answer_type,
                    }
                )
    return items


# ---------------------------------------------------------------------------------- workers
def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies, so a killed run leaves no orphan writers."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _work(
    config: EvalConfig,
    items: list[dict[str, Any]],
    worker: int,
    shard: str,
    emit: Callable[[tuple], None],
    parent_pid: int | None,
) -> None:
    """Generate, grade and append every item; the body of a worker (or of jobs=1 in-process)."""
    backend = make_backend(config.backend, config.model, config.backend_options)
    emit(("ready", worker, backend.info()))
    grader = Grader(config.grade_time_limit, profile=config.grading)
    try:
        with open(shard, "a", encoding="utf-8") as handle:
            for start in range(0, len(items), config.batch_size):
                batch = items[start : start + config.batch_size]
                prompts = [
                    render_prompt(
                        backend.tokenizer,
                        it["question"],
                        config.prompt_style,
                        config.chat_template,
                        config.enable_thinking,
                    )
                    for it in batch
                ]
                gens = _generate_within_context(backend, prompts, config.sampling, batch)
                for it, prompt, gen in zip(batch, prompts, gens):
                    grade = grader.grade(gen.text, it["gold"], it["answer_type"])
                    status = PROMPT_TOO_LONG if gen.finish_reason == PROMPT_TOO_LONG else None
                    row = {
                        "dataset": it["dataset"],
                        "problem_id": it["problem_id"],
                        "problem_index": it["problem_index"],
                        "sample": it["sample"],
                        "seed": it["seed"],
                        "prompt": prompt,
                        "output": gen.text,
                        "extracted": grade.extracted,
                        "gold": it["gold"],
                        "answer_type": it["answer_type"],
                        "correct": grade.correct,
                        "has_answer": grade.has_answer,
                        "grade_status": status or grade.status,
                        "n_tokens": gen.n_tokens,
                        "finish_reason": gen.finish_reason,
                        "iter": gen.iter_counts,
                        "time_s": gen.time_s,
                        "grade_time_s": grade.time_s,
                        "worker": worker,
                        "extra": gen.extra,
                    }
                    append_row(handle, row)
                    emit(("sample", worker, it["dataset"]))
                if parent_pid is not None and os.getppid() != parent_pid:
                    return  # orphaned: stop writing
    finally:
        grader.close()
        backend.close()


def _generate_within_context(
    backend: Backend,
    prompts: list[Any],
    sampling: SamplingParams,
    batch: list[dict[str, Any]],
) -> list[Generation]:
    """Generate a batch so that each row's token budget depends on its own prompt only.

    Rows are grouped by budget (``max_new_tokens`` capped by what the prompt leaves of the
    context) and each group is generated on its own; a prompt that fills the context alone gets
    a ``prompt_too_long`` record instead of stopping the run.
    """
    budgets = backend.token_budgets(prompts, sampling.max_new_tokens)
    gens: list[Generation | None] = [None] * len(prompts)
    for budget in sorted(set(budgets), reverse=True):
        rows = [i for i, b in enumerate(budgets) if b == budget]
        if budget < 1:
            log.warning(
                "%d prompt(s) do not fit the model's context of %s tokens; recorded as %s",
                len(rows),
                backend.context_length,
                PROMPT_TOO_LONG,
            )
            for i in rows:
                gens[i] = Generation("", [], 0, iter_summary([]), 0.0, PROMPT_TOO_LONG)
            continue
        params = dataclasses.replace(sampling, max_new_tokens=budget)
        out = backend.generate([prompts[i] for i in rows], params, [batch[i]["seed"] for i in rows])
        for i, gen in zip(rows, out):
            gens[i] = gen
    return [g for g in gens if g is not None]


def _worker_entry(
    config_data: dict[str, Any],
    items: list[dict[str, Any]],
    worker: int,
    shard: str,
    messages: Any,
    parent_pid: int,
    threads: int,
) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    try:
        config = EvalConfig.from_dict(config_data)
        if config.backend != "scripted":  # share the cores instead of oversubscribing them
            import torch
            from transformers.utils import logging as hf_logging

            torch.set_num_threads(max(1, threads))
            hf_logging.disable_progress_bar()  # J interleaved "Loading weights" bars help nobody
        _work(config, items, worker, shard, messages.put, parent_pid)
        messages.put(("done", worker, None))
    except BaseException as exc:  # report everything to the parent
        disk_full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        if disk_full:
            detail = f"no space left on the device ({exc}); free some space and rerun"
        else:
            detail = str(exc) if isinstance(exc, TaHError) else traceback.format_exc()
        messages.put(("error", worker, detail))
        raise SystemExit(1) from None


def _progress(config: EvalConfig, total: int) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not config.progress,
    )


def _run_workers(config: EvalConfig, pending: list[dict[str, Any]], run: RunDir) -> dict[str, Any]:
    """Run the pending items on J workers; returns the backend info the workers reported."""
    jobs = max(1, min(config.jobs, len(pending)))
    run.shards.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {}
    with _progress(config, len(pending)) as progress:
        task = progress.add_task(f"{config.display_name()}", total=len(pending))

        def handle(msg: tuple) -> None:
            kind, _worker, payload = msg
            if kind == "ready" and not info:
                info.update(payload)
            elif kind == "sample":
                progress.advance(task)

        if jobs == 1 and not config.devices:
            _work(config, pending, 0, str(run.shard(0)), handle, None)
            return info

        ctx = mp.get_context("spawn")
        messages = ctx.Queue()
        threads = max(1, (os.cpu_count() or 1) // jobs)
        data = dataclasses.asdict(config)
        procs = []
        for j in range(jobs):
            cfg = dict(data)
            if config.devices:
                cfg["backend_options"] = {
                    **data["backend_options"],
                    "device": config.devices[j % len(config.devices)],
                }
            proc = ctx.Process(
                target=_worker_entry,
                args=(cfg, pending[j::jobs], j, str(run.shard(j)), messages, os.getpid(), threads),
                name=f"tah-eval-{j}",
            )
            proc.start()
            procs.append(proc)
        errors: dict[int, str] = {}
        done: set[int] = set()
        try:
            while len(done) + len(errors) < jobs:
                try:
                    msg = messages.get(timeout=0.5)
                except queue_mod.Empty:
                    for j, proc in enumerate(procs):
                        if not proc.is_alive() and j not in done and j not in errors:
                            # Drain late messages before declaring a silent death.
                            time.sleep(0.2)
                            with contextlib.suppress(queue_mod.Empty):
                                while True:
                                    late = messages.get_nowait()
                                    handle(late)
                                    if late[0] == "done":
                                        done.add(late[1])
                                    elif late[0] == "error":
                                        errors[late[1]] = late[2]
                            if j not in done and j not in errors:
                                errors[j] = f"worker {j} exited with code {proc.exitcode}"
                    continue
                handle(msg)
                if msg[0] == "done":
                    done.add(msg[1])
                elif msg[0] == "error":
                    errors[msg[1]] = msg[2]
        finally:
            for proc in procs:
                proc.join(timeout=5 if not errors else 0.1)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=5)
        if errors:
            first = min(errors)
            raise TaHError(
                f"{len(errors)} of {jobs} eval workers failed; finished samples are kept and a "
                f"rerun resumes. Worker {first}: {errors[first].strip()}"
            )
    return info


# ---------------------------------------------------------------------------------- the run
def _check_resume(config: EvalConfig, run: RunDir) -> dict[str, Any] | None:
    if not run.exists():
        return None
    previous = run.read_run()
    if config.overwrite or not run.finished():
        return None  # nothing to resume: a run that produced no sample never blocks a rerun
    old = previous.get("fingerprint", {})
    new = config.fingerprint()
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differ:
        raise ConfigError(
            f"{run.root} holds a run with different settings ({', '.join(differ)}); resume needs "
            f"the same settings. Use another --output, or --overwrite to discard it."
        )
    return previous


def run_eval(config: EvalConfig) -> RunResult:
    """Evaluate (or resume) a run; writes samples.jsonl and summary.json under ``config.output``."""
    config.validate()
    started = time.perf_counter()
    datasets = [
        load_eval_dataset(name, config.data_dir, config.answer_type) for name in config.datasets
    ]
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ConfigError(f"--datasets names repeat after loading: {names}")
    run = RunDir(config.output)
    created = not run.root.exists()
    run.root.mkdir(parents=True, exist_ok=True)
    run.lock()
    try:
        return _run_locked(config, run, datasets, started)
    except BaseException:
        if created and not run.finished():
            run.unlock()
            shutil.rmtree(run.root, ignore_errors=True)  # leave no half-made folder behind
        raise
    finally:
        run.unlock()


def _run_locked(
    config: EvalConfig, run: RunDir, datasets: list[EvalDataset], started: float
) -> RunResult:
    names = [d.name for d in datasets]
    previous = _check_resume(config, run)
    if config.overwrite and run.exists():
        for path in (run.shards, run.samples, run.summary):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    record = {
        "name": config.display_name(),
        "fingerprint": config.fingerprint(),
        "config": dataclasses.asdict(config),
        "datasets": {d.name: {"source": d.source, "n_problems": len(d.problems)} for d in datasets},
        "backend_info": (previous or {}).get("backend_info", {}),
    }
    write_json(run.run_json, record)
    if run.repair_shards():
        log.info("trimmed a partly written line left by an interrupted run")
    selection = _select(config, datasets)
    finished = run.finished()
    pending = [it for it in selection if row_key(it) not in finished]
    skipped = len(selection) - len(pending)
    if skipped:
        log.info("resuming: %d of %d samples already finished", skipped, len(selection))
    if pending:
        info = _run_workers(config, pending, run)
        if info:
            record["backend_info"] = info
            write_json(run.run_json, record)
        finished = run.finished()
    rows = [finished[row_key(it)] for it in selection if row_key(it) in finished]
    missing = len(selection) - len(rows)
    if missing:
        raise TaHError(f"{missing} samples are missing after the run; rerun to resume")
    run.write_samples(rows)
    summary = summarize(rows, names)
    wall = time.perf_counter() - started
    summary.update(
        {
            "name": record["name"],
            "model": config.model,
            "backend": config.backend,
            "threshold": config.backend_options.threshold,
            "decider": config.backend_options.decider,
            "backend_info": record["backend_info"],
            "samples_per_problem": config.samples,
            "sampling": config.sampling.to_dict(),
            "prompt_style": config.prompt_style,
            "last_invocation": {
                "generated": len(pending),
                "skipped": skipped,
                "wall_time_s": wall,
            },
        }
    )
    write_json(run.summary, summary)
    return RunResult(str(run.root), summary, len(pending), skipped, wall)
