"""``tah repro twohop``: a depth-bound task where extra depth on a few tokens should matter.

The task (:mod:`tah.data.twohop`): two shuffled lookup tables and queries that need one lookup
(``f x``, ``g y``) or two (``gf x``, about a third). A lookup takes about two attention layers, so
a 2-layer model answers one-hop queries and guesses two-hop ones; a 4-layer model answers both.

Order of the study, per seed (seeds 0, 1, 2):

1. **Gate** (Standard models only, on one problem stream): a 2-layer ``shallow`` and a 4-layer
   ``deep`` trained from scratch for S steps; then, from the shallow model, ``standard`` (F more
   steps) and ``wide`` (the shallow model with a wider MLP, the same function at start and >=
   TaH+'s parameters, F more steps). The gate (:data:`GATE`) must hold on every seed before any
   TaH model is trained; the verdict is written into ``results.json`` first. The two fine-tuned
   Standard models double as the Standard arms of step 3 (they are not TaH models, and reusing
   them keeps the study within a CPU budget).
2. **Readout, fixed in advance** (:data:`READOUT`): written into ``results.json`` before the
   first TaH job starts.
3. **TaH arms, fine-tuned from the shallow model** (the base: starting point of every arm and
   the labeller: hard token = answer it gets wrong), F steps on the same problem stream as
   ``standard`` and ``wide``: TaH+ (stage 1: backbone + LoRA under oracle routing; stage 2: the
   decider alone, D steps) and AlwaysThink (every token runs depth 2, in training and at test).

Every job writes ``result.json`` when it finishes, so a rerun skips finished jobs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tah.data.twohop import TwoHopTask
from tah.errors import ConfigError
from tah.io import write_json

SCRATCH_JOBS = ("shallow", "deep")  # trained from scratch
GATE_JOBS = (*SCRATCH_JOBS, "standard", "wide")  # Standard models only
TAH_JOBS = ("tahplus", "alwaysthink")

#: The gate, fixed before any run (issue 11). Accuracies in points on held-out two-hop queries.
GATE = {
    "metric": "two-hop query accuracy on the held-out test problems, per seed",
    # Precondition (added after the first full run, whose 2-layer base stayed at chance on
    # one-hop queries after 6000 steps): the base must do one lookup, or it is neither a
    # converged starting model nor a meaningful labeller. Checked on one-hop test accuracy.
    "base_one_hop_min": 90.0,
    # deep (4 layers, S steps) beats shallow (2 layers, S steps) by >= 20 points on every seed
    "deep_minus_shallow_min": 20.0,
    # standard (shallow + F more steps) moves by <= 5 points: shallow is at its plateau. The
    # issue asks for 2x the steps; with the default S = 6000, F = 2000 this is 1.33x (CPU budget).
    "more_steps_change_max": 5.0,
    # wide (shallow widened, + F steps) beats standard (+ F steps) by <= 5 points
    "wide_minus_standard_max": 5.0,
}

#: The readout, fixed before any TaH model is trained.
READOUT = {
    "primary_metric": "two-hop query accuracy (%) on the held-out test problems",
    "secondary": ["one-hop accuracy", "share of tokens iterating", "decider P/R/AUC"],
    "threshold_tau": 0.5,
    "tau_sweep": [0.1, 0.3, 0.5, 0.7, 0.9],
    "tau_sweep_use": "reported, never selected from",
    "seeds": [0, 1, 2],
    "aggregate": "mean ± std (sample std) over seeds",
    "tests": "exact two-sided McNemar per seed on paired two-hop test queries: TaH+ vs "
    "Standard, TaH+ vs wide Standard, TaH+ vs AlwaysThink",
    "tuning": "none on test problems; a validation split (other problems) is evaluated and "
    "reported for the decider",
}


@dataclass
class TwoHopConfig:
    """Every setting of the study (``--set key=value`` overrides; see ``--show-config``)."""

    preset: str = "full"
    task: dict[str, Any] = field(default_factory=lambda: TwoHopTask().to_dict())
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    hidden: int = 64
    intermediate: int = 192
    heads: int = 4
    kv_heads: int = 2
    family: str = "qwen3"  # or "llama" (no per-head query/key norm)
    init_std: float = 0.02
    shallow_layers: int = 2
    deep_layers: int = 4
    base_steps: int = 6000  # S
    finetune_steps: int = 2000  # F
    decider_steps: int = 500  # D (stage 2)
    batch: int = 32
    lr: float = 1e-3
    finetune_lr: float = 1e-3
    lora_r: int = 8
    decider_hidden: int = 32
    pos_weight: float = 1.0
    threshold: float = READOUT["threshold_tau"]
    tau_sweep: list[float] = field(default_factory=lambda: list(READOUT["tau_sweep"]))
    test_problems: int = 1000
    val_problems: int = 500
    curve_problems: int = 100  # validation problems of the gate runs' learning curves
    curve_every: int = 500
    enforce_gate: bool = True
    workers: int = 2
    threads: int = 1

    def __post_init__(self) -> None:
        _ = self.task_spec  # validates the task
        for name in ("base_steps", "finetune_steps", "decider_steps", "batch"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"twohop setting {name} must be >= 1")
        if not self.seeds:
            raise ConfigError("twohop: seeds is empty; give e.g. --seeds 0,1,2")

    @property
    def task_spec(self) -> TwoHopTask:
        try:
            return TwoHopTask(**self.task)
        except TypeError as exc:
            raise ConfigError(f"twohop task settings {self.task}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TwoHopConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown twohop settings {unknown}; known: {sorted(known)}")
        return cls(**data)

    def with_overrides(self, items: list[str]) -> TwoHopConfig:
        data = self.to_dict()
        for item in items:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. base_steps=2000")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            if key.startswith("task."):
                data["task"] = {**data["task"], key[5:]: value}
            elif key not in data:
                raise ConfigError(f"--set {key}: unknown twohop setting; known: {sorted(data)}")
            else:
                data[key] = value
        return TwoHopConfig.from_dict(data)


def preset(name: str) -> TwoHopConfig:
    if name == "full":
        return TwoHopConfig()
    if name == "quick":  # a smoke test of every code path; its numbers mean nothing
        return TwoHopConfig(
            preset="quick",
            task=TwoHopTask(entities=8, pairs=4, queries=3).to_dict(),
            seeds=[0],
            hidden=32,
            intermediate=64,
            base_steps=12,
            finetune_steps=8,
            decider_steps=6,
            batch=8,
            tau_sweep=[0.3, 0.7],
            test_problems=40,
            val_problems=20,
            curve_problems=10,
            curve_every=6,
            enforce_gate=False,
            workers=1,
        )
    raise ConfigError(f"unknown twohop preset {name!r}; use 'full' or 'quick'")


# ------------------------------------------------------------------ jobs
def job_dir(out: Path, seed: int, name: str) -> Path:
    return out / f"seed{seed}" / name


def _progress_reader(path: Path):
    def read() -> tuple[float, float] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return float(data["done"]), float(data["total"])

    return read


def _jobs(config: TwoHopConfig, out: Path, names: tuple[str, ...]) -> list:
    from tah.repro.jobs import Job

    # Ready jobs start largest cost first: the base (``shallow``) first, since every arm needs it.
    cost = {"shallow": 9.0, "deep": 2.0, "tahplus": 3.0, "alwaysthink": 2.5, "wide": 1.3}
    jobs = []
    for seed in config.seeds:
        for name in names:
            where = job_dir(out, seed, name)
            jobs.append(
                Job(
                    name=f"seed{seed}/{name}",
                    log=where / "log.txt",
                    call=(
                        "tah.repro.twohop_jobs:run_job",
                        {"config": config.to_dict(), "out": str(out), "seed": seed, "name": name},
                    ),
                    # within a phase, fine-tuning waits for the base; phases order the rest
                    deps=[]
                    if name in SCRATCH_JOBS or name in TAH_JOBS
                    else [f"seed{seed}/shallow"],
                    done=where / "result.json",
                    progress=_progress_reader(where / "progress.json"),
                    cost=cost.get(name, 1.0),
                )
            )
    return jobs


def _load_results(out: Path, config: TwoHopConfig, names: tuple[str, ...]) -> dict[int, dict]:
    results: dict[int, dict] = {}
    for seed in config.seeds:
        for name in names:
            path = job_dir(out, seed, name) / "result.json"
            if path.is_file():
                results.setdefault(seed, {})[name] = json.loads(path.read_text(encoding="utf-8"))
    return results


def check_gate(gate_results: dict[int, dict]) -> dict[str, Any]:
    """The gate verdict from the Standard runs (points of two-hop test accuracy)."""
    per_seed, passed = {}, True

    def get(runs: dict, name: str, kind: str) -> float | None:
        return 100 * runs[name]["test"]["accuracy"][kind] if name in runs else None

    def rule(ok: bool | None) -> bool | None:
        return ok  # None: the runs it needs were not run

    for seed, runs in sorted(gate_results.items()):
        acc = {name: get(runs, name, "gf") for name in GATE_JOBS}
        one = {name: get(runs, name, "one_hop") for name in GATE_JOBS}
        have = {name for name, value in acc.items() if value is not None}
        checks = {
            "base_does_one_hop": rule(
                None if "shallow" not in have else one["shallow"] >= GATE["base_one_hop_min"]
            ),
            "deep_beats_shallow": rule(
                None
                if not {"shallow", "deep"} <= have
                else acc["deep"] - acc["shallow"] >= GATE["deep_minus_shallow_min"]
            ),
            "shallow_near_plateau": rule(
                None
                if not {"shallow", "standard"} <= have
                else abs(acc["standard"] - acc["shallow"]) <= GATE["more_steps_change_max"]
            ),
            "wide_no_better": rule(
                None
                if not {"standard", "wide"} <= have
                else acc["wide"] - acc["standard"] <= GATE["wide_minus_standard_max"]
            ),
        }
        passed &= all(v is True for v in checks.values())
        per_seed[seed] = {"two_hop": acc, "one_hop": one, "checks": checks}
    return {"rules": GATE, "per_seed": per_seed, "passed": bool(passed and per_seed)}


def run_study(config: TwoHopConfig, out: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the whole study; write results.json/.md/.png into ``out``."""
    from tah.repro.twohop_report import collect, write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    state_path = out / "results.json"
    previous = json.loads(state_path.read_text()) if state_path.is_file() else {}
    # (settings added since that run was made take their defaults)
    if previous.get("config") and _study_settings(
        TwoHopConfig.from_dict(previous["config"]).to_dict()
    ) != _study_settings(config.to_dict()):
        raise ConfigError(
            f"{out} holds a run with other settings; use another --output or the same settings "
            "(see results.json 'config')"
        )
    state: dict[str, Any] = {"config": config.to_dict(), "task": config.task_spec.to_dict()}
    state["timings"] = previous.get("timings", {})

    def finished(result) -> None:
        if not result.skipped:
            state["timings"][result.name] = {"wall_s": result.wall_s, "cpu_s": result.cpu_s}

    _run(_jobs(config, out, SCRATCH_JOBS), config, show_progress, finished)
    scratch = check_gate(_load_results(out, config, SCRATCH_JOBS))
    bases_ok = all(row["checks"]["base_does_one_hop"] for row in scratch["per_seed"].values())
    if bases_ok or not config.enforce_gate:
        _run(_jobs(config, out, GATE_JOBS[2:]), config, show_progress, finished)
    gate = check_gate(_load_results(out, config, GATE_JOBS))
    gate["recorded_at"] = _now()
    gate["enforced"] = config.enforce_gate
    # Every verdict stays on record (a run may add seeds later: --seeds 0, then --seeds 0,1,2).
    history = previous.get("gate_history", [])
    history.append({"seeds": config.seeds, "passed": gate["passed"], "at": gate["recorded_at"]})
    state["gate"], state["gate_history"] = gate, history
    proceed = gate["passed"] or not config.enforce_gate
    # The readout is registered once, the first time the study reaches this point, and kept.
    state["readout"] = previous.get("readout") or {**READOUT, "registered_at": _now()}
    state["readout"]["threshold_tau"] = config.threshold
    write_json(state_path, state)  # gate and readout on disk before any TaH job starts
    if proceed:
        _run(_jobs(config, out, TAH_JOBS), config, show_progress, finished)
    else:
        state["stopped"] = (
            "the gate failed: no TaH model was trained. Change the task (Standard runs only) "
            "or rerun with --set enforce_gate=false to train the TaH arms anyway (labelled)."
        )
    state["wall_time_s_this_invocation"] = time.perf_counter() - started
    results = collect(
        state,
        _load_results(out, config, (*GATE_JOBS, *TAH_JOBS)),
    )
    write_json(state_path, results)
    write_report(results, out)
    return results


