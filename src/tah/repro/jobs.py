"""A small dependency-aware job runner: the reproduction's steps on W single-threaded workers.

Why not subprocesses of the ``tah`` command: starting Python with torch, transformers, peft and
accelerate costs ~5 s of CPU per process, and the reproduction runs ~15 steps per seed. Why not
one process: a tiny model cannot use two cores well (a 0.8 M-parameter matmul is too small to
split), and two threads per process collapse when the machine is shared (OpenMP spin-waits;
we measured 5x slower steps). So W long-lived worker processes, each pinned to one thread,
import the libraries once and run the steps as *the exact CLI*: a job is a ``tah`` command line
run through the entry point the caller hands in (so this layer never imports the CLI), or a
function for the steps that have no command, with its output sent to a log file. Every study
and the SmolLM2 recipe schedule their steps here. The parent schedules jobs whose dependencies are done, longest first, and draws progress
bars by polling each job's own progress (e.g. the step counter in ``train_log.jsonl``).

A job whose ``done`` marker exists is skipped, so rerunning the same reproduction resumes.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import resource
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tah.errors import TaHError

__all__ = ["Job", "JobFailed", "JobResult", "run_external", "run_jobs", "utc_timestamp"]

ProgressFn = Callable[[], tuple[float, float] | None]


@dataclass
class Job:
    """One step: ``call`` = (function, kwargs) runs ``function(**kwargs)``; ``argv`` instead
    runs a ``tah`` command line through the ``command`` given to :func:`run_jobs`.

    Functions cross to the worker processes by reference (module and name, as pickle does),
    so they must be defined at the top level of an importable module.

    ``done`` is a path whose existence means the job already finished (resume). ``progress``
    returns (completed, total) or None while unknown. Ready jobs start by ``priority`` (lower
    first, e.g. the seed's index, so the first seed finishes first), then by the ``cost`` of
    the longest chain of jobs they start (the critical path, largest first), so that a cheap
    step in front of an expensive one is not left to the end.
    """

    name: str
    log: Path
    argv: list[str] | None = None
    call: tuple[Callable[..., Any], dict[str, Any]] | None = None
    deps: list[str] = field(default_factory=list)
    done: Path | None = None
    progress: ProgressFn | None = None
    cost: float = 1.0
    priority: int = 0

    def for_worker(self) -> Job:
        """The job without what stays with the parent (its progress probe, done marker)."""
        return Job(self.name, self.log, argv=self.argv, call=self.call)

    def label(self) -> str:
        """How the job's log names what it runs."""
        if self.argv is not None:
            return f"$ tah {' '.join(self.argv)}"
        func, kwargs = self.call
        shown = ", ".join(f"{k}={_shorten(repr(v))}" for k, v in kwargs.items())
        return f"# {func.__module__}:{func.__qualname__}({shown})"


def _shorten(text: str, limit: int = 160) -> str:
    """A value as a log line shows it: long ones (an environment, a config) cut short."""
    return text if len(text) <= limit else f"{text[: limit - 5]} ...{text[-1]}"


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


@contextlib.contextmanager
def _log_only(path: Path):
    """The job's log for its header and traceback, the output left where it goes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        yield handle


def _execute(
    job: Job, command: Callable[[list[str]], int] | None, capture: bool = True
) -> tuple[int, float, float, Any, str]:
    """Run one job: (return code, wall s, cpu s, value, error text). ``capture`` sends the
    process's whole output to the job's log (workers); in the orchestrator's own process the
    output stays on the terminal, where the progress bars are drawn."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    value, error, rc = None, "", 0
    with (_output_to if capture else _log_only)(Path(job.log)) as handle:
        print(job.label(), file=handle if not capture else None, flush=True)
        try:
            if job.argv is not None:
                if command is None:
                    raise TaHError(f"job {job.name} is a command line but no command was given")
                rc = int(command(list(job.argv)))
            else:
                func, kwargs = job.call
                value = func(**kwargs)
        except BaseException as exc:  # report everything to the parent, keep the worker
            if not capture and not isinstance(exc, Exception):
                raise  # Ctrl-C in the orchestrator's own process stops the study
            rc = 1
            error = "".join(traceback.format_exception(exc))
            handle.write(error)
        if rc and not error:
            error = f"exit code {rc}"
    return rc, time.perf_counter() - start, _cpu_seconds() - cpu, value, error


def run_external(
    argv: list[str],
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    log: str | None = None,
) -> list[str]:
    """A job that is its own program (a recipe's script, ``python -m tah ...`` under other
    environment variables), its output appended to ``log`` (else this process's output);
    raises if it fails."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(log, "a", encoding="utf-8")) if log else sys.stdout
        print(f"$ {shlex.join(argv)}", file=out, flush=True)
        code = subprocess.run(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if code.returncode:
        raise TaHError(f"{shlex.join(argv[:3])} ... exited with code {code.returncode}")
    return list(argv)


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


def _check_graph(jobs: Sequence[Job]) -> dict[str, Job]:
    by_name = {j.name: j for j in jobs}
    if len(by_name) != len(jobs):
        raise TaHError("duplicate job names")
    for job in jobs:
        missing = [d for d in job.deps if d not in by_name]
        if missing:
            raise TaHError(f"job {job.name} depends on unknown jobs {missing}")
    return by_name


class _Schedule:
    """The parent's book-keeping: which jobs wait, run, finished or failed, and the bars."""

    def __init__(self, jobs: Sequence[Job], show_progress: bool, on_finish) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.by_name = _check_graph(jobs)
        self.chain = _chain_costs(jobs)
        self.pending = list(jobs)
        self.results: dict[str, JobResult] = {}
        self.failed: dict[str, str] = {}
        self.on_finish = on_finish
        self.show_progress = show_progress
        self.progress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=not show_progress,
        )
        self.overall = self.progress.add_task("[bold]reproduction (jobs)", total=len(jobs))

    def _finish(self, result: JobResult) -> None:
        self.results[result.name] = result
        if self.on_finish:
            self.on_finish(result)

    def ready(self) -> list[Job]:
        """Jobs that may start now, best first; blocked ones are dropped, done ones skipped."""
        blocked = [j for j in self.pending if any(d in self.failed for d in j.deps)]
        while blocked:  # down the whole chain, so no dependent is left waiting for nothing
            for job in blocked:
                self.failed[job.name] = f"not run: a dependency failed ({job.deps})"
                self.pending.remove(job)
                self.progress.advance(self.overall)
            blocked = [j for j in self.pending if any(d in self.failed for d in j.deps)]
        ready = [j for j in self.pending if all(d in self.results for d in j.deps)]
        ready.sort(key=lambda j: (j.priority, -self.chain[j.name]))
        startable = []
        for job in ready:
            if job.done is not None and job.done.exists():
                self.pending.remove(job)
                self.progress.advance(self.overall)
                self._finish(JobResult(job.name, skipped=True))
            else:
                startable.append(job)
        return startable

    def check_stuck(self) -> None:
        """With nothing running: raise if the jobs left can never start (a cycle)."""
        if not self.pending or any(all(d in self.results for d in j.deps) for j in self.pending):
            return
        names = ", ".join(j.name for j in self.pending)
        raise TaHError(f"jobs can never start (dependency cycle): {names}")

    def record(self, job: Job, outcome: tuple[int, float, float, Any, str]) -> None:
        rc, wall, cpu, value, error = outcome
        self.progress.advance(self.overall)
        if rc:
            self.failed[job.name] = f"{error.strip().splitlines()[-1] if error else ''}"
            self.progress.console.print(f"[red]✗ {job.name} failed[/] (log: {job.log})")
            return
        self._finish(JobResult(job.name, False, wall, cpu, value))

    def raise_failures(self) -> None:
        if not self.failed:
            return
        by_name, failed = self.by_name, self.failed
        first = next(n for n in by_name if n in failed and not failed[n].startswith("not run"))
        raise JobFailed(
            f"{len(failed)} of {len(by_name)} steps failed or were not run; first failure: "
            f"{first} ({failed[first]}). Its log {by_name[first].log} ends with:\n"
            f"{_tail(by_name[first].log)}\nFix the cause and rerun the same command: finished "
            "steps are kept."
        )


