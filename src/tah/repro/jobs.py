"""A small dependency-aware job runner: the reproduction's steps on W single-threaded workers.

Why not subprocesses of the ``tah`` command: starting Python with torch, transformers, peft and
accelerate costs ~5 s of CPU per process, and the reproduction runs ~15 steps per seed. Why not
one process: a tiny model cannot use two cores well (a 0.8 M-parameter matmul is too small to
split), and two threads per process collapse when the machine is shared (OpenMP spin-waits;
we measured 5x slower steps). So W long-lived worker processes, each pinned to one thread,
import the libraries once and run the steps as *the exact CLI*: a job is ``tah.cli.main(argv)``
(or a named function for the few steps that have no command), with its output sent to a log
file. The parent schedules jobs whose dependencies are done, longest first, and draws progress
bars by polling each job's own progress (e.g. the step counter in ``train_log.jsonl``).

A job whose ``done`` marker exists is skipped, so rerunning the same reproduction resumes.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import importlib
import multiprocessing as mp
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tah.errors import TaHError

__all__ = ["Job", "JobFailed", "JobResult", "run_jobs"]

ProgressFn = Callable[[], tuple[float, float] | None]


@dataclass
class Job:
    """One step. ``argv`` runs ``tah <argv>``; ``call`` = ("module:function", kwargs) instead.

    ``done`` is a path whose existence means the job already finished (resume). ``progress``
    returns (completed, total) or None while unknown. Ready jobs start by ``priority`` (lower
    first, e.g. the seed's index, so the first seed finishes first), then by the ``cost`` of
    the longest chain of jobs they start (the critical path, largest first), so that a cheap
    step in front of an expensive one is not left to the end.
    """

    name: str
    log: Path
    argv: list[str] | None = None
    call: tuple[str, dict[str, Any]] | None = None
    deps: list[str] = field(default_factory=list)
    done: Path | None = None
    progress: ProgressFn | None = None
    cost: float = 1.0
    priority: int = 0


@dataclass
class JobResult:
    name: str
    skipped: bool
    wall_s: float = 0.0
    cpu_s: float = 0.0
    value: Any = None


class JobFailed(TaHError):
    """A step failed; the message names it and quotes the end of its log."""


# ------------------------------------------------------------------ the worker side
def _exit_with_parent(parent: int) -> None:
    """Ask Linux to end this worker when the orchestrator dies (``PR_SET_PDEATHSIG``).

    Why: killed by SIGTERM or SIGKILL, the orchestrator skips the pool's shutdown, and its
    workers would run their jobs on unwatched; a rerun then starts the same job beside them,
    both writing one job folder. Elsewhere (no prctl) the workers outlive it as before.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the orchestrator died before the request took effect
        os._exit(1)


def _init_worker(threads: int, parent: int) -> None:
    _exit_with_parent(parent)
    import torch

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # denormals slow CPU maths several-fold
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@contextlib.contextmanager
def _output_to(path: Path):
    """Send this process's stdout and stderr (file descriptors included) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", encoding="utf-8") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            yield handle
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _execute(
    argv: list[str] | None, call: tuple[str, dict] | None, log: str
) -> tuple[int, float, float, Any, str]:
    """Run one job in a worker: (return code, wall s, cpu s, value, error text)."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    value, error, rc = None, "", 0
    with _output_to(Path(log)) as handle:
        print(f"$ tah {' '.join(argv)}" if argv else f"# {call[0]}({call[1]})", flush=True)
        try:
            if argv is not None:
                from tah.cli import main

                rc = int(main(list(argv)))
            else:
                module, _, func = call[0].partition(":")
                value = getattr(importlib.import_module(module), func)(**call[1])
        except BaseException as exc:  # report everything to the parent, keep the worker
            rc = 1
            error = "".join(traceback.format_exception(exc))
            handle.write(error)
        if rc and not error:
            error = f"exit code {rc}"
    return rc, time.perf_counter() - start, _cpu_seconds() - cpu, value, error


# ------------------------------------------------------------------ the parent side
def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _chain_costs(jobs: Sequence[Job]) -> dict[str, float]:
    """For each job, its cost plus the costliest chain of jobs that depend on it."""
    dependents: dict[str, list[str]] = {j.name: [] for j in jobs}
    for job in jobs:
        for dep in job.deps:
            if dep in dependents:
                dependents[dep].append(job.name)
    cost = {j.name: j.cost for j in jobs}
    memo: dict[str, float] = {}

    def visit(name: str, seen: frozenset[str]) -> float:
        if name in memo:
            return memo[name]
        if name in seen:  # a cycle: run_jobs reports it; do not recurse forever here
            return cost[name]
        below = [visit(d, seen | {name}) for d in dependents[name]]
        memo[name] = cost[name] + max(below, default=0.0)
        return memo[name]

    return {j.name: visit(j.name, frozenset()) for j in jobs}


def run_jobs(
    jobs: Sequence[Job],
    *,
    workers: int = 2,
    threads: int = 1,
    show_progress: bool = True,
    on_finish: Callable[[JobResult], None] | None = None,
) -> dict[str, JobResult]:
    """Run ``jobs`` respecting ``deps`` on ``workers`` processes; return results by name.

    Raises :class:`JobFailed` after the running jobs finish when any job failed (its
    dependents never start; independent jobs still run so a rerun has less to do).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    by_name = {j.name: j for j in jobs}
    if len(by_name) != len(jobs):
        raise TaHError("duplicate job names")
    for job in jobs:
        missing = [d for d in job.deps if d not in by_name]
        if missing:
            raise TaHError(f"job {job.name} depends on unknown jobs {missing}")
    chain = _chain_costs(jobs)
    results: dict[str, JobResult] = {}
    failed: dict[str, str] = {}
    pending = list(jobs)
    running: dict[cf.Future, tuple[Job, Any]] = {}

    progress = Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not show_progress,
    )
    ctx = mp.get_context("spawn")
    with (
        progress,
        cf.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(threads, os.getpid()),
        ) as pool,
    ):
        overall = progress.add_task("[bold]reproduction (jobs)", total=len(jobs))
        while pending or running:
            # start every ready job (dependencies done), by priority, biggest first
            blocked = {j.name for j in pending if any(d in failed for d in j.deps)}
            for job in [j for j in pending if j.name in blocked]:
                failed[job.name] = f"not run: a dependency failed ({job.deps})"
                pending.remove(job)
                progress.advance(overall)
            ready = [j for j in pending if all(d in results for d in j.deps)]
            ready.sort(key=lambda j: (j.priority, -chain[j.name]))
            for job in ready:
                if job.done is not None and job.done.exists():
                    pending.remove(job)
                    results[job.name] = JobResult(job.name, skipped=True)
                    progress.advance(overall)
                    if on_finish:
                        on_finish(results[job.name])
                    continue
                if len(running) >= workers:
                    break
                pending.remove(job)
                future = pool.submit(_execute, job.argv, job.call, str(job.log))
                running[future] = (job, progress.add_task(job.name, total=None))
            if not running:
                if pending and not any(all(d in results for d in j.deps) for j in pending):
                    if all(any(d in failed for d in j.deps) for j in pending):
                        continue
                    names = ", ".join(j.name for j in pending)
                    raise TaHError(f"jobs can never start (dependency cycle): {names}")
                continue
            done, _ = cf.wait(list(running), timeout=1.0, return_when=cf.FIRST_COMPLETED)
            for future, (job, task) in list(running.items()):
                if future in done or not show_progress:
                    continue
                state = job.progress() if job.progress else None
                if state is not None:
                    progress.update(task, completed=state[0], total=state[1])
            for future in done:
                job, task = running.pop(future)
                progress.remove_task(task)
                progress.advance(overall)
                try:
                    rc, wall, cpu, value, error = future.result()
                except Exception as exc:  # the worker process itself died
                    rc, wall, cpu, value, error = 1, 0.0, 0.0, None, repr(exc)
                if rc:
                    failed[job.name] = f"{error.strip().splitlines()[-1] if error else ''}"
                    progress.console.print(f"[red]✗ {job.name} failed[/] (log: {job.log})")
                    continue
                results[job.name] = JobResult(job.name, False, wall, cpu, value)
                if on_finish:
                    on_finish(results[job.name])
    if failed:
        first = next(n for n in by_name if n in failed and not failed[n].startswith("not run"))
        raise JobFailed(
            f"{len(failed)} of {len(jobs)} steps failed or were not run; first failure: "
            f"{first} ({failed[first]}). Its log {by_name[first].log} ends with:\n"
            f"{_tail(by_name[first].log)}\nFix the cause and rerun the same command: finished "
            "steps are kept."
        )
    return results
