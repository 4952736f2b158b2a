"""Evaluation runs: select the work, shard it over worker processes, grade, merge, summarise.

The flow (docs/method.md §11, with its weaknesses fixed): the parent loads the benchmarks, works out
which (dataset, problem, sample) keys are not finished yet, splits them interleaved over J
workers (spawn start method; one device each when ``devices`` is given), and shows progress.
Each worker loads its own backend and grader, renders prompts with the tokenizer's chat
template, generates in batches, grades every output and appends one flushed line per sample to
its own shard. The parent then merges the shards atomically into ``samples.jsonl`` and
``summary.json``. Rerunning the same command skips finished samples (see ``store.py``); the
settings that change results are recorded in ``run.json`` and must match on resume. The
settings live in ``eval_config.py``, the worker side in ``workers.py``.

We use multiprocessing rather than a job framework (Ray, accelerate launch) because the work
is embarrassingly parallel and the contract we need (append-only shards, skip-on-resume) is a
few dozen lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import shutil
import time
from dataclasses import dataclass
from typing import Any

from tah.errors import ConfigError, TaHError
from tah.evaluation.datasets import EvalDataset, load_eval_dataset
from tah.evaluation.eval_config import EvalConfig
from tah.evaluation.sampling import sample_seed
from tah.evaluation.store import RunDir, row_key
from tah.evaluation.summary import summarize
from tah.evaluation.workers import generate_and_grade, worker_main
from tah.io import write_json

log = logging.getLogger(__name__)


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
            generate_and_grade(config, pending, 0, str(run.shard(0)), handle, None)
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
                target=worker_main,
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
