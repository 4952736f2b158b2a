"""The worker side of an evaluation run: generate, grade and append each sample to a shard.

This module holds what runs inside one worker process (or in the parent when there is a single
job): building the backend and grader, rendering prompts, generating them (continuously
batched on the engine, or batch by batch) so that each row's token budget depends on its own
prompt only (a prompt that fills the context is recorded as ``prompt_too_long`` instead of
stopping the run), grading each answer as soon as it is ready, and appending one flushed line per
sample to the worker's own shard; plus the process entry point, which dies with its parent,
shares the cores, and reports readiness, progress, completion or the error to the parent over a
queue. Selecting the work, starting the processes and merging their shards live in
``runner.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import signal
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from tah.errors import TaHError
from tah.evaluation.backend_base import Backend, Generation, iter_summary
from tah.evaluation.backends import make_backend
from tah.evaluation.eval_config import EvalConfig
from tah.evaluation.grading import Grader
from tah.evaluation.prompts import render_prompt
from tah.evaluation.store import append_row
from tah.model.sampling import SamplingParams

log = logging.getLogger(__name__)

# finish_reason and grade_status of a sample whose prompt alone fills the model's context.
PROMPT_TOO_LONG = "prompt_too_long"


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies, so a killed run leaves no orphan writers."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def generate_and_grade(
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
        prompts = [
            render_prompt(
                backend.tokenizer,
                it["question"],
                config.prompt_style,
                config.chat_template,
                config.enable_thinking,
            )
            for it in items
        ]
        with open(shard, "a", encoding="utf-8") as handle:
            for i, gen in generations(backend, prompts, config, items):
                it = items[i]
                grade = grader.grade(gen.text, it["gold"], it["answer_type"])
                status = PROMPT_TOO_LONG if gen.finish_reason == PROMPT_TOO_LONG else None
                row = {
                    "dataset": it["dataset"],
                    "problem_id": it["problem_id"],
                    "problem_index": it["problem_index"],
                    "sample": it["sample"],
                    "seed": it["seed"],
                    "prompt": prompts[i],
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


def generations(
    backend: Backend, prompts: list[Any], config: EvalConfig, items: list[dict[str, Any]]
) -> Iterator[tuple[int, Generation]]:
    """``(index, Generation)`` for every prompt, each as soon as it is ready.

    A backend with continuous batching gets every prompt at once and keeps up to
    ``--batch-size`` in flight; the others generate consecutive batches. Either way each row's
    token budget depends on its own prompt only, and a prompt that fills the context alone is
    recorded as ``prompt_too_long`` instead of stopping the run.
    """
    sampling = config.sampling
    budgets = backend.token_budgets(prompts, sampling.max_new_tokens)
    fits = [i for i, b in enumerate(budgets) if b >= 1]
    if len(fits) < len(prompts):
        log.warning(
            "%d prompt(s) do not fit the model's context of %s tokens; recorded as %s",
            len(prompts) - len(fits),
            backend.context_length,
            PROMPT_TOO_LONG,
        )
        for i, b in enumerate(budgets):
            if b < 1:
                yield i, Generation("", [], 0, iter_summary([]), 0.0, PROMPT_TOO_LONG)
    stream = backend.stream(
        [prompts[i] for i in fits],
        sampling,
        [items[i]["seed"] for i in fits],
        [budgets[i] for i in fits],
        config.batch_size,
    )
    if stream is not None:
        for j, gen in stream:
            yield fits[j], gen
        return
    for start in range(0, len(fits), config.batch_size):
        rows = fits[start : start + config.batch_size]
        batch = [items[i] for i in rows]
        gens = generate_within_context(backend, [prompts[i] for i in rows], sampling, batch)
        yield from zip(rows, gens)


def generate_within_context(
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
        params = dataclasses.replace(sampling, max_tokens=budget)
        out = backend.generate([prompts[i] for i in rows], params, [batch[i]["seed"] for i in rows])
        for i, gen in zip(rows, out):
            gens[i] = gen
    return [g for g in gens if g is not None]


def worker_main(
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
        generate_and_grade(config, items, worker, shard, messages.put, parent_pid)
        messages.put(("done", worker, None))
    except BaseException as exc:  # report everything to the parent
        disk_full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        if disk_full:
            detail = f"no space left on the device ({exc}); free some space and rerun"
        else:
            detail = str(exc) if isinstance(exc, TaHError) else traceback.format_exc()
        messages.put(("error", worker, detail))
        raise SystemExit(1) from None