def _run(jobs: list, config: TwoHopConfig, show_progress: bool, finished) -> None:
    """Jobs on ``config.workers`` worker processes; with one worker, in this process (no
    start-up cost of a fresh interpreter: what keeps ``--quick`` fast)."""
    from tah.repro.jobs import JobResult, run_jobs

    if config.workers > 1:
        run_jobs(
            jobs,
            workers=config.workers,
            threads=config.threads,
            show_progress=show_progress,
            on_finish=finished,
        )
        return
    import importlib

    import torch
    from rich.progress import Progress

    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with Progress(disable=not show_progress) as bar:
            task = bar.add_task("twohop jobs", total=len(jobs))
            for job in jobs:
                if job.done is None or not job.done.exists():
                    module, _, func = job.call[0].partition(":")
                    start = time.perf_counter()
                    getattr(importlib.import_module(module), func)(**job.call[1])
                    finished(JobResult(job.name, False, time.perf_counter() - start, 0.0))
                bar.advance(task)
    finally:
        torch.set_num_threads(threads)


def _study_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that change results (not the workers, the gate policy or the seeds: a run
    may add seeds later)."""
    ignored = ("workers", "threads", "enforce_gate", "seeds")
    settings = {k: v for k, v in config.items() if k not in ignored}
    settings["task"] = TwoHopTask(**config["task"]).to_dict()  # task fields added since: defaults
    return settings


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
