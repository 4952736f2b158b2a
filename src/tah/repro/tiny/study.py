"""``tah repro tiny``: the paper's pipeline at laptop scale, from nothing, through the real commands.

Per seed (the synthetic data, tokenizer and test problems are shared by all seeds)::

    pretrain   tah train  (standard stage from a random Qwen3 config, on the pretraining split)
    standard   tah train  Standard: the base fine-tuned on the fine-tuning rows
    label      tah label  (labeller = the fine-tuned Standard model, as the paper labels with a
                          post-trained model of the same family; ``labeller=base`` for the
                          pretrained base) on the fine-tuning, validation and test splits
    prune      tah prune  (drop the layer whose removal hurts calibration perplexity least)
    train      tah train  AlwaysThink (pruned) | AlwaysThink+ (base) | TaH stage 1 (pruned)
                          | TaH+ stage 1 (base) | Standard-wide (base with a wider MLP), each the
                          same rows, order, steps, batch and schedule as Standard
    decider    tah train  stage 2 for TaH and TaH+ (decider only, backbone frozen), and the
                          decider variants of the study (validation split only)
    evaluate   tah eval   greedy answers on the held-out problems, with learned, oracle and
                          depth-1-only routing; τ sweeps; decider precision / recall / AUC;
                          teacher-forced next-token accuracy on hard / easy tokens
    report     mean ± std over seeds, the pre-registered paired tests: Markdown, JSON, plots

Every step is a job (:mod:`tah.repro.jobs`, graph in :mod:`tah.repro.tiny.graph`) that runs
``tah <command> ...`` with the arguments and recipes written into the run directory, so any
step can be rerun by hand, and rerunning the reproduction skips finished steps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tah.io import write_json
from tah.repro.jobs import JobResult, run_jobs
from tah.repro.tiny.config import ReproConfig
from tah.repro.tiny.graph import build_jobs
from tah.repro.tiny.rows import prepare_data

__all__ = ["run_repro"]


# ------------------------------------------------------------------ the whole run
def run_repro(
    config: ReproConfig,
    out: str | Path,
    *,
    show_progress: bool = True,
    command: Callable[[list[str]], int] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the reproduction into ``out``; returns the aggregated results.

    ``command`` runs one ``tah`` command line (the CLI passes its own entry point).
    """
    from tah.repro.tiny.report import collect_results, write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config.validate()
    saved = out / "repro_config.json"
    if saved.is_file():
        previous = json.loads(saved.read_text(encoding="utf-8"))
        differ = sorted(
            k
            for k in previous
            if k not in ("seeds", "workers", "threads")
            and previous.get(k) != config.to_dict().get(k)
        )
        if differ:
            from tah.errors import ConfigError

            raise ConfigError(
                f"{out} holds a reproduction made with other settings ({', '.join(differ)}); "
                "choose another --output or delete it"
            )
    write_json(saved, config.to_dict())
    from tah.repro.tiny.report import preregistration

    prereg = out / "preregistration.json"
    if not prereg.is_file():  # fixed by the first invocation; a later --seeds subset keeps it
        write_json(prereg, preregistration(config))
    started = time.perf_counter()
    info = prepare_data(config, out)
    jobs = build_jobs(config, out, info["vocab_size"], command)
    timings_path = out / "timings.json"
    timings: dict[str, Any] = (
        json.loads(timings_path.read_text(encoding="utf-8")) if timings_path.is_file() else {}
    )

    def record(result: JobResult) -> None:
        if not result.skipped:
            timings[result.name] = {"wall_s": result.wall_s, "cpu_s": result.cpu_s}
            # merge with what is on disk: another invocation may run other seeds here
            on_disk = (
                json.loads(timings_path.read_text(encoding="utf-8"))
                if timings_path.is_file()
                else {}
            )
            timings.update({k: v for k, v in on_disk.items() if k not in timings})
            write_json(timings_path, timings)

    run_jobs(
        jobs,
        workers=config.workers,
        threads=config.threads,
        show_progress=show_progress,
        on_finish=record,
        command=command,
    )
    results = collect_results(config, out, info)
    results["wall_time_s_this_invocation"] = time.perf_counter() - started
    results["timings"] = timings
    write_report(results, out)
    return results