def _run_in_pool(plan: _Schedule, workers: int, threads: int, command) -> None:
    running: dict[cf.Future, tuple[Job, Any]] = {}
    pool = cf.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads, os.getpid()),
    )
    with pool:
        while plan.pending or running:
            for job in plan.ready()[: max(0, workers - len(running))]:
                plan.pending.remove(job)
                future = pool.submit(_execute, job.for_worker(), command)
                running[future] = (job, plan.progress.add_task(job.name, total=None))
            if not running:
                plan.check_stuck()
                continue
            done, _ = cf.wait(list(running), timeout=1.0, return_when=cf.FIRST_COMPLETED)
            for future, (job, task) in list(running.items()):
                state = job.progress() if job.progress and plan.show_progress else None
                if future not in done and state is not None:
                    plan.progress.update(task, completed=state[0], total=state[1])
            for future in done:
                job, task = running.pop(future)
                plan.progress.remove_task(task)
                try:
                    outcome = future.result()
                except Exception as exc:  # the worker process itself died
                    outcome = 1, 0.0, 0.0, None, repr(exc)
                plan.record(job, outcome)


def _run_here(plan: _Schedule, threads: int, command) -> None:
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        while plan.pending:
            ready = plan.ready()
            if not ready:
                plan.check_stuck()
                continue
            job = ready[0]
            plan.pending.remove(job)
            plan.record(job, _execute(job, command, capture=False))
    finally:
        torch.set_num_threads(saved)


def run_jobs(
    jobs: Sequence[Job],
    *,
    workers: int = 2,
    threads: int = 1,
    show_progress: bool = True,
    on_finish: Callable[[JobResult], None] | None = None,
    command: Callable[[list[str]], int] | None = None,
    in_process: bool = False,
) -> dict[str, JobResult]:
    """Run ``jobs`` respecting ``deps`` on ``workers`` processes; return results by name.

    ``command`` runs the ``argv`` jobs (the caller passes the ``tah`` entry point, so this
    layer never imports the CLI). ``in_process`` runs the jobs one at a time in this process
    instead (no start-up cost of fresh interpreters: what keeps a small study's ``--quick``
    fast). Raises :class:`JobFailed` after the running jobs finish when any job failed (its
    dependents never start; independent jobs still run so a rerun has less to do).
    """
    plan = _Schedule(jobs, show_progress, on_finish)
    with plan.progress:
        if in_process:
            _run_here(plan, threads, command)
        else:
            _run_in_pool(plan, workers, threads, command)
    plan.raise_failures()
    return plan.results


def utc_timestamp() -> str:
    """Now, as the studies stamp what they record (a gate, a registered readout): UTC, seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
